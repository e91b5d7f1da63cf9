/**
 * File I/O through each backend, against Node's own file APIs measured in the same run:
 *  (a) random 4 KiB reads of a page-cached file, 64 in flight, vs fs.promises
 *      (goal >= 500k IOPS and >= 6x fs.promises, issue 4), and the same runs as CPU time per
 *      read (fs.promises spreads its reads over libuv's pool on every CPU, miniss uses one);
 *  (b) sequential 1 MiB reads vs fs.promises and vs a synchronous pread loop (fs.readSync)
 *      (goal: within 5% of the sync loop), one awaited File.read at a time and through
 *      file.chunks() with reads ahead (vs fs.promises' own sequential reader, createReadStream);
 *  (c) batched NOP submit + reap through the raw backend (goal <= 300 ns/op);
 *  (d) (a) on every core at once (@miniss/multicore, one ring per core), since fs.promises too
 *      spreads its reads over every CPU (libuv's pool); the CPU each side used is in the notes.
 * miniss figures go through the runtime's File API (File.open, file.read), the path users get;
 * for (a) and (c) the raw IoBackend figure is reported too so the cost of the layers above is visible.
 *
 * The test file is created in os.tmpdir() (1 GiB; MINISS_BENCH_IO_FILE_MB for a smaller one),
 * read once so it is page cached, and deleted at the end. Each measurement runs for a fixed time.
 *
 *   node tools/bench/dist/io.bench.js
 */
import { closeSync, openSync, promises as fsp, readSync, rmSync, writeSync } from 'node:fs';
import { availableParallelism, freemem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { File, Runtime, type BackendName, type ChunkOptions, type IoBackend, type IoCompletion } from '@miniss/core';
import { MultiCoreRuntime } from '@miniss/multicore';
import { isMain, printSuite, type BenchRow, type BenchSuite } from './lib.js';

const KiB4 = 4096;
const MiB = 1024 * 1024;
const DEPTH = 64;
/** Sequential reads: File.read and the sync loop alternate this many timed passes over the region. */
const SEQ_ROUNDS = 8;
/**
 * Untimed 1 MiB reads of each kind before the timed passes. V8 optimizes the functions of the
 * awaited File.read path (runtime.io, the backend's flush and drain, ...) only after a few thousand
 * calls, compiling them on a helper thread; in a pinned probe of this loop with little warm-up, one
 * 256-read File.read pass took 40 ms against 23 ms for its readSync pass while that compilation ran
 * (--trace-opt). The sync loop's one small function is optimized early. Both sides warm up alike.
 */
const SEQ_WARM_READS = 4096;
/** file.chunks(): reads kept in flight ahead of the chunk being consumed (its default). */
const SEQ_READ_AHEAD = 4;

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function makeFile(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(MiB);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let off = 0; off < bytes; off += MiB) writeSync(fd, chunk, 0, Math.min(MiB, bytes - off), off);
  closeSync(fd);
  // Read it once so every measurement below is served from the page cache.
  const rfd = openSync(path, 'r');
  const buf = Buffer.alloc(MiB);
  for (let off = 0; off < bytes; off += MiB) readSync(rfd, buf, 0, MiB, off);
  closeSync(rfd);
}

/**
 * Sequential passes over `bytes` by `pass` (which checks what it read): untimed ones first until
 * SEQ_WARM_READS MiB or two passes were read, whichever is more, then SEQ_ROUNDS timed. MiB/s.
 */
async function timedPasses(pass: () => Promise<number>, bytes: number): Promise<number> {
  for (let w = 0; w < 2 || w * bytes < SEQ_WARM_READS * MiB; w++) await pass();
  let ms = 0;
  for (let r = 0; r < SEQ_ROUNDS; r++) ms += await pass();
  return seqRate(bytes, ms);
}

/** MiB/s of SEQ_ROUNDS passes over `bytes` that took `ms` in all. */
function seqRate(bytes: number, ms: number): number {
  return (SEQ_ROUNDS * bytes) / MiB / (ms / 1000);
}

