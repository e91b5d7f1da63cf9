// The lifecycle tests (cancellation, close, timers, workers) every native backend (epoll, kqueue,
// io_uring) must pass, over a backend factory. Test names carry the backend's name (describe title).
import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IoError, type IoBackend, type IoBackendFeatures } from '@miniss/core';
import { Driver, connect, eventually, listen, openFdCount } from './index.js';
import { perTestBackend } from './per-test.js';

/** One native backend under the lifecycle suite. */
export interface LifecycleCase<B extends IoBackend> {
  /** Backend name as it appears in test names and b.name: 'epoll', 'kqueue', 'io_uring'. */
  name: string;
  createBackend(options?: { entries?: number }): B;
  isSupported(): { ok: boolean; reason?: string };
  /** URL of the package's built entry (workers and child processes import it). */
  pkgEntry: string;
  features: IoBackendFeatures;
  /** Expectations on the backend-specific extras (epoll: eventfd/signalFd/setAffinity exist). */
  checkExtras(b: B): void;
  /** Called with operations in flight just before the caller closes its fds and then the backend. */
  beforeCloseWithOpsInFlight?(b: B): void;
  /** What the terminated workers keep a read waiting on: an eventfd of their backend, or a socket. */
  workerReadFd: 'eventfd' | 'socket';
  /** More tests inside the suite's describe (same per-test backend, driver and fd-leak check). */
  extraTests?(ctx: () => { b: B; d: Driver; dir: string }): void;
}

