// Awaited sequential reads at queue depth 1 through the two Linux backends, without the runtime,
// against a readSync loop in the same process: the io_uring backend (one IORING_OP_READ per
// io_uring_enter) and the epoll backend (which reads the page cache itself with
// preadv2(RWF_NOWAIT) inside flush(), no ring at all). If the ring were what keeps File.read
// from the sync loop's speed, the epoll backend would be closer to it. Not a benchmark of miniss
// against Node: it measures where the sequential read goal's budget goes (docs/benchmarks.md,
// "A sequential 1 MiB io_uring read").
//
//   npx nx run-many -t build && node tools/bench/probes/seq-read-backends.mjs [block bytes] [reads per turn] [turns]
//
// Defaults: 1 MiB blocks of a 64 MiB page-cached file, 64 reads per turn, 60 turns; the three
// variants take turns in a rotating order, the first third of the turns is warm-up (V8 compiles
// the awaited path only after some thousands of calls), and the medians of the rest are printed.
import { closeSync, openSync, readSync, rmSync } from 'node:fs';
import { createBackend as createIoUring } from '@miniss/backend-iouring';
import { createBackend as createEpoll } from '@miniss/backend-epoll';
import { PROBE_FILE_BYTES, writeProbeFile } from './probe-file.mjs';
import { timeTurns, timedTurns, warmMedian } from './turns.mjs';

const bs = Number(process.argv[2] ?? 1 << 20);
const per = Number(process.argv[3] ?? 64);
const turns = Number(process.argv[4] ?? 60);
if (!Number.isInteger(bs) || bs < 512 || bs > PROBE_FILE_BYTES || PROBE_FILE_BYTES % bs !== 0) {
  console.error('block bytes: a divisor of 64 MiB, at least 512');
  process.exit(2);
}
const blocks = PROBE_FILE_BYTES / bs;
const path = writeProbeFile('seq-backends');

const fd = openSync(path, 'r');
const buf = new Uint8Array(bs);
for (let i = 0; i < blocks; i++) readSync(fd, buf, 0, bs, i * bs); // into the page cache

/** One awaited read at a time through a raw backend: submit, flush, resolve from its ready callback. */
function awaitedReader(backend) {
  let waiter = null;
  backend.onReady(() => {
    if (typeof backend.drain === 'function') {
      while (backend.drain((_id, r) => waiter(r)) > 0);
      return;
    }
    for (let cs = backend.poll(0); cs.length > 0; cs = backend.poll(0)) for (const c of cs) waiter(c.result);
  });
  return (offset) =>
    new Promise((resolve) => {
      waiter = resolve;
      backend.submit({ op: 'read', fd, buffer: buf, offset, len: bs });
      backend.flush();
    });
}

let backends;
try {
  backends = [createIoUring(), createEpoll()];
} catch (err) {
  // io_uring refused (ENOSYS, or EPERM in a container) or not Linux: nothing to compare here.
  console.error(`cannot create both backends: ${err.code ?? ''} ${err.message}`);
  closeSync(fd);
  rmSync(path, { force: true });
  process.exit(2);
}
const [uringRead, epollRead] = backends.map(awaitedReader);
const at = (o, i) => ((o + i) % blocks) * bs;
const check = (n) => {
  if (n !== bs) throw new Error(`short read: ${n instanceof Error ? n.message : n} of ${bs} bytes`);
};
const V = {
  readSync: async (o) => { for (let i = 0; i < per; i++) check(readSync(fd, buf, 0, bs, at(o, i))); },
  io_uring: async (o) => { for (let i = 0; i < per; i++) check(await uringRead(at(o, i))); },
  epoll: async (o) => { for (let i = 0; i < per; i++) check(await epollRead(at(o, i))); },
};
let times;
try {
  times = await timeTurns(V, turns, per, (t) => t * per);
} finally {
  for (const b of backends) b.close();
  closeSync(fd);
  rmSync(path, { force: true });
}
const sync = warmMedian(times.readSync);
const line = (k) => `${warmMedian(times[k]).toFixed(2)} us (${(sync / warmMedian(times[k])).toFixed(3)}x of readSync)`;
console.log(`awaited ${bs}-byte reads, queue depth 1, medians of ${timedTurns(turns)} turns of ${per}:`);
console.log(`  readSync ${sync.toFixed(2)} us; io_uring backend ${line('io_uring')}; epoll backend ${line('epoll')}`);