/** CPU this process used between `since` (a `process.cpuUsage()`) and now, in cores busy over `wallMs`. */
function coresBusy(since: NodeJS.CpuUsage, wallMs: number): number {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1000 / wallMs;
}

/**
 * DEPTH loops at once, each with its own 4 KiB buffer and random sequence, each awaiting
 * `read(buf, offset)` at random page offsets of the file until `ms` elapsed (the loop the
 * multicore row below runs on each core, and the one a user writes); returns reads per second
 * and the CPU the whole process used meanwhile (cores busy: libuv's pool threads count too).
 * `read` is a plain arrow returning the read's promise, so the loop awaits the read itself and
 * nothing else per iteration (an async wrapper per read cost miniss ~0.06 us of a 1.1 us read).
 */
async function iops(
  ms: number,
  pages: number,
  read: (buf: Uint8Array, offset: number) => Promise<unknown>,
): Promise<{ rate: number; cores: number }> {
  let ops = 0;
  const end = performance.now() + ms;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: DEPTH }, async (_, k) => {
      const rnd = xorshift(k * 7919 + 1);
      const buf = new Uint8Array(KiB4);
      while (performance.now() < end) {
        await read(buf, (rnd() % pages) * KiB4);
        ops++;
      }
    }),
  );
  const wall = performance.now() - t0;
  return { rate: (ops * 1000) / wall, cores: coresBusy(cpu0, wall) };
}

/**
 * The same random reads on every core of the machine at once, each core's runtime with its own
 * ring and its share of the DEPTH reads in flight (thread-per-core: nothing is shared but the
 * file). Returns the summed rate and the cores used. Null when the machine has one CPU.
 */
async function multicoreRandomIops(path: string, ms: number): Promise<{ rate: number; perCore: number[]; cores: number } | null> {
  const cores = availableParallelism();
  if (cores < 2) return null;
  const mc = new MultiCoreRuntime({ cores, backend: 'io_uring' });
  return mc.blockOn(async () => {
    await mc.broadcast(() => 0); // every core has started (and pinned itself)
    // Shipped by source text: only its arguments and what it imports.
    const perCore = await mc.broadcast(
      async (file: string, depth: number, runMs: number) => {
        const { File } = await import('@miniss/core');
        const { statSync } = await import('node:fs');
        const pages = Math.floor(statSync(file).size / 4096);
        const f = await File.open(file, { read: true });
        let ops = 0;
        const end = performance.now() + runMs;
        const t0 = performance.now();
        try {
          await Promise.all(
            Array.from({ length: depth }, async (_, k) => {
              const buf = new Uint8Array(4096);
              let x = (k * 7919 + 1 + Math.floor(t0)) >>> 0 || 1;
              while (performance.now() < end) {
                x ^= x << 13;
                x >>>= 0;
                x ^= x >>> 17;
                x ^= x << 5;
                x >>>= 0;
                await f.read(buf, (x % pages) * 4096);
                ops++;
              }
            }),
          );
        } finally {
          await f.close();
        }
        return (ops * 1000) / (performance.now() - t0);
      },
      path,
      Math.ceil(DEPTH / cores),
      ms,
    );
    return { rate: perCore.reduce((a, b) => a + b, 0), perCore, cores };
  });
}

/** The raw backend path: the loop a runtime runs, minus tasks and promises per op. */
async function rawRandomIops(b: IoBackend, fd: number, pages: number, ms: number): Promise<number> {
  const bufs = Array.from({ length: DEPTH }, () => new Uint8Array(KiB4));
  const rnd = xorshift(42);
  const byId = new Map<number, Uint8Array>();
  let ops = 0;
  const end = performance.now() + ms;
  const t0 = performance.now();
  const submit = (buf: Uint8Array): void => {
    const id = b.submit({ op: 'read', fd, buffer: buf, offset: (rnd() % pages) * KiB4, len: KiB4 });
    byId.set(id, buf);
  };
  for (const buf of bufs) submit(buf);
  b.flush();
  await new Promise<void>((resolve, reject) => {
    const onReady = (): void => {
      for (;;) {
        const cs: IoCompletion[] = b.poll(0);
        if (cs.length === 0) break;
        for (const c of cs) {
          const buf = byId.get(c.handle)!;
          byId.delete(c.handle);
          if (typeof c.result !== 'number') return reject(c.result);
          ops++;
          if (performance.now() < end) submit(buf);
        }
        b.flush();
      }
      if (byId.size === 0) resolve();
    };
    b.onReady(onReady);
  });
  return (ops * 1000) / (performance.now() - t0);
}

