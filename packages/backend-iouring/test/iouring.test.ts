import { spawnSync } from 'node:child_process';
import { constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createBackend, isSupported, type IoUringBackend } from '@miniss/backend-iouring';
import { Driver, connect, eventually, listen, openFdCount } from './helpers.js';

const support = isSupported();
if (!support.ok) console.warn(`io_uring tests skipped: ${support.reason}`);

const pkgEntry = new URL('../dist/index.js', import.meta.url).href;

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'miniss-iouring-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function node(args: string[], script: string, env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [...args, '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

describe('isSupported', () => {
  it('is ok here or says why; the simulate hook reports EPERM/ENOSYS as the kernel would', () => {
    if (!support.ok) {
      expect(support.reason).toMatch(/\w/);
      return;
    }
    for (const errno of ['EPERM', 'ENOSYS']) {
      const r = node(
        [],
        `import { isSupported, createBackend } from '${pkgEntry}';
         const s = isSupported();
         let code = 'none';
         try { createBackend(); } catch (e) { code = e.code; }
         console.log(JSON.stringify({ s, code }));`,
        { MINISS_IOURING_SIMULATE_ERRNO: errno },
      );
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { s: { ok: boolean; reason: string }; code: string };
      expect(out.s.ok).toBe(false);
      expect(out.s.reason).toContain(errno);
      expect(out.s.reason).toContain('simulated');
      expect(out.code).toBe('BACKEND_UNAVAILABLE');
    }
  });
});

