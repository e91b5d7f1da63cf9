// The readiness-model lifecycle suite (tools/backend-testkit/src/lifecycle.ts) on epoll, plus the
// epoll-only extras (eventfd, signalFd, setAffinity).
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createBackend, isSupported } from '@miniss/backend-epoll';
import { exitOrTerminate } from '@miniss/backend-testkit';
import { lifecycleSuite } from '@miniss/backend-testkit/suites';

const pkgEntry = new URL('../dist/index.js', import.meta.url).href;

describe('isSupported', () => {
  it('says why when unsupported, ok on Linux with the addon built', () => {
    const s = isSupported();
    if (process.platform === 'linux') {
      expect(s).toEqual({ ok: true });
    } else {
      expect(s.ok).toBe(false);
      expect(s.reason).toMatch(/Linux/);
    }
  });
});

lifecycleSuite({
  name: 'epoll',
  createBackend,
  isSupported,
  pkgEntry,
  features: { directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false },
  checkExtras: (b) => {
    expect(typeof b.eventfd).toBe('function');
    expect(typeof b.signalFd).toBe('function');
    expect(typeof b.setAffinity).toBe('function');
  },
  // An eventfd the backend owns: it goes away with the backend (the suite's fd count checks it).
  beforeCloseWithOpsInFlight: (b) => {
    expect(b.eventfd()).toBeGreaterThan(2);
  },
  workerReadFd: 'eventfd',
  extraTests: (ctx) => {
    // In a child process with --expose-gc. The addon holds the backend's event callback strongly;
    // when that callback held the backend, a backend dropped without close() was never collected
    // and kept its epoll fd, eventfd, timerfd and pool threads for the life of the process.
    it('a backend dropped without close() is garbage-collected, and its fds and pool threads go with it', () => {
      const script = `
        import { createBackend } from ${JSON.stringify(pkgEntry)};
        import { readdirSync, readFileSync } from 'node:fs';
        const fds = () => readdirSync('/proc/self/fd').length;
        const threads = () => Number(/Threads:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        let collected = 0;
        const registry = new FinalizationRegistry(() => collected++);
        const fdsBefore = fds();
        const threadsBefore = threads();
        for (let i = 0; i < 10; i++) {
          const b = createBackend();
          b.onReady(() => b.poll(0));
          // A pool job, so the backend has started its threads.
          await new Promise((resolve) => {
            b.onReady(() => { if (b.poll(0).length > 0) resolve(); });
            b.submit({ op: 'fsync', fd: 1 });
            b.flush();
          });
          registry.register(b, i);
        }
        const fdsHeld = fds() - fdsBefore;
        for (let k = 0; k < 20 && (collected < 10 || fds() !== fdsBefore); k++) {
          globalThis.gc();
          await sleep(10);
        }
        console.log(JSON.stringify({ collected, fdsHeld, fdsLeft: fds() - fdsBefore, threadsLeft: threads() - threadsBefore }));
      `;
      const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 10_000 });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { collected: number; fdsHeld: number; fdsLeft: number; threadsLeft: number };
      expect(out.fdsHeld).toBe(30); // 3 per backend while alive: the check below means something
      expect(out).toEqual({ collected: 10, fdsHeld: 30, fdsLeft: 0, threadsLeft: 0 });
    });

    // The other half of the rule above: a backend with operations in flight must stay alive
    // however it is referenced. The runtime's usual shape is a backend reachable only from its own
    // onReady callback (the consumers waiting on it hang off the backend); when the callback held
    // the backend through a WeakRef and the addon held only its uv handle, a garbage collection
    // took the backend with its operations, which never completed, and the process exited early.
    it('a backend with operations in flight survives garbage collection, and is collected once they complete', () => {
      const script = `
        import { createBackend } from ${JSON.stringify(pkgEntry)};
        const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        const t0 = Date.now();
        const done = [];
        let collected = 0;
        const registry = new FinalizationRegistry(() => collected++);
        (function start() {
          for (let i = 0; i < 3; i++) {
            const b = createBackend();
            const id = b.submit({ op: 'timeout', ms: 200 });
            b.onReady(() => { for (const c of b.poll(0)) if (c.handle === id) done.push({ result: c.result, at: Date.now() - t0 }); });
            b.flush();
            registry.register(b, i);
          }
        })();
        for (let k = 0; k < 5; k++) { globalThis.gc(); await sleep(10); }
        const collectedInFlight = collected;
        while (done.length < 3 && Date.now() - t0 < 5000) await sleep(20);
        // Idle now (and never closed): weak again, so collectable.
        for (let k = 0; k < 20 && collected < 3; k++) { globalThis.gc(); await sleep(10); }
        console.log(JSON.stringify({ collectedInFlight, done: done.map((d) => d.result), late: done.every((d) => d.at >= 190), collected }));
      `;
      const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 10_000 });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as unknown;
      expect(out).toEqual({ collectedInFlight: 0, done: [0, 0, 0], late: true, collected: 3 });
    });

    it('eventfd + signalFd: a pending 8-byte read wakes when another thread signals', async () => {
      const { b, d } = ctx();
      const efd = b.eventfd();
      const buf = new Uint8Array(8);
      const p = d.io({ op: 'read', fd: efd, buffer: buf, offset: -1, len: 8 });
      await new Promise((r) => setTimeout(r, 10));
      const w = new Worker(
        `import('${pkgEntry}').then((m) => { const b2 = m.createBackend(); b2.signalFd(${efd}); b2.close(); });`,
        { eval: true },
      );
      const failed = new Promise((_, reject) => w.once('error', reject));
      expect(await Promise.race([p, failed])).toBe(8);
      expect(new DataView(buf.buffer).getBigUint64(0, true)).toBe(1n);
      await exitOrTerminate(w);
      expect(() => b.signalFd(-1)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      await d.io({ op: 'close', fd: efd });
    });

    it('setAffinity pins the calling thread (in a worker), and rejects bad cpus', async () => {
      const { b } = ctx();
      const w = new Worker(
        `const { parentPort } = require('node:worker_threads');
         import('${pkgEntry}').then((m) => {
           const b = m.createBackend();
           try { b.setAffinity(0); parentPort.postMessage('ok'); } catch (e) { parentPort.postMessage(e.code); }
           b.close();
         });`,
        { eval: true },
      );
      const msg = await new Promise((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      });
      expect(msg).toBe('ok');
      await exitOrTerminate(w);
      expect(() => b.setAffinity(-1)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      expect(() => b.setAffinity(100_000)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    });
  },
});
