// The native thread pool of the readiness-model backends (epoll, kqueue) when its jobs misbehave:
// an open(2) of a FIFO with no writer never returns (close, worker.terminate and cancel must not
// wait for it, and it must not starve the pool), an open cancelled after the kernel made its fd
// (the fd must not leak), and pool writes racing a close of their fd (they must never land in a
// file opened afterwards). The fd checks read /proc/self/fd: the suite runs only where it exists
// (Linux; kqueue there on kqemu).
import { spawnSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IoBackend } from '@miniss/core';
import { Driver, eventually, withTimeout } from './index.js';
import { perTestBackend } from './per-test.js';

/** One backend with a thread pool under the pool suite. */
export interface PoolCase<B extends IoBackend> {
  /** Backend name as it appears in test names: 'epoll', 'kqueue'. */
  name: string;
  createBackend(options?: { poolThreads?: number }): B;
  isSupported(): { ok: boolean; reason?: string };
  /** URL of the package's built entry (the child processes and workers import it). */
  pkgEntry: string;
}

/** Descriptors of this process open on `path`. */
function fdsOn(path: string): string[] {
  return readdirSync('/proc/self/fd').filter((f) => {
    try {
      return readlinkSync(`/proc/self/fd/${f}`) === path;
    } catch {
      return false;
    }
  });
}

/** A FIFO nobody writes to: open(O_RDONLY) of it blocks until a writer comes. */
function makeFifo(dir: string, name: string): string {
  const path = join(dir, name);
  const r = spawnSync('mkfifo', [path]);
  if (r.status !== 0) throw new Error(`mkfifo ${path} failed: ${r.stderr}`);
  return path;
}

/**
 * Lets an open(O_RDONLY) blocked on `fifo` return: a non-blocking open for writing succeeds as
 * soon as a reader is waiting (ENXIO when none is). Closes the writer again at once.
 */
function releaseFifo(fifo: string): void {
  try {
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    // ENXIO: nobody is blocked on it
  }
}