/** Batched NOPs through the raw backend: submit `batch`, flush once, reap all. ns per op. */
async function rawNopNs(b: IoBackend, total: number, batch: number): Promise<number> {
  let done = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    let outstanding = 0;
    const fill = (): void => {
      const n = Math.min(batch, total - done - outstanding);
      for (let i = 0; i < n; i++) b.submit({ op: 'nop' });
      outstanding += n;
      b.flush();
    };
    b.onReady(() => {
      for (;;) {
        const cs = b.poll(0);
        if (cs.length === 0) break;
        done += cs.length;
        outstanding -= cs.length;
      }
      if (done >= total) resolve();
      else if (outstanding === 0) fill();
    });
    fill();
  });
  return ((performance.now() - t0) * 1e6) / done;
}

export async function run(opts: { ms?: number } = {}): Promise<BenchSuite> {
  const ms = opts.ms ?? 1500;
  const wantMb = Math.max(16, Number(process.env['MINISS_BENCH_IO_FILE_MB'] ?? 1024) | 0);
  // The file must fit in the page cache with room to spare, or this measures the disk.
  const sizeMb = Math.min(wantMb, Math.max(16, Math.floor(freemem() / MiB / 2)));
  const bytes = sizeMb * MiB;
  const pages = bytes / KiB4;
  const path = join(tmpdir(), `miniss-io-bench-${process.pid}.bin`);
  const rows: BenchRow[] = [];
  const notes: string[] = [];
  try {
    makeFile(path, bytes);

    // Competitors (measured once, compared with every backend).
    const fh = await fsp.open(path, 'r');
    const fspRandom = await iops(ms, pages, (buf, offset) => fh.read(buf, 0, KiB4, offset));
    const seqBytes = Math.min(bytes, 256 * MiB);
    const seqBuf = Buffer.alloc(MiB);
    // Warmed up like File.read below, then SEQ_ROUNDS passes over the same region.
    const fspSeq = await timedPasses(async () => {
      const t = performance.now();
      for (let off = 0; off < seqBytes; off += MiB) await fh.read(seqBuf, 0, MiB, off);
      return performance.now() - t;
    }, seqBytes);
    // fs.promises' sequential reader, a stream of chunks it allocates (as file.chunks() by
    // default): with 1 MiB chunks, and with both sides' defaults (64 KiB chunks). A handle per
    // pass, opened and closed outside the timing: each stream adds a 'close' listener to its
    // FileHandle that Node never removes, so reusing one handle trips MaxListenersExceededWarning.
    const streamPass = async (highWaterMark: number | undefined): Promise<number> => {
      const sh = await fsp.open(path, 'r');
      try {
        const t = performance.now();
        let got = 0;
        for await (const c of sh.createReadStream({ highWaterMark, start: 0, end: seqBytes - 1, autoClose: false })) got += (c as Buffer).length;
        if (got !== seqBytes) throw new Error(`createReadStream gave ${got} of ${seqBytes} bytes`);
        return performance.now() - t;
      } finally {
        await sh.close();
      }
    };
    const fspStream = await timedPasses(() => streamPass(MiB), seqBytes);
    const fspStreamDefault = await timedPasses(() => streamPass(undefined), seqBytes);
    await fh.close();

    let ioUringOk = false;
    for (const backend of ['node', 'epoll', 'io_uring'] as BackendName[]) {
      let rt: Runtime;
      try {
        rt = new Runtime({ backend });
      } catch (err) {
        notes.push(`${backend}: skipped (${(err as Error).message})`);
        continue;
      }
      await rt.blockOn(async () => {
        const f = await File.open(path, { read: true });
        const fileRandom = await iops(ms, pages, (buf, offset) => f.read(buf, offset));
        rows.push({
          name: `random 4 KiB reads, ${DEPTH} in flight, File.read (${backend})`,
          unit: 'IOPS',
          lowerIsBetter: false,
          miniss: fileRandom.rate,
          baselineName: 'fs.promises FileHandle.read',
          baseline: fspRandom.rate,
          goal: backend === 'io_uring' ? '>= 500000 and >= 6x' : undefined,
          note: `${sizeMb} MiB page-cached file${sizeMb < wantMb ? ` (asked ${wantMb} MiB; shrunk to half the free memory)` : ''}; one runtime, CPU ${fileRandom.cores.toFixed(2)} cores vs fs.promises ${fspRandom.cores.toFixed(2)} (libuv's pool)`,
        });
        // The same runs as CPU time per read (the process's user + system time, libuv's pool
        // threads included, over the reads done): what each read costs whatever the cores used.
        rows.push({
          name: `random 4 KiB reads, ${DEPTH} in flight, CPU per read, File.read (${backend})`,
          unit: 'us/read',
          lowerIsBetter: true,
          miniss: (fileRandom.cores * 1e6) / fileRandom.rate,
          baselineName: 'fs.promises FileHandle.read',
          baseline: (fspRandom.cores * 1e6) / fspRandom.rate,
          note: 'process CPU time (user + system) over the reads of the row above',
        });
        if (backend === 'io_uring') ioUringOk = true;
        // Sequential: passes of File.read (one awaited read at a time), of file.chunks() with its
        // own buffers and reads ahead, and of the synchronous pread loop, interleaved so all see
        // the same machine load (this box is shared), each kind first in turn; totals over all
        // passes. All read the same region, File.read and the sync loop into the same buffer (where
        // a buffer lands changes a 1 MiB copy by up to ~10% here), and all warm up alike first
        // (SEQ_WARM_READS).
        const pass = seqBytes;
        const sfd2 = openSync(path, 'r');
        const chunkPass = async (opts: ChunkOptions): Promise<number> => {
          const t = performance.now();
          let got = 0;
          for await (const c of f.chunks({ ...opts, length: pass })) got += c.byteLength;
          if (got !== pass) throw new Error(`file.chunks gave ${got} of ${pass} bytes`);
          return performance.now() - t;
        };
        const passes = [
          (): number => {
            const t = performance.now();
            for (let off = 0; off < pass; off += MiB) readSync(sfd2, seqBuf, 0, MiB, off);
            return performance.now() - t;
          },
          async (): Promise<number> => {
            const t = performance.now();
            for (let off = 0; off < pass; off += MiB) await f.read(seqBuf, off);
            return performance.now() - t;
          },
          () => chunkPass({ chunkSize: MiB, readAhead: SEQ_READ_AHEAD, reuse: true }),
        ];
        const seqMs = [0, 0, 0];
        try {
          for (let w = 0; w * pass < SEQ_WARM_READS * MiB; w++) for (const p of passes) await p();
          for (let r = 0; r < SEQ_ROUNDS; r++) {
            for (let k = 0; k < passes.length; k++) {
              const i = (r + k) % passes.length;
              seqMs[i] += await passes[i]!();
            }
          }
        } finally {
          closeSync(sfd2);
        }
        const fresh = await timedPasses(() => chunkPass({ chunkSize: MiB, readAhead: SEQ_READ_AHEAD }), pass);
        const freshDefault = await timedPasses(() => chunkPass({}), pass);
        const [syncSeqHere, fileSeq, chunkSeq] = seqMs.map((ms) => seqRate(pass, ms)) as [number, number, number];
        const seqGoal = backend === 'io_uring' ? 'within 5% of the sync loop' : undefined;
        const syncName = 'fs.readSync pread loop (interleaved passes, same buffer)';
        const seqRow = (name: string, miniss: number, baselineName: string, baseline: number, goal?: string): void => {
          rows.push({ name: `sequential 1 MiB reads, ${name} (${backend})`, unit: 'MiB/s', lowerIsBetter: false, miniss, baselineName, baseline, goal });
        };
        seqRow('File.read', fileSeq, 'fs.promises FileHandle.read', fspSeq);
        seqRow('File.read', fileSeq, syncName, syncSeqHere, seqGoal);
        seqRow(`file.chunks, ${SEQ_READ_AHEAD} ahead, reused buffers`, chunkSeq, syncName, syncSeqHere, seqGoal);
        seqRow(`file.chunks, ${SEQ_READ_AHEAD} ahead, new buffer per chunk`, fresh, 'fs.promises FileHandle.createReadStream', fspStream);
        rows.push({
          name: `sequential reads with both sides' defaults (64 KiB chunks), file.chunks (${backend})`,
          unit: 'MiB/s',
          lowerIsBetter: false,
          miniss: freshDefault,
          baselineName: 'fs.promises FileHandle.createReadStream',
          baseline: fspStreamDefault,
        });
        await f.close();
      });
      if (backend === 'node') continue;
      // The raw backend, outside the runtime's task and promise machinery: its own instance,
      // loaded the way core's loader does (a dynamic import of the optional package).
      const pkg = backend === 'io_uring' ? '@miniss/backend-iouring' : '@miniss/backend-epoll';
      const mod = (await import(pkg)) as { createBackend(): IoBackend };
      const b = mod.createBackend();
      const rfd = openSync(path, 'r');
      try {
        const raw = await rawRandomIops(b, rfd, pages, ms);
        rows.push({
          name: `random 4 KiB reads, ${DEPTH} in flight, raw IoBackend (${backend})`,
          unit: 'IOPS',
          lowerIsBetter: false,
          miniss: raw,
          baselineName: 'fs.promises FileHandle.read',
          baseline: fspRandom.rate,
        });
        const nop = await rawNopNs(b, 1_000_000, 1024);
        const t = performance.now();
        let n = 0;
        while (performance.now() - t < 300) {
          await Promise.all(Array.from({ length: 1024 }, () => Promise.resolve(0)));
          n += 1024;
        }
        const promiseNs = ((performance.now() - t) * 1e6) / n;
        rows.push({
          name: `NOP submit + reap, batches of 1024, raw IoBackend (${backend})`,
          unit: 'ns/op',
          lowerIsBetter: true,
          miniss: nop,
          baselineName: 'Promise.resolve + Promise.all (no I/O at all)',
          baseline: promiseNs,
          goal: backend === 'io_uring' ? '<= 300' : undefined,
        });
      } finally {
        b.close();
        closeSync(rfd);
      }
    }
    // The whole machine on each side: fs.promises spreads its reads over libuv's pool threads on
    // every CPU; miniss runs one runtime (and ring) per core, the reads in flight split between them.
    if (ioUringOk) {
      let all: Awaited<ReturnType<typeof multicoreRandomIops>> = null;
      try {
        all = await multicoreRandomIops(path, ms);
        if (all === null) notes.push('random reads on every core: skipped (one CPU)');
      } catch (err) {
        notes.push(`random reads on every core: skipped (${(err as Error).message})`);
      }
      if (all !== null) {
        rows.push({
          name: `random 4 KiB reads, ${DEPTH} in flight over ${all.cores} cores, File.read (multicore, io_uring)`,
          unit: 'IOPS',
          lowerIsBetter: false,
          miniss: all.rate,
          baselineName: 'fs.promises FileHandle.read',
          baseline: fspRandom.rate,
          note: `per core ${all.perCore.map((r) => `${Math.round(r / 1000)}k`).join(' + ')}; fs.promises used ${fspRandom.cores.toFixed(2)} cores`,
        });
      }
    }
  } finally {
    rmSync(path, { force: true });
  }
  for (const n of notes) console.warn(`io bench: ${n}`);
  return { subsystem: 'io: file reads per backend', command: 'MINISS_BENCH_IO_FILE_MB=1024 node tools/bench/dist/io.bench.js', rows };
}

if (isMain(import.meta.url)) printSuite(await run());
