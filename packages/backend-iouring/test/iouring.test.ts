import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { IoOperation } from '@miniss/core';
import { createBackend, isSupported, type IoUringBackend, type IoUringConnectOperation } from '@miniss/backend-iouring';
import { Driver, checkChangingBatches, connect, eventually, listen, openFdCount } from './helpers.js';

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

  it('uses COOP_TASKRUN (never DEFER_TASKRUN by default) and reports its features', () => {
    const s = b.stats();
    const COOP = 1 << 8;
    const DEFER = 1 << 13;
    expect(s.setupFlags & COOP).toBe(COOP);
    expect(s.setupFlags & DEFER).toBe(0);
    expect(b.features).toEqual({ directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false, linkedTimeouts: true });
    expect(b.name).toBe('io_uring');
  });

  it('an eventfd read in flight completes every time another thread (or this one) writes it', async () => {
    // Regression: with SINGLE_ISSUER|DEFER_TASKRUN (the old default) the kernel signalled the
    // ring's eventfd only for the first such wake-up and the second read hung forever
    // (multicore's eventfd doorbell). Each round: park a read, then have a worker write.
    const efd = b.eventfd();
    const ctl = new Int32Array(new SharedArrayBuffer(8));
    const w = new Worker(
      `const { workerData } = require('node:worker_threads');
       const { writeSync } = require('node:fs');
       const ctl = new Int32Array(workerData.sab);
       const one = Buffer.alloc(8); one.writeBigUInt64LE(1n);
       let last = 0;
       for (;;) {
         const v = Atomics.load(ctl, 0);
         if (v < 0) break;
         if (v !== last) { last = v; writeSync(workerData.fd, one); Atomics.store(ctl, 1, v); }
         else Atomics.wait(ctl, 0, v, 50);
       }`,
      { eval: true, workerData: { sab: ctl.buffer, fd: efd } },
    );
    try {
      const buf = new Uint8Array(8);
      const within = <T>(p: Promise<T>, what: string): Promise<T> =>
        Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error(`${what}: no completion in 2 s`)), 2000))]);
      for (let i = 1; i <= 40; i++) {
        const done = d.io({ op: 'read', fd: efd, buffer: buf, offset: -1, len: 8 });
        await new Promise((r) => setImmediate(r)); // the read reaches the kernel and parks
        if (i % 4 === 0) {
          b.signalFd(efd); // from this thread
        } else {
          Atomics.store(ctl, 0, i);
          Atomics.notify(ctl, 0);
        }
        expect(await within(done, `round ${i}`)).toBe(8);
        expect(new DataView(buf.buffer).getBigUint64(0, true)).toBe(1n);
      }
    } finally {
      Atomics.store(ctl, 0, -1);
      Atomics.notify(ctl, 0);
      await w.terminate();
    }
    // The opt-in DEFER_TASKRUN ring, which loses these wake-ups, refuses to make an eventfd.
    const deferred = createBackend({ taskRun: 'defer' });
    try {
      if ((deferred.stats().setupFlags & (1 << 13)) !== 0) {
        expect(() => deferred.eventfd()).toThrow(expect.objectContaining({ code: 'FEATURE_UNAVAILABLE' }));
      }
    } finally {
      deferred.close();
    }
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

  it('batches of changing size hand every operation its own buffers (the reused object list)', async () => {
    await checkChangingBatches(d, dir);
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
      // accept goes through the multishot path: the same error, twice (the record is not stuck)
      expect((await d.error({ op: 'accept', fd })).code).toBe('EBADF');
      const both = await Promise.allSettled([d.io({ op: 'accept', fd }), d.io({ op: 'accept', fd })]);
      expect(both.map((x) => (x.status === 'rejected' ? (x.reason as { code?: string }).code : 'ok'))).toEqual(['EBADF', 'EBADF']);
    }
    const path = join(dir, 'closed.bin');
    writeFileSync(path, 'x');
    const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
    await d.io({ op: 'close', fd });
    expect((await d.error({ op: 'read', fd, buffer: new Uint8Array(8), offset: 0, len: 8 })).code).toBe('EBADF');
    expect((await d.error({ op: 'close', fd })).code).toBe('EBADF');
  });

  it('multishot accept: 200 connections accepted, every fd accounted for, queued ones closed with the listener', async () => {
    const l = await listen(d, { backlog: 1024 });
    // One accept arms the multishot; 200 clients connect while at most one accept waits, so
    // the surplus queues natively and later accepts take from the queue.
    const first = d.io({ op: 'accept', fd: l.fd });
    const clients = await Promise.all(Array.from({ length: 200 }, () => connect(d, l.port)));
    const clientPorts = new Set(clients.map((c) => b.address(c, 'local').port));
    expect(clientPorts.size).toBe(200);
    await eventually(() => b.stats().queuedAccepts === 199, 3000);
    const accepted = [await first];
    for (let i = 1; i < 200; i++) accepted.push(await d.io({ op: 'accept', fd: l.fd }));
    expect(new Set(accepted).size).toBe(200);
    // Each accepted fd is the server side of exactly one client.
    const peerPorts = new Set(accepted.map((fd) => b.address(fd, 'peer').port));
    expect(peerPorts).toEqual(clientPorts);
    expect(b.stats().queuedAccepts).toBe(0);
    // Five more nobody accepts: queued, then closed by the listener's close (no fd leak).
    const fdsBeforeExtra = openFdCount();
    const extra = await Promise.all(Array.from({ length: 5 }, () => connect(d, l.port)));
    await eventually(() => b.stats().queuedAccepts === 5, 3000);
    expect(openFdCount()).toBe(fdsBeforeExtra + 10);
    await d.io({ op: 'close', fd: l.fd });
    expect(b.stats().queuedAccepts).toBe(0);
    expect(openFdCount()).toBe(fdsBeforeExtra + 4); // 5 clients, minus the listener
    // The clients see their server side go away.
    const buf = new Uint8Array(8);
    for (const c of extra) expect(await d.io({ op: 'recv', fd: c, buffer: buf, len: 8 }).catch((e: { code?: string }) => e.code)).toSatisfy((r: unknown) => r === 0 || r === 'ECONNRESET');
    for (const fd of [...accepted, ...clients, ...extra]) await d.io({ op: 'close', fd });
  }, 20_000);

  it('multishot accept: cancelling one of two waiting accepts completes it exactly once; the other gets the connection', async () => {
    const l = await listen(d);
    const a1 = d.submit({ op: 'accept', fd: l.fd });
    const a2 = d.submit({ op: 'accept', fd: l.fd });
    await new Promise((r) => setTimeout(r, 10));
    expect(b.cancel(a1.id)).toBe(true);
    expect(b.cancel(a1.id)).toBe(false);
    await expect(a1.done).rejects.toMatchObject({ code: 'ECANCELED' });
    const c = await connect(d, l.port);
    const s = await a2.done;
    expect(b.address(s, 'peer').port).toBe(b.address(c, 'local').port);
    expect(d.completions.get(a1.id)).toBe(1);
    expect(d.completions.get(a2.id)).toBe(1);
    // An accept waiting when the listener is closed fails with ECANCELED.
    const a3 = d.submit({ op: 'accept', fd: l.fd });
    await new Promise((r) => setTimeout(r, 10));
    await d.io({ op: 'close', fd: l.fd });
    await expect(a3.done).rejects.toMatchObject({ code: 'ECANCELED' });
    // Accept on something that is not a listening socket still fails like a single-shot accept.
    expect((await d.error({ op: 'accept', fd: c })).code).toBe('EINVAL');
    for (const fd of [c, s]) await d.io({ op: 'close', fd });
  });

  it('multishot accept: shutdown of the listener closes its queued connections; later accepts fail with EINVAL', async () => {
    const l = await listen(d);
    const first = d.io({ op: 'accept', fd: l.fd });
    const clients: number[] = [];
    for (let i = 0; i < 4; i++) clients.push(await connect(d, l.port));
    const s1 = await first;
    await eventually(() => b.stats().queuedAccepts === 3, 3000);
    const fds = openFdCount();
    expect(await d.io({ op: 'shutdown', fd: l.fd, how: 2 })).toBe(0);
    expect(b.stats().queuedAccepts).toBe(0);
    expect(openFdCount()).toBe(fds - 3);
    expect((await d.error({ op: 'accept', fd: l.fd })).code).toBe('EINVAL');
    for (const fd of [s1, ...clients, l.fd]) await d.io({ op: 'close', fd });
  });

  it('multishot accept: a listener fd closed behind the backend and reused is not served by the old multishot', async () => {
    const a = await listen(d);
    const s0 = d.io({ op: 'accept', fd: a.fd });
    const c0 = await connect(d, a.port);
    const s0fd = await s0; // the multishot on listener A is armed and stays armed
    closeSync(a.fd); // closed without the backend: the kernel keeps A alive through the multishot
    const bl = await listen(d); // typically gets A's fd number
    const acc = d.io({ op: 'accept', fd: bl.fd });
    const c1 = await connect(d, bl.port);
    const s1 = await acc;
    expect(b.address(s1, 'peer').port).toBe(b.address(c1, 'local').port);
    // A's multishot was cancelled, so A's socket is gone: its port refuses connections (without
    // the cancel it would still accept them, into a queue nobody can reach).
    // (The cancel is asynchronous: allow a few tries.)
    const probes: number[] = [];
    let code: string | undefined;
    for (let i = 0; i < 10 && code !== 'ECONNREFUSED'; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 20));
      const probe = await d.io({ op: 'socket', family: 4 });
      probes.push(probe);
      code = await d.io({ op: 'connect', fd: probe, addr: { host: '127.0.0.1', port: a.port } }).then(
        () => 'connected',
        (e: { code?: string }) => e.code,
      );
    }
    expect(code).toBe('ECONNREFUSED');
    expect(b.stats().queuedAccepts).toBe(0);
    for (const fd of [s0fd, c0, s1, c1, ...probes, bl.fd]) await d.io({ op: 'close', fd });
  });

  it('multishot accept, seeded random interleavings of accept / cancel / connect / shutdown / close: each accept completes once, no fd leaks', async () => {
    let seed = 0x5eed1234;
    const rnd = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const base = openFdCount();
    for (let round = 0; round < 12; round++) {
      const rb = createBackend({ entries: rnd(2) === 0 ? 8 : 256 });
      const rd = new Driver(rb);
      const l = await listen(rd);
      const accepts: { id: number; done: Promise<number> }[] = [];
      const fds: number[] = [];
      const steps = 20 + rnd(40);
      for (let i = 0; i < steps; i++) {
        const k = rnd(6);
        if (k <= 1) {
          const a = rd.submit({ op: 'accept', fd: l.fd });
          a.done.then((fd) => fds.push(fd), () => {});
          accepts.push(a);
        } else if (k === 2 && accepts.length > 0) {
          rb.cancel(accepts[rnd(accepts.length)]!.id);
        } else if (k === 3) {
          const c = await rd.io({ op: 'socket', family: 4 });
          fds.push(c);
          rd.submit({ op: 'connect', fd: c, addr: { host: '127.0.0.1', port: l.port } }).done.catch(() => {});
        } else if (k === 4) {
          await new Promise((r) => setTimeout(r, rnd(3)));
        } else if (k === 5 && rnd(8) === 0) {
          await rd.io({ op: 'shutdown', fd: l.fd, how: 2 });
        }
      }
      const how = rnd(3);
      if (how === 0) await rd.io({ op: 'close', fd: l.fd });
      await new Promise((r) => setTimeout(r, 20));
      for (const a of accepts) if (rd.completions.get(a.id) === undefined) rb.cancel(a.id);
      await Promise.all(accepts.map((a) => a.done.catch(() => 0)));
      for (const a of accepts) expect(rd.completions.get(a.id)).toBe(1);
      for (const fd of fds) await rd.io({ op: 'close', fd });
      if (how === 1) await rd.io({ op: 'close', fd: l.fd });
      rb.close(); // how === 2: closes the listener's queue with the backend
      if (how === 2) closeSync(l.fd);
      expect(openFdCount()).toBe(base);
    }
  }, 30_000);

  it('multishot accept: closing the backend closes queued connections; an idle armed listener does not hold the loop', async () => {
    const l = await listen(d);
    const b2 = createBackend();
    const d2 = new Driver(b2);
    const first = d2.io({ op: 'accept', fd: l.fd });
    const clients = await Promise.all(Array.from({ length: 6 }, () => connect(d, l.port)));
    const s1 = await first;
    await eventually(() => b2.stats().queuedAccepts === 5, 3000);
    const fds = openFdCount();
    b2.close();
    expect(openFdCount()).toBe(fds - 5 - 2); // queued connections, the ring and its eventfd
    for (const fd of [s1, ...clients, l.fd]) await d.io({ op: 'close', fd });
    const r = node(
      [],
      `import { createBackend } from '${pkgEntry}';
       const b = createBackend(); const pending = new Map();
       b.onReady(() => { for (const c of b.poll(0)) { const p = pending.get(c.handle); pending.delete(c.handle); p(c.result); } });
       const io = (op) => new Promise((res) => { pending.set(b.submit(op), res); queueMicrotask(() => b.flush()); });
       const lfd = await io({ op: 'socket', family: 4 });
       await io({ op: 'listen', fd: lfd, addr: { host: '127.0.0.1', port: 0 }, backlog: 16, reusePort: false });
       const port = b.address(lfd, 'local').port;
       const acc = io({ op: 'accept', fd: lfd });
       const cfd = await io({ op: 'socket', family: 4 });
       await io({ op: 'connect', fd: cfd, addr: { host: '127.0.0.1', port } });
       const sfd = await acc;
       console.log('accepted ' + (sfd > 0));
       // The multishot accept stays armed on lfd; nothing else is pending: the process must exit.`,
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('accepted true');
  });

  it('connect with timeoutMs (backend extension, linked timeout): ETIMEDOUT when it cannot finish, ECANCELED when cancelled, fast ones unaffected', async () => {
    const l = await listen(d, { backlog: 1 });
    const addr = { host: '127.0.0.1', port: l.port };
    const connectOp = (fd: number, timeoutMs: unknown): IoOperation => ({ op: 'connect', fd, addr, timeoutMs }) as IoUringConnectOperation as IoOperation;
    expect(() => b.submit(connectOp(0, -1))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => b.submit(connectOp(0, 'x'))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const fds: number[] = [];
    const fast = await d.io({ op: 'socket', family: 4 });
    fds.push(fast);
    expect(await d.io(connectOp(fast, 5000))).toBe(0);
    // Nobody accepts and the backlog is 1: once the accept queue is full the kernel drops SYNs
    // and a connect waits for a retransmission (1 s), longer than its 150 ms timeout.
    let timedOut: { code?: string; ms: number } | null = null;
    for (let i = 0; i < 8 && timedOut === null; i++) {
      const fd = await d.io({ op: 'socket', family: 4 });
      fds.push(fd);
      const t0 = Date.now();
      try {
        await d.io(connectOp(fd, 150));
      } catch (err) {
        timedOut = { code: (err as { code?: string }).code, ms: Date.now() - t0 };
      }
    }
    expect(timedOut?.code).toBe('ETIMEDOUT');
    expect(timedOut!.ms).toBeGreaterThanOrEqual(140);
    // Cancelled by the caller before its timeout: ECANCELED, not ETIMEDOUT.
    const fd = await d.io({ op: 'socket', family: 4 });
    fds.push(fd);
    const c = d.submit(connectOp(fd, 10_000));
    await new Promise((r) => setTimeout(r, 30));
    expect(b.cancel(c.id)).toBe(true);
    await expect(c.done).rejects.toMatchObject({ code: 'ECANCELED' });
    await eventually(() => b.stats().inFlight === 0, 2000);
    for (const x of [...fds, l.fd]) await d.io({ op: 'close', fd: x });
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

  // AddressSanitizer's shadow memory and quarantine inflate RSS: the RSS bound means nothing there.
  it.skipIf(process.env['MINISS_UNDER_ASAN'] !== undefined)('100k operations leave no growth in fds or RSS (skipped under ASan: it inflates RSS)', () => {
    const path = join(dir, 'many.bin');
    writeFileSync(path, Buffer.alloc(65536, 3));
    // In a child with --expose-gc and a small fixed young generation, so the RSS figure is the
    // backend's and not V8 growing its heap (which it does over the first ~100k operations in
    // any process, with or without this backend).
    const r = node(
      ['--expose-gc', '--max-semi-space-size=1'],
      `import { createBackend } from '${pkgEntry}';
       import { openSync, closeSync, readdirSync } from 'node:fs';
       const fd = openSync(${JSON.stringify(path)}, 'r');
       const b = createBackend(); const pend = new Map(); let flushing = false;
       b.onReady(() => { for (;;) { const cs = b.poll(0); if (!cs.length) return; for (const c of cs) { const p = pend.get(c.handle); pend.delete(c.handle); p(c.result); } } });
       const io = (op) => new Promise((res) => { pend.set(b.submit(op), res); if (!flushing) { flushing = true; queueMicrotask(() => { flushing = false; b.flush(); }); } });
       const buf = new Uint8Array(4096);
       const round = async () => { const ps = []; for (let i = 0; i < 1000; i++) ps.push(i % 2 === 0 ? io({ op: 'nop' }) : io({ op: 'read', fd, buffer: buf, offset: (i * 4096) % 65536, len: 4096 })); await Promise.all(ps); };
       for (let i = 0; i < 150; i++) await round();
       globalThis.gc(); const fds0 = readdirSync('/proc/self/fd').length; const rss0 = process.memoryUsage().rss;
       for (let i = 0; i < 100; i++) await round();
       globalThis.gc(); const fds1 = readdirSync('/proc/self/fd').length; const rss1 = process.memoryUsage().rss;
       const out = { fds: fds1 - fds0, rssMb: (rss1 - rss0) / 1048576, inFlight: b.inFlight, kernelInFlight: b.stats().inFlight };
       b.close(); closeSync(fd); console.log(JSON.stringify(out));`,
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { fds: number; rssMb: number; inFlight: number; kernelInFlight: number };
    expect(out.fds).toBe(0);
    expect(out.inFlight).toBe(0);
    expect(out.kernelInFlight).toBe(0);
    expect(out.rssMb).toBeLessThan(16);
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

  it('completions nobody reaps (no onReady callback) do not make the loop spin', () => {
    const r = node(
      [],
      `import { createBackend } from '${pkgEntry}';
       const b = createBackend();
       for (let i = 0; i < 4; i++) b.submit({ op: 'nop' });
       b.submit({ op: 'timeout', ms: 10 });
       b.flush();
       const c0 = process.cpuUsage();
       setTimeout(() => {
         const c = process.cpuUsage(c0);
         const reaped = b.poll(0).length;
         b.close();
         console.log(JSON.stringify({ cpuMs: (c.user + c.system) / 1000, reaped }));
       }, 400);`,
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { cpuMs: number; reaped: number };
    expect(out.reaped).toBe(5);
    // A busy loop would burn ~400 ms of CPU here.
    expect(out.cpuMs).toBeLessThan(150);
  });

  it('completions the addon hands to onReady are each delivered once: kept for the next poll when the consumer leaves them', async () => {
    const b = createBackend();
    try {
      // A consumer that takes nothing: the completions reaped for its call must not be lost.
      const first = new Set<number>();
      for (let i = 0; i < 5; i++) first.add(b.submit({ op: 'nop' }) as number);
      let calls = 0;
      b.onReady(() => {
        calls++;
      });
      b.flush();
      await eventually(() => calls > 0, 2000);
      const kept = b.poll(0);
      expect(kept.map((c) => c.handle).sort()).toEqual([...first].sort());
      expect(kept.every((c) => c.result === 0)).toBe(true);
      expect(b.poll(0)).toEqual([]);
      // A consumer that drains: every completion once, none again later.
      const second = new Set<number>();
      for (let i = 0; i < 5; i++) second.add(b.submit({ op: 'nop' }) as number);
      const seen: number[] = [];
      b.onReady(() => {
        while (b.drain((h) => seen.push(h as number)) > 0);
      });
      b.flush();
      await eventually(() => seen.length >= 5, 2000);
      await new Promise((r) => setTimeout(r, 20));
      expect(seen.sort()).toEqual([...second].sort());
      expect(b.poll(0)).toEqual([]);
    } finally {
      b.close();
    }
  });

  it('a chain of awaited reads that complete inline still lets the loop turn (rounds per wake-up are bounded)', async () => {
    // Counted, not timed: every loop turn runs the check phase (setImmediate) and due timers, so
    // the reads that complete between two immediates are the rounds one wake-up ran. The addon
    // allows at most 64 (kMaxReadyRounds in native/binding.cc); unbounded rounds would run the
    // whole chain in one wake-up and starve timers until it ends.
    const path = join(dir, 'inline-chain.bin');
    const block = 64 << 10;
    writeFileSync(path, Buffer.alloc(4 << 20, 1));
    readFileSync(path); // page-cached: every read completes inside the io_uring_enter that submits it
    const fd = openSync(path, 'r');
    const b = createBackend();
    let stop = false;
    try {
      const buf = new Uint8Array(block);
      let waiter: ((r: number | Error) => void) | null = null;
      let reads = 0;
      b.onReady(() => {
        while (b.drain((_h, r) => waiter?.(r)) > 0);
      });
      const read = (off: number): Promise<number | Error> =>
        new Promise((resolve) => {
          waiter = resolve;
          b.submit({ op: 'read', fd, buffer: buf, offset: off, len: block });
          b.flush();
        });
      let turns = 0;
      let maxPerTurn = 0;
      let atLastTurn = 0;
      const onTurn = (): void => {
        maxPerTurn = Math.max(maxPerTurn, reads - atLastTurn);
        atLastTurn = reads;
        turns++;
        if (!stop) setImmediate(onTurn);
      };
      setImmediate(onTurn);
      let timerAt = -1;
      const total = 3000;
      while (reads < total) {
        if (reads === 100) setTimeout(() => (timerAt = reads), 1);
        expect(await read((reads % 64) * block)).toBe(block);
        reads++;
      }
      stop = true;
      await new Promise((r) => setImmediate(r));
      expect(maxPerTurn).toBeGreaterThan(1); // the rounds do run: several reads per wake-up
      expect(maxPerTurn).toBeLessThanOrEqual(64);
      expect(turns).toBeGreaterThanOrEqual(total / 64);
      expect(timerAt).toBeGreaterThanOrEqual(100); // it fired, and before the chain ended
      expect(timerAt).toBeLessThan(total);
    } finally {
      stop = true;
      b.close();
      closeSync(fd);
    }
  });

  it('a request that completes inline after a ready call that found nothing is still delivered (the quiet eventfd is made up for)', async () => {
    // While onReady's rounds run, the ring posts CQEs without signalling its eventfd (the rounds
    // reap them). A round that hands over nothing ends the rounds; a NOP submitted in that round
    // completes inline, unsignalled, and only the Wake() the addon owes it brings it to JS.
    const b = createBackend();
    try {
      const got: unknown[] = [];
      let calls = 0;
      let second: unknown;
      b.onReady(() => {
        calls++;
        if (calls === 1) {
          second = b.submit({ op: 'nop' });
          b.flush();
        }
        while (b.drain((h) => got.push(h)) > 0);
      });
      const first = b.submit({ op: 'nop' });
      b.flush(); // completes inline and signals the eventfd (no quiet period outside onReady)...
      expect(b.poll(0).map((c) => c.handle)).toEqual([first]); // ...but is taken here: the ready call finds nothing
      await eventually(() => got.length > 0, 2000);
      expect(got).toEqual([second]);
      expect(calls).toBeGreaterThanOrEqual(2);
    } finally {
      b.close();
    }
  });

  it('a chain of inline completions leaves no empty ready call behind', async () => {
    // Each inline completion used to signal the eventfd although the rounds had already reaped
    // it, so the loop came back once more for nothing.
    const b = createBackend();
    try {
      let empty = 0;
      let done = 0;
      b.onReady(() => {
        let n = 0;
        let k: number;
        while ((k = b.drain(() => void done++)) > 0) n += k;
        if (n === 0) empty++;
        if (n > 0 && done < 200) {
          b.submit({ op: 'nop' });
          b.flush();
        }
      });
      b.submit({ op: 'nop' });
      b.flush();
      await eventually(() => done >= 200, 2000);
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 20));
      expect(done).toBe(200);
      expect(empty).toBe(0);
    } finally {
      b.close();
    }
  });
});
