// What an awaited io_uring read costs on top of a readSync loop, with the caches warm and right
// after a 1 MiB copy has gone through them (as it has after every 1 MiB read). Queue depth 1,
// 4 KiB reads of a page-cached file, every variant in the same process, taking turns, pinned by
// the caller. Not a benchmark of miniss against Node: a measurement of where the sequential read
// goal's budget goes (docs/benchmarks.md, "A sequential 1 MiB io_uring read").
//
//   npx nx run-many -t build && taskset -c 1 node tools/bench/probes/awaited-read-overhead.mjs [reads per turn] [turns]
//
// Variants: sync (fs.readSync), file (await File.read through a runtime), raw (await one read
// through the raw backend, no runtime), nop (await a NOP through the runtime), copy (a 1 MiB
// TypedArray copy alone), and syncP / fileP / rawP / nopP: the same with that copy before each
// operation. "cold" = variant with the copy minus the copy alone.
import { readSync, rmSync } from 'node:fs';
import { File, Runtime } from '@miniss/core';
import { createBackend } from '@miniss/backend-iouring';
import { PROBE_FILE_BYTES, writeProbeFile } from './probe-file.mjs';

const per = Number(process.argv[2] ?? 2000);
const turns = Number(process.argv[3] ?? 12);
const PAGE = 4096;
const FILE_PAGES = PROBE_FILE_BYTES / PAGE;
const path = writeProbeFile('overhead');

const src = new Uint8Array(1 << 20);
const dst = new Uint8Array(1 << 20);
const pollute = () => dst.set(src);
const rt = new Runtime({ backend: 'io_uring' });
const raw = createBackend();
let waiter = null;
raw.onReady(() => {
  while (raw.drain((_h, r) => waiter(r)) > 0);
});

try {
  await rt.blockOn(async () => {
    const f = await File.open(path, { read: true });
    const fd = f.fd;
    const buf = new Uint8Array(PAGE);
    const at = (o, i) => ((o + i) % FILE_PAGES) * PAGE;
    // Warm the page cache.
    for (let i = 0; i < FILE_PAGES; i++) readSync(fd, buf, 0, PAGE, i * PAGE);
    const rawRead = (off) =>
      new Promise((resolve) => {
        waiter = resolve;
        raw.submit({ op: 'read', fd, buffer: buf, offset: off, len: PAGE });
        raw.flush();
      });
    const V = {
      sync: async (o) => { for (let i = 0; i < per; i++) readSync(fd, buf, 0, PAGE, at(o, i)); },
      file: async (o) => { for (let i = 0; i < per; i++) await f.read(buf, at(o, i)); },
      raw: async (o) => { for (let i = 0; i < per; i++) await rawRead(at(o, i)); },
      nop: async () => { for (let i = 0; i < per; i++) await rt.io({ op: 'nop' }); },
      copy: async () => { for (let i = 0; i < per; i++) pollute(); },
      syncP: async (o) => { for (let i = 0; i < per; i++) { pollute(); readSync(fd, buf, 0, PAGE, at(o, i)); } },
      fileP: async (o) => { for (let i = 0; i < per; i++) { pollute(); await f.read(buf, at(o, i)); } },
      rawP: async (o) => { for (let i = 0; i < per; i++) { pollute(); await rawRead(at(o, i)); } },
      nopP: async () => { for (let i = 0; i < per; i++) { pollute(); await rt.io({ op: 'nop' }); } },
    };
    const times = Object.fromEntries(Object.keys(V).map((k) => [k, []]));
    let off = 0;
    for (let t = 0; t < turns; t++) {
      const keys = Object.keys(V);
      if (t & 1) keys.reverse();
      for (const k of keys) {
        const t0 = performance.now();
        await V[k](off);
        times[k].push(((performance.now() - t0) * 1000) / per);
      }
      off += per;
    }
    const med = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
    const m = Object.fromEntries(Object.keys(V).map((k) => [k, med(times[k])]));
    const us = (x) => `${x.toFixed(2)} us`;
    console.log(`per operation, medians of ${turns} turns of ${per}:`);
    console.log(`  readSync 4 KiB      warm ${us(m.sync)}   after a 1 MiB copy ${us(m.syncP - m.copy)}`);
    console.log(`  await File.read     warm ${us(m.file)}   after a 1 MiB copy ${us(m.fileP - m.copy)}`);
    console.log(`  await raw read      warm ${us(m.raw)}   after a 1 MiB copy ${us(m.rawP - m.copy)}`);
    console.log(`  await runtime NOP   warm ${us(m.nop)}   after a 1 MiB copy ${us(m.nopP - m.copy)}`);
    console.log(`  File.read over readSync: warm +${us(m.file - m.sync)}, after a copy +${us(m.fileP - m.syncP)}`);
    await f.close();
  });
} finally {
  raw.close();
  rmSync(path, { force: true });
}
