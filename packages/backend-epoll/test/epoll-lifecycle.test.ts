import { spawnSync } from 'node:child_process';
import { constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { IoError } from '@miniss/core';
import { createBackend, isSupported, type EpollBackend } from '@miniss/backend-epoll';
import { Driver, connect, eventually, listen, openFdCount } from './helpers.js';

const support = isSupported();
if (!support.ok) console.warn(`epoll lifecycle tests skipped: ${support.reason}`);

const pkgEntry = new URL('../dist/index.js', import.meta.url).href;

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'miniss-epoll-life-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Waits for a worker to end by itself, then terminates it. Node 20 sometimes takes seconds to end
 * a worker that used dynamic import() (seen with a one-line ESM file and no miniss code at all),
 * which made these tests hit vitest's 30 s timeout now and then.
 */
async function exitOrTerminate(w: Worker): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const exited = await Promise.race([
    new Promise<boolean>((r) => w.once('exit', () => r(true))),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), 2000);
    }),
  ]);
  clearTimeout(timer);
  if (!exited) await w.terminate();
}

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

describe.runIf(support.ok)('epoll backend: cancellation, close, timers, workers', () => {
  let b: EpollBackend;
  let d: Driver;
  let fdsBefore = 0;
  beforeEach(() => {
    fdsBefore = openFdCount();
    b = createBackend();
    d = new Driver(b);
  });
  afterEach(() => {
    b.close();
    expect(b.inFlight).toBe(0);
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('has the IoBackend shape', () => {
    expect(b.name).toBe('epoll');
    expect(b.features).toEqual({ directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false });
    expect(b.maxBatchSize).toBe(128);
    expect(typeof b.eventfd).toBe('function');
    expect(typeof b.signalFd).toBe('function');
    expect(typeof b.setAffinity).toBe('function');
    expect(() => createBackend({ entries: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
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

  it('cancels a pending accept and a pending recv exactly once; cancel after completion is false', async () => {
    const l = await listen(d);
    const acc = d.submit({ op: 'accept', fd: l.fd });
    await new Promise((r) => setTimeout(r, 10));
    expect(b.cancel(acc.id)).toBe(true);
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
    const efd = b.eventfd();
    expect(efd).toBeGreaterThan(2);
    // The backend's own fds and the eventfd it owns go away with it; the sockets and the file
    // are the caller's and are closed with close ops first.
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
    const raw = createBackend(); // no onReady, never polled
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

  it('eventfd + signalFd: a pending 8-byte read wakes when another thread signals', async () => {
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
    // The listener is the main thread's (fds are per process); the workers accept on it.
    const l = await listen(d);
    const before = openFdCount();
    for (let i = 0; i < 4; i++) {
      const w = new Worker(
        `const { parentPort, workerData } = require('node:worker_threads');
         import('${pkgEntry}').then((m) => {
           const b = m.createBackend();
           // Never reaped: every completion below is the backend's to clean up.
           b.submit({ op: 'accept', fd: workerData.listenFd });
           b.submit({ op: 'accept', fd: workerData.listenFd });
           b.submit({ op: 'timeout', ms: 60000 });
           b.submit({ op: 'open', path: workerData.path, flags: workerData.flags, mode: 0o600 });
           b.submit({ op: 'socket', family: 4 });
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
      expect(inFlight).toBe(6);
      // One accept completes (unreaped) while the other still waits.
      const c = await connect(d, l.port);
      await new Promise((r) => setTimeout(r, 20));
      await w.terminate();
      await d.io({ op: 'close', fd: c });
    }
    // The accepted sockets, the opened files, the new sockets, the eventfds and the epoll,
    // event and timer fds of the workers' backends: all gone.
    await eventually(() => openFdCount() === before);
    await d.io({ op: 'close', fd: l.fd });
  });

  it('holds the event loop only while operations are in flight', () => {
    const script = (body: string): { status: number | null; ms: number; stderr: string } => {
      const t0 = Date.now();
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', `import { createBackend } from '${pkgEntry}';\n${body}`], {
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
