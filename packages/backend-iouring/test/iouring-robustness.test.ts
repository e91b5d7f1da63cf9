// Regressions of the io_uring backend's robustness: memory the kernel reads stays where the SQE
// says it is while the native slot table grows, rings too small for two linked SQEs, collection
// of a backend dropped without close(), addresses (IPv6 zones, IPv4 on IPv6 sockets, NUL bytes),
// fds of completions kept in JS at close(), operations changed after submit, huge timeouts, the
// backend's own fds, buffers shrunk between submit and flush, fields that throw at poll/cancel.
import { spawnSync } from 'node:child_process';
import { closeSync, constants, existsSync, fstatSync, mkdtempSync, openSync, readSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { IoOperation } from '@miniss/core';
import { createBackend, isSupported, type IoUringBackend, type IoUringConnectOperation } from '@miniss/backend-iouring';
import type { NativeIoUringAddon } from '../src/native.js';
import { openFdCount } from './helpers.js';

const support = isSupported();
const pkgEntry = new URL('../dist/index.js', import.meta.url).href;

// Directly under /tmp, so that `${dir}/a` fits the inline buffer of a short std::string (15
// characters in libstdc++): the case where the path lives inside the native slot itself.
let dir = '';
beforeAll(() => {
  dir = mkdtempSync('/tmp/m');
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Flushes and polls (blocking, 5 ms at a time) until every id in `ids` completed or `ms` passed: id -> result, or error code. */
function settle(b: IoUringBackend, ids: number[], ms = 1500): Map<number, number | string> {
  b.flush();
  const out = new Map<number, number | string>();
  const want = new Set(ids);
  const end = Date.now() + ms;
  while (out.size < want.size && Date.now() < end) {
    for (const c of b.poll(5)) {
      if (want.has(c.handle)) out.set(c.handle, c.result instanceof Error ? ((c.result as { code?: string }).code ?? c.result.message) : c.result);
    }
  }
  return out;
}

/** Runs one operation to its completion. */
function run(b: IoUringBackend, op: IoOperation): number | string | undefined {
  const id = b.submit(op);
  return settle(b, [id]).get(id);
}

/** A temp file with 4 KiB of data (the target of the readvs below), open for reading. */
function dataFd(): number {
  const path = `${dir}/data.bin`;
  writeFileSync(path, Buffer.alloc(4096, 1));
  return openSync(path, 'r');
}

/** Two readvs of 16 tiny buffers each: their iovec arrays (16 x 16 bytes) are the allocations the
 * freed slot table used to be recycled into before io_uring_enter read it. */
function readvs(fd: number, len: number): IoOperation[] {
  const bufs = (): Uint8Array[] => Array.from({ length: 16 }, () => new Uint8Array(len));
  return [
    { op: 'readv', fd, buffers: bufs(), offset: 0 },
    { op: 'readv', fd, buffers: bufs(), offset: 0 },
  ];
}

describe.runIf(support.ok)('io_uring backend robustness', () => {
  let fdsBefore = 0;
  beforeEach(() => {
    fdsBefore = openFdCount();
  });
  afterEach(() => {
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('opens of short paths in one batch on a fresh backend each open their own file (the slot table grows under them)', () => {
    const names = 'abcdefghij'.split('');
    const paths = names.map((c) => {
      writeFileSync(`${dir}/${c}`, c);
      return `${dir}/${c}`;
    });
    expect(paths[0]!.length).toBeLessThanOrEqual(15);
    const b = createBackend();
    try {
      // One batch: slots 0..9 are made in it, so the native table grows 1 -> 2 -> 4 -> 8 -> 16
      // after the earlier opens' SQEs already point at their paths.
      const ids = paths.map((path) => b.submit({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 }));
      const r = settle(b, ids);
      const got = ids.map((id) => r.get(id));
      const fds = got.filter((x): x is number => typeof x === 'number');
      const contents = fds.map((fd) => {
        const buf = Buffer.alloc(1);
        readSync(fd, buf, 0, 1, 0);
        closeSync(fd);
        return buf.toString();
      });
      expect(got.map((x) => typeof x)).toEqual(names.map(() => 'number'));
      expect(contents).toEqual(names);
    } finally {
      b.close();
    }
  });

  it('a timeout sent in one batch with operations that grow the slot table fires after its own time', () => {
    const fd = dataFd();
    try {
      // (1) Two readvs after the timeout: before the fix the slot table moved, its old storage
      // was freed, and an iovec array landed on the timer's timespec (7-byte buffers made it a
      // 7 s timer). (2) Two opens of long paths after it: the same with a path's heap buffer.
      const long = (c: string): string => `${dir}/${c.repeat(240)}/x`;
      const variants: Array<(b: IoUringBackend) => void> = [
        (b) => {
          for (const op of readvs(fd, 7)) b.submit(op);
        },
        (b) => {
          for (const c of ['a', 'b']) b.submit({ op: 'open', path: long(c), flags: constants.O_RDONLY, mode: 0 });
        },
      ];
      for (const more of variants) {
        const b = createBackend();
        try {
          const t0 = Date.now();
          const t = b.submit({ op: 'timeout', ms: 150 });
          more(b);
          const r = settle(b, [t], 1500);
          expect(r.get(t)).toBe(0);
          const took = Date.now() - t0;
          expect(took).toBeGreaterThanOrEqual(140);
          expect(took).toBeLessThan(1000);
        } finally {
          b.close();
        }
      }
    } finally {
      closeSync(fd);
    }
  });

  it('a connect sent in one batch with operations that grow the slot table connects to its own address', () => {
    const fd = dataFd();
    const setup = createBackend();
    const fds: number[] = [fd];
    try {
      const lfd = run(setup, { op: 'socket', family: 4 }) as number;
      fds.push(lfd);
      expect(run(setup, { op: 'listen', fd: lfd, addr: { host: '127.0.0.1', port: 0 }, backlog: 16, reusePort: false })).toBe(0);
      const port = setup.address(lfd, 'local').port;
      for (const withTimeout of [false, true]) {
        const sock = run(setup, { op: 'socket', family: 4 }) as number;
        fds.push(sock);
        const b = createBackend();
        try {
          const op = { op: 'connect', fd: sock, addr: { host: '127.0.0.1', port }, ...(withTimeout ? { timeoutMs: 5000 } : {}) } as IoUringConnectOperation;
          const c = b.submit(op as IoOperation);
          for (const r of readvs(fd, 3)) b.submit(r);
          // Before the fix: EAFNOSUPPORT (an iovec array over the sockaddr's family).
          expect(settle(b, [c]).get(c)).toBe(0);
        } finally {
          b.close();
        }
      }
    } finally {
      setup.close();
      for (const x of fds) closeSync(x);
    }
  });

  it('entries must be 2 or more (a close takes two linked SQEs); a 2-entry ring runs closes and connects with timeouts', () => {
    for (const entries of [0, 1, 1.5, 32769, '8']) {
      expect(() => createBackend({ entries: entries as number })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/entries must be an integer between 2 and 32768/) }),
      );
    }
    const b = createBackend({ entries: 2 });
    const setup = createBackend();
    try {
      const lfd = run(setup, { op: 'socket', family: 4 }) as number;
      run(setup, { op: 'listen', fd: lfd, addr: { host: '127.0.0.1', port: 0 }, backlog: 16, reusePort: false });
      const port = setup.address(lfd, 'local').port;
      const sock = run(setup, { op: 'socket', family: 4 }) as number;
      const file = openSync(`${dir}/data.bin`, 'w');
      const ids = [
        b.submit({ op: 'close', fd: file }),
        b.submit({ op: 'nop' }),
        b.submit({ op: 'connect', fd: sock, addr: { host: '127.0.0.1', port }, timeoutMs: 5000 } as IoUringConnectOperation as IoOperation),
        b.submit({ op: 'close', fd: lfd }),
      ];
      const r = settle(b, ids);
      expect(ids.map((id) => r.get(id))).toEqual([0, 0, 0, 0]);
      expect(run(b, { op: 'close', fd: sock })).toBe(0);
      expect(b.inFlight).toBe(0);
    } finally {
      b.close();
      setup.close();
    }
  });

  it('the addon fails an operation that needs more SQEs than its ring has with EINVAL (1-entry ring), and goes on', () => {
    const require = createRequire(import.meta.url);
    const build = ['Release', 'Debug'].map((d) => fileURLToPath(new URL(`../build/${d}/miniss_iouring.node`, import.meta.url))).find((p) => existsSync(p));
    const addon = require(build!) as NativeIoUringAddon;
    const sqCap = 4;
    const cqCap = 8;
    const sq = new ArrayBuffer(sqCap * (8 * 4 + 3 * 8));
    const cq = new ArrayBuffer(cqCap * 3 * 8);
    const I = new Int32Array(sq, 0, sqCap * 8);
    const F = new Float64Array(sq, sqCap * 8 * 4, sqCap * 3);
    const C = new Float64Array(cq);
    const nb = new addon.IoUringBackend(sq, cq, sqCap, cqCap, 1, 0, false, 50, () => {});
    const fd = dataFd();
    try {
      expect(nb.stats()[6]).toBe(1); // sq entries
      // Descriptor 0: close(fd) (a cancel hard-linked to the close: two SQEs); 1: a NOP.
      const CLOSE = 8;
      const NOP = 0;
      const ids = [2 ** 20 + 0, 2 ** 20 + 1];
      I.fill(0);
      I.set([CLOSE, fd, 0, 0, 0, -1, 0, 0], 0);
      I.set([NOP, -1, 0, 0, 0, -1, 0, 0], 8);
      F.set([ids[0]!, -1, 0, ids[1]!, -1, 0], 0);
      // Before the fix the close never fit: nothing was taken, ever (the loop spun on it).
      expect(nb.flush(2, false, null)).toBe(2);
      const got = new Map<number, number>();
      const end = Date.now() + 1000;
      while (got.size < 2 && Date.now() < end) {
        const n = nb.reap(10, false);
        for (let i = 0; i < n; i++) got.set(C[i * 3]!, C[i * 3 + 1]!);
      }
      expect(got.get(ids[0]!)).toBe(-osConstants.errno.EINVAL);
      expect(got.get(ids[1]!)).toBe(0);
      expect(nb.inFlight()).toBe(0);
    } finally {
      nb.close();
      closeSync(fd); // the close was refused, so the fd is still ours
    }
  });

  it('a backend dropped without close() is collected and its ring fd and eventfd are closed, but never while operations are in flight (child with --expose-gc)', () => {
    const r = spawnSync(
      process.execPath,
      [
        '--expose-gc',
        '--input-type=module',
        '-e',
        `import { createBackend } from '${pkgEntry}';
         import { readdirSync } from 'node:fs';
         const fds = () => readdirSync('/proc/self/fd').length;
         const before = fds();
         const refs = [];
         let ready = 0;
         // Each backend's ready callback runs once (its consumer drains a NOP), then it is dropped.
         (() => { for (let i = 0; i < 20; i++) { const b = createBackend(); b.onReady(() => { ready++; while (b.drain(() => {}) > 0); }); refs.push(new WeakRef(b)); b.submit({ op: 'nop' }); b.flush(); } })();
         const made = fds() - before;
         while (ready < 20) await new Promise((r) => setTimeout(r, 5));
         // (No deref() in between: it would keep its target alive to the end of the job.)
         for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
         const idle = { made, left: fds() - before, collected: refs.filter((x) => x.deref() === undefined).length };
         // Busy: a 150 ms timeout whose consumer is reachable only through the backend itself.
         let guard;
         const busy = await new Promise((resolve) => {
           (() => { const b = createBackend(); b.onReady(() => { for (const c of b.poll(0)) { b.close(); resolve(c.result === 0 ? 'completed' : String(c.result)); } }); b.submit({ op: 'timeout', ms: 150 }); b.flush(); })();
           for (const ms of [10, 50, 100]) setTimeout(() => globalThis.gc(), ms);
           guard = setTimeout(() => resolve('lost'), 1000);
         });
         clearTimeout(guard);
         console.log(JSON.stringify({ ...idle, busy }));`,
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ made: 40, left: 0, collected: 20, busy: 'completed' });
  });

  it('addresses as the other backends parse them: IPv4 on an IPv6 socket (v4-mapped), a numeric IPv6 zone; a host with a NUL byte is EINVAL', () => {
    const b = createBackend();
    const fds: number[] = [];
    const sock = (family: 4 | 6): number => {
      const fd = run(b, { op: 'socket', family }) as number;
      fds.push(fd);
      return fd;
    };
    try {
      // A dual-stack listener bound to 0.0.0.0 through an IPv6 socket, reached over IPv4 from an IPv6 socket.
      const l6 = sock(6);
      expect(run(b, { op: 'listen', fd: l6, addr: { host: '0.0.0.0', port: 0 }, backlog: 16, reusePort: false })).toBe(0);
      const port = b.address(l6, 'local').port;
      expect(b.address(l6, 'local').host).toBe('::ffff:0.0.0.0');
      expect(run(b, { op: 'connect', fd: sock(6), addr: { host: '127.0.0.1', port } })).toBe(0);
      // NUL: inet_pton stops at it, so the host used to be cut there and connected.
      expect(run(b, { op: 'connect', fd: sock(4), addr: { host: '127.0.0.1\0.evil', port } })).toBe('EINVAL');
      expect(run(b, { op: 'listen', fd: sock(4), addr: { host: '127.0.0.1\0', port: 0 }, backlog: 1, reusePort: false })).toBe('EINVAL');
      // A zone index on the IPv6 loopback (the kernel needs none there, but it must parse).
      const l = sock(6);
      if (run(b, { op: 'listen', fd: l, addr: { host: '::1', port: 0 }, backlog: 16, reusePort: false }) === 0) {
        const p = b.address(l, 'local').port;
        expect(run(b, { op: 'connect', fd: sock(6), addr: { host: '::1%1', port: p } })).toBe(0);
        expect(run(b, { op: 'connect', fd: sock(6), addr: { host: '[::1]', port: p } })).toBe(0);
        expect(run(b, { op: 'connect', fd: sock(6), addr: { host: '::1%x', port: p } })).toBe('EINVAL');
      }
      // An IPv6 host on an IPv4 socket cannot be mapped.
      expect(run(b, { op: 'connect', fd: sock(4), addr: { host: '::1', port } })).toBe('EINVAL');
    } finally {
      b.close();
      for (const fd of fds) closeSync(fd);
    }
  });

  describe('completions kept in JS at close()', () => {
    const opens = (b: IoUringBackend, n: number): number[] => {
      writeFileSync(`${dir}/kept`, 'x');
      const ids = Array.from({ length: n }, () => b.submit({ op: 'open', path: `${dir}/kept`, flags: constants.O_RDONLY, mode: 0 }));
      ids.push(b.submit({ op: 'socket', family: 4 }));
      return ids;
    };
    const waitFor = async (check: () => boolean): Promise<void> => {
      const end = Date.now() + 1000;
      while (!check() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    };

    it('a consumer that took nothing: they still count in inFlight, and close() closes their fds', async () => {
      const b = createBackend();
      let calls = 0;
      b.onReady(() => void calls++);
      const ids = opens(b, 4);
      b.flush();
      await waitFor(() => calls > 0 && b.stats().inFlight === 0);
      expect(calls).toBeGreaterThan(0);
      // Reaped for the ready call, kept in JS: not returned by poll yet, so still in flight.
      expect(b.inFlight).toBe(ids.length);
      expect(openFdCount()).toBe(fdsBefore + 2 + ids.length); // the ring, its eventfd, the results
      b.close();
    });

    it('a sink that throws, then close() in the same ready call: the rest of the fds are closed', async () => {
      const b = createBackend();
      const handed: number[] = [];
      let closed = false;
      b.onReady(() => {
        try {
          b.drain((_h, r) => {
            handed.push(r as number);
            throw new Error('sink');
          });
        } catch {
          b.close();
          closed = true;
        }
      });
      const ids = opens(b, 4);
      b.flush();
      await waitFor(() => closed);
      expect(closed).toBe(true);
      expect(handed.length).toBe(1);
      expect(b.inFlight).toBe(0);
      expect(ids.length).toBe(5);
      closeSync(handed[0]!); // the one the sink was given is the caller's
    });

    it('close() from inside a drain sink: the completions not handed over yet have their fds closed and reach no sink', async () => {
      for (const keepFirst of [false, true]) {
        const b = createBackend();
        const handed: number[] = [];
        let calls = 0;
        b.onReady(() => {
          calls++;
          // keepFirst: the first ready call leaves its completions (kept in JS); the second drains
          // them from there.
          if (keepFirst && calls === 1) return;
          b.drain((_h, r) => {
            handed.push(r as number);
            b.close();
          });
        });
        opens(b, 4);
        b.flush();
        await waitFor(() => handed.length > 0);
        await new Promise((r) => setTimeout(r, 10));
        expect(handed.length).toBe(1);
        closeSync(handed[0]!);
      }
    });
  });

  it('an operation changed after submit so that it no longer encodes fails alone with EINVAL; the backend keeps working', () => {
    const b = createBackend();
    const fd = dataFd();
    try {
      const op = { op: 'connect', fd: 0, addr: { host: '127.0.0.1', port: 9 } } as { op: 'connect'; fd: number; addr?: { host: string; port: number } };
      const bad = b.submit(op as IoOperation);
      const read = { op: 'read', fd: 0, buffer: new Uint8Array(8) as Uint8Array | undefined, offset: 0, len: 8 };
      const bad2 = b.submit(read as IoOperation);
      const ok = b.submit({ op: 'nop' });
      op.addr = undefined; // the caller reused its object
      read.buffer = undefined;
      expect(() => b.flush()).not.toThrow();
      const r = settle(b, [bad, bad2, ok]);
      expect([r.get(bad), r.get(bad2), r.get(ok)]).toEqual(['EINVAL', 'EINVAL', 0]);
      expect(b.inFlight).toBe(0);
      expect(b.cancel(bad)).toBe(false);
      // Later batches go through as usual (the queue was not wedged).
      expect(run(b, { op: 'nop' })).toBe(0);
      expect(b.drain(() => {})).toBe(0);
      // A position changed to one past the largest file offset is refused, never converted.
      const pos = { op: 'read', fd, buffer: new Uint8Array(8), offset: 0, len: 8 };
      const p = b.submit(pos as IoOperation);
      pos.offset = 2 ** 64;
      expect(settle(b, [p]).get(p)).toBe('EINVAL');
    } finally {
      b.close();
      closeSync(fd);
    }
  });

  it('a readv/writev buffer detached between submit and flush fails the operation with EFAULT (it was skipped as 0 bytes)', () => {
    const b = createBackend();
    const path = `${dir}/vectored.bin`;
    writeFileSync(path, 'zzzzzzzzzzzz');
    const fd = openSync(path, 'r+');
    try {
      const enc = (t: string): Uint8Array => new TextEncoder().encode(t);
      const mid = enc('BBBB');
      const w = b.submit({ op: 'writev', fd, buffers: [enc('AAAA'), mid, enc('CCCC')], offset: 0 });
      structuredClone(mid.buffer, { transfer: [mid.buffer as ArrayBuffer] });
      const gone = new Uint8Array(4);
      const r = b.submit({ op: 'readv', fd, buffers: [new Uint8Array(4), gone], offset: 0 });
      structuredClone(gone.buffer, { transfer: [gone.buffer as ArrayBuffer] });
      const got = settle(b, [w, r]);
      expect([got.get(w), got.get(r)]).toEqual(['EFAULT', 'EFAULT']);
      const check = Buffer.alloc(12);
      readSync(fd, check, 0, 12, 0);
      expect(check.toString('latin1')).toBe('zzzzzzzzzzzz');
      // Untouched buffers, zero-length ones included, still work.
      expect(run(b, { op: 'writev', fd, buffers: [enc('AB'), new Uint8Array(0), enc('CD')], offset: 0 })).toBe(4);
    } finally {
      b.close();
      closeSync(fd);
    }
  });

  describe("the backend's own fds", () => {
    it('a close, read or write of its registered eventfd or ring fd fails with EBADF, and the loop keeps running (child: closing the eventfd aborted the process in libuv)', () => {
      const r = spawnSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { createBackend } from '${pkgEntry}';
           import { readdirSync, readlinkSync } from 'node:fs';
           const kinds = () => new Map(readdirSync('/proc/self/fd').map((f) => { try { return [Number(f), readlinkSync('/proc/self/fd/' + f)]; } catch { return [Number(f), '']; } }));
           const before = kinds();
           const b = createBackend();
           const own = [...kinds()].filter(([fd, k]) => before.get(fd) !== k && /eventfd|io_uring/.test(k)).map(([fd]) => fd);
           const results = new Map();
           const ids = [];
           for (const fd of own) {
             for (const op of [{ op: 'close', fd }, { op: 'read', fd, buffer: new Uint8Array(8), len: 8, offset: -1 }, { op: 'write', fd, buffer: new Uint8Array(8).fill(1), len: 8, offset: -1 }]) {
               const id = b.submit(op);
               ids.push(id);
               results.set(id, op.op);
             }
           }
           const out = [];
           b.onReady(() => { for (const c of b.poll(0)) if (results.has(c.handle)) out.push(results.get(c.handle) + ' ' + (c.result instanceof Error ? c.result.code : c.result)); });
           b.flush();
           // The loop must still run the ring (the uv_poll_t on the eventfd) afterwards.
           const t = b.submit({ op: 'timeout', ms: 20 });
           const fired = await new Promise((resolve) => {
             b.onReady(() => { for (const c of b.poll(0)) { if (c.handle === t) resolve(c.result); else if (results.has(c.handle)) out.push(results.get(c.handle) + ' ' + (c.result instanceof Error ? c.result.code : c.result)); } });
             b.flush();
           });
           await new Promise((r) => setTimeout(r, 20));
           b.close();
           console.log(JSON.stringify({ own: own.length, out: out.sort(), fired }));`,
        ],
        { encoding: 'utf8', timeout: 20_000 },
      );
      expect(r.status, r.stderr).toBe(0);
      const got = JSON.parse(r.stdout.trim().split('\n').pop()!) as { own: number; out: string[]; fired: number };
      expect(got.own).toBe(2); // the ring fd and its eventfd
      expect(got).toEqual({ own: 2, out: ['close EBADF', 'close EBADF', 'read EBADF', 'read EBADF', 'write EBADF', 'write EBADF'], fired: 0 });
    });

    it('an eventfd() closed by a close operation is not closed again by close() (its number may be a file opened since)', () => {
      const b = createBackend();
      let app = -1;
      try {
        const efd = b.eventfd();
        expect(run(b, { op: 'close', fd: efd })).toBe(0);
        app = openSync(`${dir}/reused`, 'w');
        expect(app).toBe(efd); // the lowest free number: the test means something
      } finally {
        b.close();
      }
      // Still the application's file (close() used to close it as the eventfd).
      expect(fstatSync(app).isFile()).toBe(true);
      closeSync(app);
    });
  });

  it('a readv/writev buffer shrunk (resizable ArrayBuffer) between submit and flush fails the operation with EFAULT; no data lands in the wrong buffer', () => {
    type Resizable = ArrayBuffer & { resize(n: number): void };
    const resizable = (n: number, max: number): Resizable =>
      new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => Resizable)(n, { maxByteLength: max });
    const b = createBackend();
    const path = `${dir}/shrunk.bin`;
    writeFileSync(path, 'AAAABBBBCCCCDDDD');
    const fd = openSync(path, 'r+');
    try {
      // A length-tracking view shrunk 8 -> 3 bytes: the readv used to read 3 bytes into it and the
      // next 4 ('ABBB') into the second buffer.
      const rab1 = resizable(8, 64);
      const tracking = new Uint8Array(rab1);
      const second1 = new Uint8Array(4);
      const r1 = b.submit({ op: 'readv', fd, buffers: [tracking, second1], offset: 0 });
      rab1.resize(3);
      // A fixed view [4, 8) left out of bounds by a shrink to 2 bytes (0 bytes long now).
      const rab2 = resizable(8, 64);
      const fixed = new Uint8Array(rab2, 4, 4);
      const second2 = new Uint8Array(4);
      const r2 = b.submit({ op: 'readv', fd, buffers: [fixed, second2], offset: 0 });
      rab2.resize(2);
      // A writev from a shrunk buffer: the file must stay as it is.
      const rab3 = resizable(4, 64);
      new Uint8Array(rab3).set([0x78, 0x78, 0x78, 0x78]);
      const w = b.submit({ op: 'writev', fd, buffers: [new Uint8Array(rab3), new TextEncoder().encode('yyyy')], offset: 0 });
      rab3.resize(1);
      const got = settle(b, [r1, r2, w]);
      expect([got.get(r1), got.get(r2), got.get(w)]).toEqual(['EFAULT', 'EFAULT', 'EFAULT']);
      expect([...second1, ...second2]).toEqual(new Array(8).fill(0));
      const check = Buffer.alloc(16);
      readSync(fd, check, 0, 16, 0);
      expect(check.toString('latin1')).toBe('AAAABBBBCCCCDDDD');
      // A buffer that grew, or kept its length, still works.
      const rab4 = resizable(2, 64);
      const grown = new Uint8Array(rab4);
      const r4 = b.submit({ op: 'readv', fd, buffers: [grown, new Uint8Array(2)], offset: 0 });
      rab4.resize(4);
      expect(settle(b, [r4]).get(r4)).toBe(6);
      expect(Buffer.from(grown).toString('latin1')).toBe('AAAA');
    } finally {
      b.close();
      closeSync(fd);
    }
  });

  describe('an operation whose fields throw after submit (getters) loses no completion', () => {
    it('poll(): the completions reaped with it are all handed out, its own too (a plain errno error when its error cannot be built)', () => {
      const b = createBackend();
      const fd = dataFd();
      try {
        let armed = false;
        const buf = new Uint8Array(8);
        const trap = <T>(v: T) => (): T => {
          if (armed) throw new Error('getter throws');
          return v;
        };
        const ids = [b.submit({ op: 'nop' })];
        // Succeeds: its buffer getter throws when poll builds its completion.
        ids.push(b.submit(Object.defineProperty({ op: 'read', fd, len: 8, offset: 0 }, 'buffer', { get: trap(buf) }) as IoOperation));
        ids.push(b.submit({ op: 'nop' }));
        // Fails (EBADF): its fd getter throws when poll builds the error.
        ids.push(b.submit(Object.defineProperty({ op: 'read', buffer: new Uint8Array(8), len: 8, offset: 0 }, 'fd', { get: trap(987654) }) as IoOperation));
        ids.push(b.submit({ op: 'nop' }));
        b.flush();
        armed = true;
        const seen = new Map<number, number | string>();
        const end = Date.now() + 2000;
        while (seen.size < ids.length && Date.now() < end) {
          for (const c of b.poll(5)) {
            seen.set(c.handle, c.result instanceof Error ? `${(c.result as { code?: string }).code} ${(c.result as { syscall?: string }).syscall}` : c.result);
          }
        }
        expect(ids.map((id) => seen.get(id))).toEqual([0, 8, 0, 'EBADF read', 0]);
        expect(b.inFlight).toBe(0);
      } finally {
        b.close();
        closeSync(fd);
      }
    });

    it('cancel() of a queued operation: it completes with ECANCELED, the rest of the queue goes on', () => {
      const b = createBackend();
      try {
        let armed = false;
        const op = { op: 'read', buffer: new Uint8Array(8), len: 8, offset: 0 } as Record<string, unknown>;
        Object.defineProperty(op, 'fd', {
          get: () => {
            if (armed) throw new Error('getter throws');
            return 0;
          },
        });
        const a = b.submit({ op: 'nop' });
        const victim = b.submit(op as unknown as IoOperation);
        const c = b.submit({ op: 'nop' });
        armed = true;
        expect(b.cancel(victim)).toBe(true);
        const got = settle(b, [a, victim, c]);
        expect([got.get(a), got.get(victim), got.get(c)]).toEqual([0, 'ECANCELED', 0]);
        expect(b.inFlight).toBe(0);
      } finally {
        b.close();
      }
    });
  });

  it('a timeout too large for a timespec (1e22 ms, Number.MAX_VALUE) stays pending instead of failing with EINVAL', () => {
    const b = createBackend();
    try {
      const ids = [1e22, Number.MAX_VALUE, 9e21].map((ms) => b.submit({ op: 'timeout', ms }));
      const early = settle(b, ids, 150);
      expect(early.size).toBe(0);
      for (const id of ids) expect(b.cancel(id)).toBe(true);
      const r = settle(b, ids);
      expect(ids.map((id) => r.get(id))).toEqual(['ECANCELED', 'ECANCELED', 'ECANCELED']);
    } finally {
      b.close();
    }
  });
});
