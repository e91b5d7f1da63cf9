/**
 * Files and buffers, third audit: deallocated pool handles, fds that cannot seek (io_uring ignored
 * the offset on a FIFO), invalid `signal` options, `chunks()` on a `direct: true` file, aborted
 * position-less writes, and open flags that are not booleans. Each runs on every backend.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { File, Runtime, probeBackend, type BackendName } from '@miniss/core';

let dir: string;
/** Whether the temp directory's filesystem takes O_DIRECT (tmpfs before Linux 6.6 does not). */
let directOk = false;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'miniss-audit3-'));
  const O_DIRECT = (fs.constants as Record<string, number | undefined>).O_DIRECT;
  if (O_DIRECT !== undefined) {
    try {
      fs.closeSync(fs.openSync(join(dir, 'probe-direct'), fs.constants.O_CREAT | fs.constants.O_RDWR | O_DIRECT));
      directOk = true;
    } catch {
      directOk = false;
    }
  }
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const backends = (['node', 'io_uring', 'epoll'] as BackendName[]).map((name) => ({ name, probe: probeBackend(name) }));

type Err = Error & { code?: string; syscall?: string; fd?: number };
const outcome = (p: Promise<unknown>): Promise<string> =>
  p.then(
    (v) => `ok ${String(v)}`,
    (e: Err) => `${e.code ?? e.name}`,
  );