export function lifecycleSuite<B extends IoBackend>(k: LifecycleCase<B>): void {
  const support = k.isSupported();
  if (!support.ok) console.warn(`${k.name} lifecycle tests skipped: ${support.reason}`);

  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), `miniss-${k.name}-life-`));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe.runIf(support.ok)(`${k.name} backend: cancellation, close, timers, workers`, () => {
    let b: B;
    let d: Driver;
    perTestBackend(() => k.createBackend(), (nb, nd) => {
      b = nb;
      d = nd;
    });

    it('has the IoBackend shape', () => {
      expect(b.name).toBe(k.name);
      expect(b.features).toEqual(k.features);
      expect(b.maxBatchSize).toBe(128);
      k.checkExtras(b);
      expect(() => k.createBackend({ entries: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    });

    it('timeouts complete in deadline order, not before their time; a cancelled one is ECANCELED', async () => {
      const t0 = performance.now();
      const order: number[] = [];
      const a = d.io({ op: 'timeout', ms: 60 }).then(() => order.push(60));
      const c = d.submit({ op: 'timeout', ms: 40 });
      const e = d.io({ op: 'timeout', ms: 20 }).then(() => order.push(20));
      const z = d.io({ op: 'timeout', ms: 0 }).then(() => order.push(0));
      await new Promise((r) => setTimeout(r, 5));
      expect(b.cancel(c.id)).toBe(true);
      expect(b.cancel(c.id)).toBe(false);
      await expect(c.done).rejects.toMatchObject({ code: 'ECANCELED', syscall: 'timeout' });
      await Promise.all([a, e, z]);
      expect(order).toEqual([0, 20, 60]);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(59);
      expect(d.completions.get(c.id)).toBe(1);
    });

    it('a timeout in flight is not disturbed by a read of an fd number closed just before it', async () => {
      // A backend (or kqemu, the kqueue emulation) that takes a descriptor per timer could hand
      // out the number just closed; the read must still see a closed fd and the timer still fire.
      const closed = openSync(process.execPath, 'r');
      closeSync(closed);
      const t = d.io({ op: 'timeout', ms: 20 });
      await expect(d.io({ op: 'read', fd: closed, buffer: new Uint8Array(512), offset: -1, len: 512 })).rejects.toMatchObject({ code: 'EBADF' });
      await expect(t).resolves.toBe(0);
    });

    it('cancels a pending accept and a pending recv exactly once; cancel after completion is false', async () => {
      const l = await listen(d);
      const acc = d.submit({ op: 'accept', fd: l.fd });
      await new Promise((r) => setTimeout(r, 10));
      expect(b.cancel(acc.id)).toBe(true);
      expect(b.cancel(acc.id)).toBe(false); // already being cancelled
      const err = await acc.done.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IoError);
      expect(err).toMatchObject({ code: 'ECANCELED', syscall: 'accept', fd: l.fd });
      // The listener still works after a cancelled accept.
      const acc2 = d.io({ op: 'accept', fd: l.fd });
      const c = await connect(d, l.port);
      const s = await acc2;
      const rv = d.submit({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 });
      await new Promise((r) => setTimeout(r, 10));
      expect(b.cancel(rv.id)).toBe(true);
      await expect(rv.done).rejects.toMatchObject({ code: 'ECANCELED' });
      // Data sent after the cancel goes to the next recv, not to the cancelled one.
      await d.io({ op: 'send', fd: c, buffer: Buffer.from('abc'), len: 3 });
      const buf = new Uint8Array(8);
      expect(await d.io({ op: 'recv', fd: s, buffer: buf, len: 8 })).toBe(3);
      // Cancel before flush: never reaches the kernel.
      const early = d.submit({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 });
      expect(b.cancel(early.id)).toBe(true);
      await expect(early.done).rejects.toMatchObject({ code: 'ECANCELED' });
      // Cancel after completion, and of unknown ids.
      const n = d.submit({ op: 'nop' });
      await n.done;
      expect(b.cancel(n.id)).toBe(false);
      expect(b.cancel(123456789)).toBe(false);
      await new Promise((r) => setTimeout(r, 10));
      for (const id of [acc.id, rv.id, early.id, n.id]) expect(d.completions.get(id)).toBe(1);
      for (const fd of [c, s, l.fd]) await d.io({ op: 'close', fd });
    });

    it('a close op cancels operations still waiting on that socket', async () => {
      const l = await listen(d);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const acc2 = d.io({ op: 'accept', fd: l.fd });
      await new Promise((r) => setTimeout(r, 10));
      await d.io({ op: 'close', fd: l.fd });
      await expect(acc).rejects.toMatchObject({ code: 'ECANCELED' });
      await expect(acc2).rejects.toMatchObject({ code: 'ECANCELED' });
    });

    it('close() with operations in flight cancels them, closes every fd, and refuses new work', async () => {
      const l = await listen(d);
      const c = await connect(d, l.port);
      const s = await d.io({ op: 'accept', fd: l.fd });
      const path = join(dir, 'f.bin');
      writeFileSync(path, Buffer.alloc(4096, 1));
      const ffd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      d.submit({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 }).done.catch(() => 0);
      d.submit({ op: 'accept', fd: l.fd }).done.catch(() => 0);
      d.submit({ op: 'timeout', ms: 10_000 }).done.catch(() => 0);
      d.submit({ op: 'fsync', fd: ffd }).done.catch(() => 0);
      await new Promise((r) => setTimeout(r, 10));
      // Backend-owned fds beyond its own (epoll, io_uring: an eventfd) go away with it too.
      k.beforeCloseWithOpsInFlight?.(b);
      // The backend's own fds go away with it; the sockets and the file are the caller's and are
      // closed with close ops first.
      await Promise.all([c, s, l.fd, ffd].map((fd) => d.io({ op: 'close', fd })));
      b.close();
      b.close(); // idempotent
      expect(b.inFlight).toBe(0);
      expect(b.poll(0)).toEqual([]);
      expect(b.flush()).toBe(0);
      expect(b.cancel(1)).toBe(false);
      expect(() => b.submit({ op: 'nop' })).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    });

    it('close() closes the fds of finished opens/accepts/sockets that nobody reaped', async () => {
      const path = join(dir, 'unreaped.bin');
      writeFileSync(path, 'x');
      const before = openFdCount();
      const raw = k.createBackend(); // no onReady, never polled
      const l = await listen(d);
      raw.submit({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      raw.submit({ op: 'socket', family: 6 });
      raw.submit({ op: 'accept', fd: l.fd });
      raw.flush();
      const c = await connect(d, l.port);
      await new Promise((r) => setTimeout(r, 50)); // the pool's open and the accept have finished
      expect(raw.inFlight).toBe(3);
      raw.close();
      await d.io({ op: 'close', fd: c });
      await d.io({ op: 'close', fd: l.fd });
      expect(openFdCount()).toBe(before);
    });

    k.extraTests?.(() => ({ b, d, dir }));

    it('leaks no fd over many operations', async () => {
      const path = join(dir, 'many.bin');
      writeFileSync(path, Buffer.alloc(8192, 7));
      const l = await listen(d);
      const baseline = openFdCount();
      for (let round = 0; round < 200; round++) {
        const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
        const buf = new Uint8Array(8192);
        expect(await d.io({ op: 'read', fd, buffer: buf, offset: 0, len: 8192 })).toBe(8192);
        await d.io({ op: 'close', fd });
        const acc = d.io({ op: 'accept', fd: l.fd });
        const c = await connect(d, l.port);
        const s = await acc;
        await d.io({ op: 'send', fd: c, buffer: buf, len: 100 });
        expect(await d.io({ op: 'recv', fd: s, buffer: buf, len: 8192 })).toBe(100);
        await d.io({ op: 'close', fd: c });
        expect(await d.io({ op: 'recv', fd: s, buffer: buf, len: 8192 })).toBe(0);
        await d.io({ op: 'close', fd: s });
      }
      expect(openFdCount()).toBe(baseline);
      await d.io({ op: 'close', fd: l.fd });
    });

    it('worker.terminate() with operations in flight neither crashes nor leaks fds', async () => {
      // The listener is the main thread's (fds are per process); the workers accept on it, and
      // keep a read waiting: on an eventfd of their own backend (epoll, io_uring), or on a socket that never
      // gets data (kqueue: EVFILT_READ on a non-listener).
      const l = await listen(d);
      const pipe: number[] = [];
      if (k.workerReadFd === 'socket') {
        pipe.push(await connect(d, l.port));
        pipe.push(await d.io({ op: 'accept', fd: l.fd }));
      }
      const pipeFd = pipe[0];
      const before = openFdCount();
      for (let i = 0; i < 4; i++) {
        const w = new Worker(
          `const { parentPort, workerData } = require('node:worker_threads');
           import('${k.pkgEntry}').then((m) => {
             const b = m.createBackend();
             // Never reaped: every completion below is the backend's to clean up.
             b.submit({ op: 'accept', fd: workerData.listenFd });
             b.submit({ op: 'accept', fd: workerData.listenFd });
             b.submit({ op: 'timeout', ms: 60000 });
             b.submit({ op: 'open', path: workerData.path, flags: workerData.flags, mode: 0o600 });
             b.submit({ op: 'socket', family: 4 });
             const readFd = ${k.workerReadFd === 'eventfd' ? 'b.eventfd()' : 'workerData.pipeFd'};
             b.submit({ op: 'read', fd: readFd, buffer: new Uint8Array(8), offset: -1, len: 8 });
             b.flush();
             parentPort.postMessage(b.inFlight);
             setInterval(() => {}, 1000);
           }).catch((e) => { console.error(e); process.exit(1); });`,
          { eval: true, workerData: { listenFd: l.fd, pipeFd, path: join(dir, `w${i}`), flags: constants.O_CREAT | constants.O_RDWR } },
        );
        const inFlight = await new Promise((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
          w.once('exit', (code) => reject(new Error(`worker exited early with ${code}`)));
        });
        expect(inFlight).toBe(6);
        // One accept completes (unreaped) while the other still waits.
        const c = await connect(d, l.port);
        await new Promise((r) => setTimeout(r, 20));
        await w.terminate();
        await d.io({ op: 'close', fd: c });
      }
      // The accepted sockets, the opened files, the new sockets, any eventfds and the backend fds of
      // the workers' backends: all gone.
      await eventually(() => openFdCount() === before);
      await Promise.all([...pipe, l.fd].map((fd) => d.io({ op: 'close', fd })));
    });

    it('holds the event loop only while operations are in flight', () => {
      const script = (body: string): { status: number | null; ms: number; stderr: string } => {
        const t0 = Date.now();
        const r = spawnSync(process.execPath, ['--input-type=module', '-e', `import { createBackend } from '${k.pkgEntry}';\n${body}`], {
          encoding: 'utf8',
          timeout: 10_000,
        });
        return { status: r.status, ms: Date.now() - t0, stderr: r.stderr };
      };
      // Idle backend, never closed: the process exits at once.
      const idle = script(`const b = createBackend(); b.submit({ op: 'nop' }); b.flush(); b.onReady(() => b.poll(0));`);
      expect(idle.status, idle.stderr).toBe(0);
      // A 300 ms timeout in flight keeps the process alive until it completes.
      const busy = script(
        `const b = createBackend(); const t0 = Date.now();
         b.onReady(() => { if (b.poll(0).length) { console.log('done', Date.now() - t0); b.close(); } });
         b.submit({ op: 'timeout', ms: 300 }); b.flush();`,
      );
      expect(busy.status, busy.stderr).toBe(0);
      expect(busy.ms).toBeGreaterThanOrEqual(300);
    });
  });
}