describe.runIf(support.ok)('io_uring backend', () => {
  let b: IoUringBackend;
  let d: Driver;
  let fdsBefore = 0;
  beforeEach(() => {
    fdsBefore = openFdCount();
    b = createBackend();
    d = new Driver(b);
  });
  afterEach(() => {
    b.close();
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('uses a task-run flag (DEFER_TASKRUN or COOP_TASKRUN) and reports its features', () => {
    const s = b.stats();
    const COOP = 1 << 8;
    const DEFER = 1 << 13;
    expect(s.setupFlags & (COOP | DEFER)).not.toBe(0);
    expect(b.features).toEqual({ directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false });
    expect(b.name).toBe('io_uring');
  });

  it('opt-in SQPOLL mode: reports sqpoll and moves data', async () => {
    const sq = createBackend({ sqpoll: true, sqIdleMs: 10 });
    try {
      expect(sq.features.sqpoll).toBe(true);
      expect(sq.stats().setupFlags & 2).toBe(2);
      const sd = new Driver(sq);
      const path = join(dir, 'sqpoll.bin');
      writeFileSync(path, 'hello sqpoll');
      const fd = await sd.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      const buf = new Uint8Array(64);
      expect(await sd.io({ op: 'read', fd, buffer: buf, offset: 6, len: 64 })).toBe(6);
      expect(Buffer.from(buf.subarray(0, 6)).toString()).toBe('sqpoll');
      expect(await sd.io({ op: 'nop' })).toBe(0);
      await sd.io({ op: 'close', fd });
    } finally {
      sq.close();
    }
  });

  it('random reads of a large file match node:fs byte for byte', async () => {
    const path = join(dir, 'big.bin');
    const size = 8 * 1024 * 1024 + 123;
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i - (i + 4 > size ? i + 4 - size : 0));
    writeFileSync(path, data);
    const expected = readFileSync(path);
    const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
    let seed = 12345;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (let round = 0; round < 8; round++) {
      const reads = Array.from({ length: 64 }, () => {
        const off = Math.floor(rnd() * size);
        const len = 1 + Math.floor(rnd() * 65536);
        const buf = new Uint8Array(len);
        return { off, len, buf, p: d.io({ op: 'read', fd, buffer: buf, offset: off, len }) };
      });
      for (const r of reads) {
        const n = await r.p;
        expect(n).toBe(Math.min(r.len, size - r.off));
        expect(Buffer.from(r.buf.subarray(0, n)).equals(expected.subarray(r.off, r.off + n))).toBe(true);
      }
    }
    await d.io({ op: 'close', fd });
  });

  it('reads with O_DIRECT into allocateBuffer memory (4096-aligned)', async () => {
    const path = join(dir, 'direct.bin');
    writeFileSync(path, Buffer.alloc(65536, 0x5a));
    const buf = b.allocateBuffer(65536, 4096);
    let fd: number;
    try {
      fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY | constants.O_DIRECT, mode: 0 });
    } catch (e) {
      // tmpfs refuses O_DIRECT; nothing to test there.
      expect((e as { code?: string }).code).toBe('EINVAL');
      return;
    }
    expect(await d.io({ op: 'read', fd, buffer: buf, offset: 0, len: 65536 })).toBe(65536);
    expect(buf.every((x) => x === 0x5a)).toBe(true);
    await d.io({ op: 'close', fd });
  });

  it('a closed or invalid fd gives EBADF, never a crash', async () => {
    for (const fd of [-1, 999_999, 2 ** 40]) {
      const e = await d.error({ op: 'read', fd, buffer: new Uint8Array(8), offset: 0, len: 8 });
      expect(e.code).toBe('EBADF');
      expect(e.errno).toBeLessThan(0);
    }
    const path = join(dir, 'closed.bin');
    writeFileSync(path, 'x');
    const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
    await d.io({ op: 'close', fd });
    expect((await d.error({ op: 'read', fd, buffer: new Uint8Array(8), offset: 0, len: 8 })).code).toBe('EBADF');
    expect((await d.error({ op: 'close', fd })).code).toBe('EBADF');
  });

  it('cancels an accept and a recv in flight exactly once', async () => {
    const l = await listen(d);
    const acc = d.submit({ op: 'accept', fd: l.fd });
    await new Promise((r) => setTimeout(r, 10));
    expect(b.cancel(acc.id)).toBe(true);
    expect(b.cancel(acc.id)).toBe(false);
    await expect(acc.done).rejects.toMatchObject({ code: 'ECANCELED' });
    const acc2 = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc2;
    const rv = d.submit({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 });
    await new Promise((r) => setTimeout(r, 10));
    expect(b.cancel(rv.id)).toBe(true);
    await expect(rv.done).rejects.toMatchObject({ code: 'ECANCELED' });
    expect(d.completions.get(rv.id)).toBe(1);
    expect(d.completions.get(acc.id)).toBe(1);
    for (const fd of [c, s, l.fd]) await d.io({ op: 'close', fd });
  });

  it('a full submission queue queues rather than drops (4-entry ring, 1000 operations)', async () => {
    const tiny = createBackend({ entries: 4, maxBatchSize: 64 });
    try {
      const td = new Driver(tiny);
      const all = Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? td.io({ op: 'nop' }) : td.io({ op: 'timeout', ms: 1 })));
      const results = await Promise.all(all);
      expect(results.every((r) => r === 0)).toBe(true);
      expect(td.completions.size).toBe(1000);
      expect([...td.completions.values()].every((n) => n === 1)).toBe(true);
      expect(tiny.inFlight).toBe(0);
    } finally {
      tiny.close();
    }
  });

  it('100k operations leave no growth in fds or RSS', async () => {
    const path = join(dir, 'many.bin');
    writeFileSync(path, Buffer.alloc(65536, 3));
    const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
    const buf = new Uint8Array(4096);
    const round = async (): Promise<void> => {
      const ps: Promise<number>[] = [];
      for (let i = 0; i < 1000; i++) ps.push(i % 2 === 0 ? d.io({ op: 'nop' }) : d.io({ op: 'read', fd, buffer: buf, offset: (i * 4096) % 65536, len: 4096 }));
      await Promise.all(ps);
    };
    for (let i = 0; i < 10; i++) await round();
    const fds = openFdCount();
    const rss0 = process.memoryUsage().rss;
    for (let i = 0; i < 100; i++) await round();
    expect(openFdCount()).toBe(fds);
    expect(process.memoryUsage().rss - rss0).toBeLessThan(32 * 1024 * 1024);
    expect(b.inFlight).toBe(0);
    await d.io({ op: 'close', fd });
  }, 60_000);

  it('buffers stay pinned: forced GC while reads are in flight (child with --expose-gc)', () => {
    const path = join(dir, 'gc.bin');
    const data = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 255;
    writeFileSync(path, data);
    const r = node(
      ['--expose-gc'],
      `import { createBackend } from '${pkgEntry}';
       import { openSync, closeSync } from 'node:fs';
       const fd = openSync(${JSON.stringify(path)}, 'r');
       const b = createBackend();
       let ok = 0, bad = 0, left = 0;
       const check = new Map();
       b.onReady(() => { for (const c of b.poll(0)) { left--; const x = check.get(c.handle); check.delete(c.handle);
         if (x === undefined) { if (c.result === 65536) ok++; else bad++; } else if (c.result === 65536 && x.every((v, i) => v === ((x.off + i) * 7 & 255))) ok++; else bad++; }
         if (left === 0) { closeSync(fd); b.close(); console.log(JSON.stringify({ ok, bad })); } });
       for (let i = 0; i < 64; i++) {
         const buf = new Uint8Array(65536); buf.off = i * 65536;
         const id = b.submit({ op: 'read', fd, buffer: buf, offset: i * 65536, len: 65536 });
         check.set(id, buf); left++;
       }
       b.flush();
       // Buffers that only the backend references, read into and then dropped: GC may collect the
       // views, never the memory the kernel is still writing into.
       for (let i = 0; i < 64; i++) b.submit({ op: 'read', fd, buffer: new Uint8Array(65536), offset: 0, len: 65536 });
       left += 64;
       b.flush();
       for (let i = 0; i < 5; i++) { globalThis.gc(); new Array(100000).fill({}); }`,
    );
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ ok: 128, bad: 0 });
  });

  it('holds the event loop only while operations are in flight', () => {
    const idle = node([], `import { createBackend } from '${pkgEntry}'; const b = createBackend(); b.submit({ op: 'nop' }); b.flush(); b.onReady(() => b.poll(0));`);
    expect(idle.status, idle.stderr).toBe(0);
    const busy = node(
      [],
      `import { createBackend } from '${pkgEntry}'; const b = createBackend(); const t0 = Date.now();
       b.onReady(() => { if (b.poll(0).length) { console.log('done ' + (Date.now() - t0)); b.close(); } });
       b.submit({ op: 'timeout', ms: 300 }); b.flush();`,
    );
    expect(busy.status, busy.stderr).toBe(0);
    expect(busy.stdout).toMatch(/^done \d+/);
    expect(busy.ms).toBeGreaterThanOrEqual(300);
  });

  it('worker.terminate() with operations in flight neither crashes nor leaks fds', async () => {
    const l = await listen(d);
    const before = openFdCount();
    for (let i = 0; i < 3; i++) {
      const w = new Worker(
        `const { parentPort, workerData } = require('node:worker_threads');
         import('${pkgEntry}').then((m) => {
           const b = m.createBackend();
           b.submit({ op: 'accept', fd: workerData.listenFd });
           b.submit({ op: 'accept', fd: workerData.listenFd });
           b.submit({ op: 'timeout', ms: 60000 });
           b.submit({ op: 'open', path: workerData.path, flags: workerData.flags, mode: 0o600 });
           const efd = b.eventfd();
           b.submit({ op: 'read', fd: efd, buffer: new Uint8Array(8), offset: -1, len: 8 });
           b.flush();
           parentPort.postMessage(b.inFlight);
           setInterval(() => {}, 1000);
         }).catch((e) => { console.error(e); process.exit(1); });`,
        { eval: true, workerData: { listenFd: l.fd, path: join(dir, `w${i}`), flags: constants.O_CREAT | constants.O_RDWR } },
      );
      const inFlight = await new Promise((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`worker exited early with ${code}`)));
      });
      expect(inFlight).toBe(5);
      const c = await connect(d, l.port);
      await new Promise((r) => setTimeout(r, 20));
      await w.terminate();
      await d.io({ op: 'close', fd: c });
    }
    await eventually(() => openFdCount() === before, 5000);
    await d.io({ op: 'close', fd: l.fd });
  }, 30_000);
});