describe.each(backends)('files and buffers (audit 3) on the $name backend', ({ name, probe }) => {
  const run = <T>(fn: (rt: Runtime) => Promise<T>): Promise<T> => {
    const rt = new Runtime({ backend: name });
    return rt.blockOn(() => fn(rt));
  };
  const avail = probe.reason ?? 'available';

  it.runIf(probe.ok)(`a deallocated pool handle is refused by File and by the backend's submit (${avail})`, async () => {
    const src = join(dir, `stale-src-${name}`);
    const dst = join(dir, `stale-dst-${name}`);
    fs.writeFileSync(src, Buffer.alloc(4096, 0x41));
    fs.writeFileSync(dst, 'untouched');
    const got = await run(async (rt) => {
      const pool = rt.bufferPool;
      const stale = pool.allocate(4096)!;
      stale.bytes.fill(0x31);
      pool.deallocate(stale);
      const owner = pool.allocate(4096)!; // the same storage, now someone else's
      owner.bytes.fill(0x7a);
      const f = await File.open(src);
      const g = await File.open(dst, { read: true, write: true });
      const errs: Err[] = [];
      const grab = (p: Promise<unknown>): Promise<void> =>
        p.then(
          () => {
            errs.push(new Error('resolved'));
          },
          (e: Err) => {
            errs.push(e);
          },
        );
      await grab(f.read(stale, 0));
      await grab(f.read(stale)); // position-less
      await grab(g.write(stale, 0));
      await grab(g.writeAll(stale));
      let submit: unknown = 'accepted';
      try {
        rt.backend.submit({ op: 'read', fd: f.fd, buffer: stale, offset: 0, len: 4096 });
      } catch (e) {
        submit = e;
      }
      await f.close();
      await g.close();
      const ownerByte = owner.bytes[0];
      pool.deallocate(owner);
      return { errs, submit: submit as Err, ownerByte };
    });
    for (const e of got.errs) {
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.message).toMatch(/deallocated/);
    }
    expect(got.errs).toHaveLength(4);
    expect(got.submit.code).toBe('INVALID_ARGUMENT');
    expect(got.submit.message).toMatch(/deallocated/);
    expect(got.ownerByte).toBe(0x7a); // the new owner's bytes were not overwritten
    expect(fs.readFileSync(dst, 'utf8')).toBe('untouched'); // nor written out
  });

  it.runIf(probe.ok && process.platform === 'linux')(`on a FIFO, calls at a position and chunks() reject with ESPIPE; position-less calls read in order (${avail})`, async () => {
    const fifo = join(dir, `fifo-${name}`);
    spawnSync('mkfifo', [fifo]);
    // O_RDWR on a FIFO opens without waiting for the other end (Linux).
    const w = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      fs.writeSync(w, 'abcdefgh');
      const got = await run(async () => {
        const f = await File.open(fifo, { read: true, write: true });
        const errs: Err[] = [];
        const keep = (e: Err): void => {
          errs.push(e);
        };
        const a = Buffer.alloc(3);
        // With data waiting, io_uring used to read it here, ignoring the offset.
        const positioned = await f.read(a, 1000).then((n) => `read ${n}`, keep);
        await f.write(Buffer.from('X'), 5).then((n) => `wrote ${n}`, keep);
        await f.readv([Buffer.alloc(2)], 0).then((n) => `readv ${n}`, keep);
        const chunks: string[] = [];
        try {
          for await (const c of f.chunks({ chunkSize: 2 })) chunks.push(Buffer.from(c).toString());
        } catch (e) {
          keep(e as Err);
        }
        const b = Buffer.alloc(4);
        const c = Buffer.alloc(4);
        const ns = [await f.read(b), await f.read(c)];
        await f.close();
        return { positioned, errs, chunks, ns, s: b.toString() + c.toString(), fd: f.fd };
      });
      expect(got.positioned).toBeUndefined();
      expect(got.chunks).toEqual([]);
      expect(got.errs.map((e) => [e.name, e.code, e.syscall, e.fd])).toEqual([
        ['IoError', 'ESPIPE', 'read', got.fd],
        ['IoError', 'ESPIPE', 'write', got.fd],
        ['IoError', 'ESPIPE', 'readv', got.fd],
        ['IoError', 'ESPIPE', 'read', got.fd],
      ]);
      // Nothing was consumed by the refused calls: the bytes come in order.
      expect(got).toMatchObject({ ns: [4, 4], s: 'abcdefgh' });
    } finally {
      fs.closeSync(w);
    }
  });

  it.runIf(probe.ok && process.platform === 'linux')(`an aborted read of an empty FIFO rejects promptly, even where the read cannot be stopped (${avail})`, async () => {
    const fifo = join(dir, `fifo-abort-${name}`);
    spawnSync('mkfifo', [fifo]);
    // A writer that holds the FIFO open and never writes: the read waits for input.
    const w = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      const got = await run(async () => {
        const f = await File.open(fifo, { read: true });
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 50);
        const t0 = Date.now();
        const r = await outcome(f.read(new Uint8Array(16), undefined, { signal: ac.signal }));
        const ms = Date.now() - t0;
        fs.writeSync(w, 'x'); // lets a read libuv could not stop finish, so close() is prompt
        await f.close();
        return { r, ms };
      });
      expect(got.r).toBe('CANCELLED');
      expect(got.ms).toBeLessThan(3000);
    } finally {
      fs.closeSync(w);
    }
  });

  it.runIf(probe.ok)(`a signal that is not an AbortSignal is refused before anything is submitted (${avail})`, async () => {
    const path = join(dir, `badsig-${name}`);
    fs.writeFileSync(path, '..........');
    const got = await run(async (rt) => {
      const f = await File.open(path, { read: true, write: true });
      const bad = { signal: { aborted: false } as unknown as AbortSignal };
      const before = rt.stats();
      const results = [
        await outcome(f.write(Buffer.from('WRITTEN'), 0, bad)),
        await outcome(f.write(Buffer.from('WRITTEN'), undefined, bad)), // position-less (the file's own position)
        await outcome(f.read(Buffer.alloc(4), 0, bad)),
        await outcome(f.read(Buffer.alloc(4), undefined, bad)),
        await outcome(f.writev([Buffer.from('W')], undefined, bad)),
        await outcome(f.fsync(bad)),
        await outcome(File.open(path, {}, 0o666, { signal: 5 as unknown as AbortSignal })),
        await outcome(rt.io({ op: 'nop' }, null as unknown as AbortSignal)),
      ];
      const after = rt.stats();
      await f.close();
      return { results, submitted: after.ioSubmitted - before.ioSubmitted, inFlight: after.ioInFlight };
    });
    expect(got.results).toEqual(Array(8).fill('INVALID_ARGUMENT'));
    expect(got.submitted).toBe(0);
    expect(got.inFlight).toBe(0);
    expect(fs.readFileSync(path, 'utf8')).toBe('..........');
  });

  it.runIf(probe.ok)(`chunks() and for await read a direct: true file through aligned pool buffers (${avail})`, async () => {
    if (!directOk) return; // this filesystem has no O_DIRECT
    const path = join(dir, `direct-${name}`);
    const data = Buffer.alloc(3 * 4096 + 904);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 255;
    fs.writeFileSync(path, data);
    const got = await run(async (rt) => {
      let f: File;
      try {
        f = await File.open(path, { read: true, direct: true });
      } catch (e) {
        return { refused: e as Err, directIo: rt.backend.features.directIo };
      }
      const collect = async (it: AsyncIterable<Uint8Array>): Promise<{ bytes: Buffer; sizes: number[] }> => {
        const parts: Buffer[] = [];
        for await (const c of it) parts.push(Buffer.from(c));
        return { bytes: Buffer.concat(parts), sizes: parts.map((p) => p.length) };
      };
      const all = await collect(f);
      const kept: Uint8Array[] = [];
      for await (const c of f.chunks({ chunkSize: 4096 })) kept.push(c); // owned copies
      const reused = await collect(f.chunks({ chunkSize: 8192, reuse: true, readAhead: 2 }));
      const part = await collect(f.chunks({ chunkSize: 4096, position: 4096, length: 5000 }));
      const bad = [
        await outcome(f.chunks({ chunkSize: 1000 }).next()),
        await outcome(f.chunks({ position: 100 }).next()),
        await outcome(f.chunks({ chunkSize: 4096 * 1024 }).next()),
      ];
      await f.close();
      return { all, kept: kept.map((k) => Buffer.from(k)), reused, part, bad, allocated: rt.bufferPool.stats().allocated };
    });
    if ('refused' in got) {
      // Only backends without aligned native buffers refuse, and say which ones have them.
      expect(got.directIo).toBe(false);
      expect(got.refused?.code).toBe('INVALID_ARGUMENT');
      expect(got.refused?.message).toMatch(/'io_uring' or 'epoll'/);
      return;
    }
    expect(got.all.bytes.equals(data)).toBe(true);
    expect(Buffer.concat(got.kept).equals(data)).toBe(true);
    expect(got.kept.map((k) => k.length)).toEqual([4096, 4096, 4096, 904]);
    expect(got.reused.bytes.equals(data)).toBe(true);
    expect(got.part.bytes.equals(data.subarray(4096, 4096 + 5000))).toBe(true);
    expect(got.bad).toEqual(['INVALID_ARGUMENT', 'INVALID_ARGUMENT', 'INVALID_ARGUMENT']);
    expect(got.allocated).toBe(0); // every pool buffer went back
  });

  it.runIf(probe.ok)(`an aborted position-less write settles with what the kernel did, and the next one waits for it (${avail})`, async () => {
    const path = join(dir, `abort-write-${name}`);
    const big = Buffer.alloc(64 << 20, 0x41);
    const got = await run(async (rt) => {
      const f = await File.open(path, { read: true, write: true, create: true, truncate: true });
      const ac = new AbortController();
      let inFlightWhenSettled = -1;
      const w1 = f.write(big, undefined, { signal: ac.signal }).then(
        (n) => {
          inFlightWhenSettled = rt.stats().ioInFlight;
          return `ok ${n}`;
        },
        (e: Err) => {
          inFlightWhenSettled = rt.stats().ioInFlight;
          return e.code;
        },
      );
      await new Promise((r) => setImmediate(r));
      ac.abort();
      const w2 = await f.write(Buffer.from('BBBB'));
      const r1 = await w1;
      const size = fs.statSync(path).size;
      const head = Buffer.alloc(4);
      await f.read(head, 0);
      const tail = Buffer.alloc(4);
      await f.read(tail, size - 4);
      await f.close();
      return { r1, w2, size, head: head.toString(), tail: tail.toString(), inFlightWhenSettled };
    });
    // The aborted write's promise settles only once the backend is done with it (nothing of the
    // file's left in flight), before the next position-less write is submitted.
    expect(got.inFlightWhenSettled).toBe(0);
    expect(got.w2).toBe(4);
    expect(got.tail).toBe('BBBB');
    if (got.r1 === 'CANCELLED') {
      // The cancel won: nothing written, the next write starts at 0.
      expect(got).toMatchObject({ size: 4, head: 'BBBB' });
    } else {
      // The kernel wrote it: the caller is told so, and the position moved past it.
      expect(got.r1).toMatch(/^ok \d+$/);
      const n = Number(String(got.r1).slice(3));
      expect(n).toBeGreaterThan(0);
      expect(got).toMatchObject({ size: n + 4, head: 'AAAA' });
    }
  });

  it.runIf(probe.ok)(`open flags must be booleans (${avail})`, async () => {
    const path = join(dir, `flags-${name}`);
    fs.writeFileSync(path, 'x');
    const got = await run(async () => {
      const bad = [{ write: 1 }, { read: 'yes' }, { create: null }, { append: 1 }, { truncate: 'true', write: true }, { direct: 0 }];
      const codes: string[] = [];
      const messages: string[] = [];
      for (const flags of bad) {
        await File.open(path, flags as never).then(
          async (f) => {
            codes.push('opened');
            await f.close();
          },
          (e: Err) => {
            codes.push(e.code ?? e.name);
            messages.push(e.message);
          },
        );
      }
      const ok = await File.open(path, { read: true, write: undefined, direct: false });
      await ok.close();
      return { codes, messages };
    });
    expect(got.codes).toEqual(Array(6).fill('INVALID_ARGUMENT'));
    expect(got.messages[0]).toMatch(/open flag 'write' must be a boolean, got number 1/);
  });
});
