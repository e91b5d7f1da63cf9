// What keeping reads in flight saves per read: sequential page-cached reads through the runtime
// with 1, 2, 4 and 8 in flight, as a loop of awaited File.read calls and as file.chunks() with
// reused buffers, against a readSync loop in the same process (every variant takes turns). Small
// blocks make the cost per read visible; at 1 MiB the copy dominates. Not a benchmark of miniss
// against Node: it shows where file.chunks()' reads ahead pay (docs/benchmarks.md, "Reads ahead").
//
//   npx nx run-many -t build && taskset -c 1 node tools/bench/probes/read-ahead.mjs [block bytes] [backend] [turns]
//
// Defaults: 4 KiB blocks, io_uring, 9 turns over the whole 64 MiB file (the first third warm-up);
// prints the median microseconds per read of each variant and what it adds to readSync's.
import { closeSync, openSync, readSync, rmSync } from 'node:fs';
import { File, Runtime } from '@miniss/core';
import { PROBE_FILE_BYTES, writeProbeFile } from './probe-file.mjs';
import { timeTurns, timedTurns, warmMedian } from './turns.mjs';

const bs = Number(process.argv[2] ?? 4096);
const backend = process.argv[3] ?? 'io_uring';
const turns = Number(process.argv[4] ?? 9);
if (!Number.isInteger(bs) || bs < 512 || bs > PROBE_FILE_BYTES || PROBE_FILE_BYTES % bs !== 0) {
  console.error('block bytes: a divisor of 64 MiB, at least 512');
  process.exit(2);
}
const blocks = PROBE_FILE_BYTES / bs;
const DEPTHS = [1, 2, 4, 8];
const path = writeProbeFile('read-ahead');
const check = (n) => {
  if (n !== bs) throw new Error(`short read: ${n} of ${bs} bytes`);
};

let rt;
try {
  rt = new Runtime({ backend });
} catch (err) {
  console.error(`cannot create a runtime on ${backend}: ${err.code ?? ''} ${err.message}`);
  rmSync(path, { force: true });
  process.exit(2);
}
try {
  await rt.blockOn(async () => {
    const f = await File.open(path);
    const fd = openSync(path, 'r');
    const bufs = Array.from({ length: 8 }, () => new Uint8Array(bs));
    for (let i = 0; i < blocks; i++) readSync(fd, bufs[0], 0, bs, i * bs); // into the page cache
    /** Awaited File.read calls, `depth` in flight, each block into the buffer of its slot. */
    const reads = async (depth) => {
      const inflight = [];
      for (let k = 0; k < depth; k++) inflight.push(f.read(bufs[k], k * bs));
      for (let i = 0; i < blocks; i++) {
        const k = i % depth;
        check(await inflight[k]);
        if (i + depth < blocks) inflight[k] = f.read(bufs[k], (i + depth) * bs);
      }
    };
    const chunks = async (readAhead) => {
      for await (const c of f.chunks({ chunkSize: bs, readAhead, reuse: true })) check(c.byteLength);
    };
    const V = { readSync: async () => { for (let i = 0; i < blocks; i++) check(readSync(fd, bufs[0], 0, bs, i * bs)); } };
    for (const d of DEPTHS) V[`File.read x${d}`] = () => reads(d);
    for (const d of DEPTHS) V[`chunks ${d} ahead`] = () => chunks(d);
    const times = await timeTurns(V, turns, blocks);
    closeSync(fd);
    await f.close();
    const sync = warmMedian(times.readSync);
    console.log(`${bs}-byte sequential reads on ${backend}, medians of ${timedTurns(turns)} passes over 64 MiB:`);
    for (const k of Object.keys(V)) {
      const m = warmMedian(times[k]);
      console.log(`  ${k.padEnd(16)} ${m.toFixed(2)} us/read${k === 'readSync' ? '' : ` (+${(m - sync).toFixed(2)} us, ${(sync / m).toFixed(3)}x of readSync)`}`);
    }
  });
} finally {
  rmSync(path, { force: true });
}