export function poolSuite<B extends IoBackend>(k: PoolCase<B>): void {
  const support = k.isSupported();
  const haveProcFd = existsSync('/proc/self/fd');
  if (!support.ok) console.warn(`${k.name} pool tests skipped: ${support.reason}`);
  else if (!haveProcFd) console.warn(`${k.name} pool tests skipped: they read /proc/self/fd, which this system does not have`);
  const run = support.ok && haveProcFd;

  describe.runIf(run)(`${k.name} backend: thread pool jobs that never return`, () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), `miniss-${k.name}-pool-`));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    // In a child process: without the fix, close() and terminate() block their thread forever,
    // which would hang the test runner itself rather than fail one test.
    it('close() and worker.terminate() return while an open is stuck on a FIFO; the fd it gets later is closed', () => {
      const fifo = makeFifo(dir, 'stuck-close');
      const script = `
        import { createBackend } from ${JSON.stringify(k.pkgEntry)};
        import { Worker } from 'node:worker_threads';
        import { closeSync, constants, openSync, readdirSync, readlinkSync } from 'node:fs';
        const fifo = ${JSON.stringify(fifo)};
        const fdsOn = () => readdirSync('/proc/self/fd').filter((f) => { try { return readlinkSync('/proc/self/fd/' + f) === fifo; } catch { return false; } });
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        const b = createBackend({ poolThreads: 1 });
        b.onReady(() => b.poll(0));
        b.submit({ op: 'open', path: fifo, flags: constants.O_RDONLY, mode: 0 });
        b.flush();
        await sleep(50);
        let t0 = performance.now();
        b.close();
        const closeMs = performance.now() - t0;
        // The abandoned thread is still in open(2). A writer lets it return: it must close that fd.
        const w = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        for (let i = 0; i < 200 && fdsOn().length > 1; i++) await sleep(5);
        const leftOpen = fdsOn().length - 1;
        closeSync(w);
        const worker = new Worker(\`
          Promise.all([import(${JSON.stringify(k.pkgEntry)}), import('node:worker_threads')]).then(([m, wt]) => {
            const b = m.createBackend();
            b.onReady(() => b.poll(0));
            b.submit({ op: 'open', path: \${JSON.stringify(fifo)}, flags: 0, mode: 0 });
            b.flush();
            wt.parentPort.postMessage('submitted');
          });\`, { eval: true });
        await new Promise((r, j) => { worker.once('message', r); worker.once('error', j); });
        await sleep(50);
        t0 = performance.now();
        await worker.terminate();
        const terminateMs = performance.now() - t0;
        console.log(JSON.stringify({ closeMs, leftOpen, terminateMs }));
        process.exit(0); // the worker's abandoned thread is still in open(2): exit ends it
      `;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 10_000 });
      releaseFifo(fifo);
      expect(r.signal, `child killed (hung): ${r.stderr}`).toBeNull();
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { closeMs: number; leftOpen: number; terminateMs: number };
      expect(out.closeMs).toBeLessThan(500);
      expect(out.leftOpen).toBe(0);
      expect(out.terminateMs).toBeLessThan(2000);
    });

    describe('with a backend per test', () => {
      let b: B;
      let d: Driver;
      perTestBackend(
        () => k.createBackend({ poolThreads: 1 }),
        (nb, nd) => {
          b = nb;
          d = nd;
        },
      );

      it('cancelling an open stuck on a FIFO completes it with ECANCELED at once, and the pool keeps serving', async () => {
        const fifo = makeFifo(dir, 'stuck-cancel');
        try {
          const { id, done } = d.submit({ op: 'open', path: fifo, flags: constants.O_RDONLY, mode: 0 });
          await new Promise((r) => setTimeout(r, 30));
          expect(b.cancel(id)).toBe(true);
          await expect(withTimeout(done, 1000, 'cancelled open')).rejects.toMatchObject({ code: 'ECANCELED' });
          // The only pool thread is still inside that open(2): a replacement serves the next job.
          const file = join(dir, 'after-stuck.txt');
          writeFileSync(file, 'x');
          const fd = await withTimeout(d.io({ op: 'open', path: file, flags: constants.O_RDONLY, mode: 0 }), 2000, 'open after a stuck one');
          await d.io({ op: 'close', fd });
          // When the stuck open finally gets its fd, its (abandoned) thread closes it.
          releaseFifo(fifo);
          await eventually(() => fdsOn(fifo).length === 0);
        } finally {
          releaseFifo(fifo); // never leave a pool thread blocked (the old code would wait for it in close())
        }
      });

      it('an open cancelled after open(2) returned, before it was reaped, reports ECANCELED and its fd is closed', async () => {
        const file = join(dir, 'cancel-late.txt');
        writeFileSync(file, 'x');
        for (let i = 0; i < 10; i++) {
          const { id, done } = d.submit({ op: 'open', path: file, flags: constants.O_RDONLY, mode: 0 });
          b.flush(); // now, not in the driver's microtask
          // The pool thread finishes open(2) meanwhile; this thread has not drained it yet.
          const until = performance.now() + 20;
          while (performance.now() < until);
          expect(b.cancel(id)).toBe(true);
          await expect(withTimeout(done, 1000, 'late-cancelled open')).rejects.toMatchObject({ code: 'ECANCELED' });
        }
        expect(fdsOn(file)).toEqual([]);
      });
    });
  });

  describe.runIf(run)(`${k.name} backend: pool operations and close of their fd`, () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), `miniss-${k.name}-close-`));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    let b: B;
    let d: Driver;
    perTestBackend(
      () => k.createBackend({ poolThreads: 3 }),
      (nb, nd) => {
        b = nb;
        d = nd;
      },
    );

    // Regression: all run on the pool; a thread took a write off the queue and, before it entered
    // pwritev, others ran close(A) and open(B), which got A's number. Bounded stress: without the
    // ordering, about one iteration in six landed a write in B here (3 threads, 4 writes each).
    it('a write submitted before close(fd) never lands in a file opened right after the close', async () => {
      const A = join(dir, 'race-a.bin');
      const B = join(dir, 'race-b.bin');
      writeFileSync(A, '');
      const payload = new Uint8Array(64).fill(0x41);
      const end = Date.now() + 1000;
      let iterations = 0;
      while (Date.now() < end) {
        writeFileSync(B, '');
        const fa = await d.io({ op: 'open', path: A, flags: constants.O_RDWR, mode: 0o644 });
        // One batch: writes (pool), the close of their fd, an open that may reuse the number.
        const writes = [0, 1, 2, 3].map((k) => d.io({ op: 'write', fd: fa, buffer: payload, offset: k * 64, len: 64 }));
        const c = d.io({ op: 'close', fd: fa });
        const ob = d.io({ op: 'open', path: B, flags: constants.O_RDWR, mode: 0o644 });
        const [cr, fb, ...wr] = await Promise.all([c, ob, ...writes]);
        expect(wr).toEqual([64, 64, 64, 64]);
        expect(cr).toBe(0);
        const inB = readFileSync(B).length;
        await d.io({ op: 'close', fd: fb });
        if (inB !== 0) throw new Error(`iteration ${iterations}: the write to fd ${fa} (file A) landed in file B (fd ${fb})`);
        iterations++;
      }
      expect(iterations).toBeGreaterThan(100);
    });

    it('a close waits for the pool writes of its fd submitted before it: until then it can be cancelled, and new ops on the fd fail with EBADF', async () => {
      const path = join(dir, 'held.bin');
      writeFileSync(path, '');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR, mode: 0o644 });
      const buf = new Uint8Array(4).fill(0x41);
      const w = d.io({ op: 'write', fd, buffer: buf, offset: 0, len: 4 });
      const c = d.submit({ op: 'close', fd });
      b.flush();
      // Long enough for a pool thread to finish both if nothing held the close back. The write's
      // completion reaches this thread only once it runs its loop again, and the close waits for it.
      const until = performance.now() + 20;
      while (performance.now() < until);
      const late = d.error({ op: 'write', fd, buffer: buf, offset: 4, len: 4 });
      b.flush();
      expect(b.cancel(c.id)).toBe(true);
      await expect(c.done).rejects.toMatchObject({ code: 'ECANCELED' });
      expect((await late).code).toBe('EBADF');
      expect(await w).toBe(4);
      // The cancelled close never ran: the fd is still open and usable.
      expect(await d.io({ op: 'write', fd, buffer: buf, offset: 4, len: 4 })).toBe(4);
      expect(await d.io({ op: 'close', fd })).toBe(0);
      expect(readFileSync(path).toString()).toBe('AAAAAAAA');
    });
  });
}
