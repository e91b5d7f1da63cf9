// The per-operation hot path: bounded ids, the allocation-free drain(), and the native
// pinned-buffer cache (a cached buffer stays pinned while in use; a detached one is refused).
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createBackend, isSupported, type IoUringBackend } from '@miniss/backend-iouring';
import { Driver, connect, listen, openFdCount, recvExactly, sendAll, writeIndexedPages } from './helpers.js';

const support = isSupported();

/** Submits `op`, flushes and blocks until poll returns its completion. */
function runSync(b: IoUringBackend, id: number): { handle: number; result: number | Error } {
  b.flush();
  for (let i = 0; i < 100; i++) {
    const cs = b.poll(1000);
    const c = cs.find((x) => x.handle === id);
    if (c !== undefined) return c;
  }
  throw new Error(`operation ${id} never completed`);
}

describe.runIf(support.ok)('io_uring backend hot path', () => {
  let b: IoUringBackend;
  let fdsBefore = 0;
  beforeEach(() => {
    fdsBefore = openFdCount();
    b = createBackend();
  });
  afterEach(() => {
    b.close();
    expect(openFdCount()).toBe(fdsBefore);
  });

  it('ids stay small integers (< 2^30) through generation wrap-around; a finished id is stale', () => {
    let prev = -1;
    const seen = new Set<number>();
    // One slot reused 2100 times: the generation (1..1023) wraps twice.
    for (let i = 0; i < 2100; i++) {
      const id = b.submit({ op: 'nop' });
      expect(id).toBeGreaterThan(0);
      expect(id).toBeLessThan(2 ** 30);
      expect(id | 0).toBe(id);
      expect(id).not.toBe(prev);
      if (prev >= 0) expect(b.cancel(prev)).toBe(false); // finished: stale, whatever its slot holds now
      const c = runSync(b, id);
      expect(c.result).toBe(0);
      seen.add(id);
      prev = id;
    }
    expect(seen.size).toBe(1023); // every generation of the slot, then the same ids again
    expect(b.inFlight).toBe(0);
    // Ids that were never handed out are unknown.
    for (const bogus of [0, 1, -5, 2 ** 30 + 3, 2 ** 40, 1.5, Number.NaN]) expect(b.cancel(bogus)).toBe(false);
  });

  it('drain() hands over the same completions as poll() would, without objects, and loses none when the sink throws', () => {
    const nops = Array.from({ length: 10 }, () => b.submit({ op: 'nop' }));
    const bad = b.submit({ op: 'read', fd: -1, buffer: new Uint8Array(8), offset: 0, len: 8 });
    const cancelled = b.submit({ op: 'nop' });
    expect(b.cancel(cancelled)).toBe(true); // never reaches the ring: completed in JS
    const got = new Map<number, number | Error>();
    const sink = (h: number, r: number | Error): void => {
      expect(got.has(h)).toBe(false);
      got.set(h, r);
    };
    for (let i = 0; i < 100 && got.size < 12; i++) {
      if (b.drain(sink) === 0) b.drain(sink, 100);
    }
    expect(got.size).toBe(12);
    for (const id of nops) expect(got.get(id)).toBe(0);
    expect(got.get(bad)).toMatchObject({ code: 'EBADF', syscall: 'read' });
    expect(got.get(cancelled)).toMatchObject({ code: 'ECANCELED' });
    expect(b.drain(sink)).toBe(0);
    expect(b.inFlight).toBe(0);

    // A sink that throws: the completions already taken from the ring come out of the next poll.
    const ids = Array.from({ length: 5 }, () => b.submit({ op: 'nop' }));
    b.flush(); // NOPs complete during the submit: all five are in the CQ ring
    let calls = 0;
    expect(() =>
      b.drain(() => {
        calls++;
        throw new Error('sink failed');
      }, 1000),
    ).toThrow('sink failed');
    expect(calls).toBe(1);
    const rest = new Set<number>();
    for (let i = 0; i < 100 && rest.size < 4; i++) for (const c of b.poll(rest.size === 0 ? 0 : 100)) rest.add(c.handle);
    expect(rest.size).toBe(4);
    for (const h of rest) expect(ids).toContain(h);
    expect(b.inFlight).toBe(0);
    // poll() and drain() called from inside a sink hand out nothing (the completion buffer is busy).
    const more = [b.submit({ op: 'nop' }), b.submit({ op: 'nop' })];
    b.flush();
    const inner: number[] = [];
    let outer = 0;
    for (let i = 0; i < 100 && outer < 2; i++) {
      b.drain(() => {
        outer++;
        inner.push(b.poll(0).length, b.drain(() => undefined));
      }, 100);
    }
    expect(outer).toBe(2);
    expect(inner).toEqual([0, 0, 0, 0]);
    expect(b.inFlight).toBe(0);
    void more;
  });

  it('a buffer reused by many operations (cached pin) carries the right bytes; detached after submit it is refused with EFAULT', async () => {
    const d = new Driver(b);
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    const out = new Uint8Array(64);
    const inBuf = new Uint8Array(64);
    for (let i = 0; i < 300; i++) {
      out.fill(i & 0xff);
      await sendAll(d, c, out);
      let got = 0;
      while (got < 64) {
        const n = await d.io({ op: 'recv', fd: s, buffer: inBuf.subarray(got), len: 64 - got });
        expect(n).toBeGreaterThan(0);
        got += n;
      }
      expect(inBuf.every((x) => x === (i & 0xff))).toBe(true);
    }
    // The cached buffer, detached (transferred) between submit and flush: refused, nothing written.
    const p = d.io({ op: 'send', fd: c, buffer: out, len: 64 });
    structuredClone(out.buffer, { transfer: [out.buffer] });
    await expect(p).rejects.toMatchObject({ code: 'EFAULT' });
    // Detached while a recv is in flight: the memory stays pinned and receives the bytes, which
    // the ArrayBuffer it was transferred to sees.
    const rv = d.submit({ op: 'recv', fd: s, buffer: inBuf, len: 64 });
    await new Promise((r) => setTimeout(r, 10));
    const moved = structuredClone(inBuf.buffer, { transfer: [inBuf.buffer] });
    expect(inBuf.byteLength).toBe(0);
    await sendAll(d, c, new TextEncoder().encode('pinned'));
    expect(await rv.done).toBe(6);
    expect(new TextDecoder().decode(new Uint8Array(moved, 0, 6))).toBe('pinned');
    // A fresh buffer with a recycled address is never confused with the dead one.
    for (let i = 0; i < 50; i++) {
      const fresh = new Uint8Array(16).fill(i);
      await sendAll(d, c, fresh);
      expect(Array.from(await recvExactly(d, s, 16))).toEqual(Array.from(fresh));
    }
    for (const fd of [c, s, l.fd]) await d.io({ op: 'close', fd });
  });

  it('a recv after one that emptied the socket completes at once when data is already queued; partial reads and EOF', async () => {
    const d = new Driver(b);
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    const buf = new Uint8Array(64);
    for (let i = 0; i < 20; i++) {
      // This recv empties the socket.
      await sendAll(d, c, new Uint8Array([1, 2, 3]));
      let got = 0;
      while (got < 3) got += await d.io({ op: 'recv', fd: s, buffer: buf.subarray(got), len: 64 - got });
      // Data arrives before the next recv is even submitted: it must not wait for more.
      await sendAll(d, c, new Uint8Array([9, 8, 7, 6, 5]));
      await new Promise((r) => setTimeout(r, 2));
      const t0 = Date.now();
      let n = 0;
      while (n < 5) n += await d.io({ op: 'recv', fd: s, buffer: buf.subarray(n), len: 64 - n });
      expect(Date.now() - t0).toBeLessThan(500);
      expect(Array.from(buf.subarray(0, 5))).toEqual([9, 8, 7, 6, 5]);
      // A partial read leaves data queued: the rest comes at once too.
      await sendAll(d, c, new Uint8Array(10).fill(4));
      await new Promise((r) => setTimeout(r, 2));
      expect(await d.io({ op: 'recv', fd: s, buffer: buf, len: 4 })).toBe(4);
      let rest = 0;
      while (rest < 6) rest += await d.io({ op: 'recv', fd: s, buffer: buf.subarray(rest), len: 64 - rest });
      expect(rest).toBe(6);
    }
    // EOF after an emptying recv: 0, not a hang.
    await d.io({ op: 'shutdown', fd: c, how: 1 });
    expect(await d.io({ op: 'recv', fd: s, buffer: buf, len: 64 })).toBe(0);
    for (const fd of [c, s, l.fd]) await d.io({ op: 'close', fd });
  });
});

// io_uring_enter names the ring by its index in the thread's registered ring fds
// (IORING_REGISTER_RING_FDS). The kernel keeps 16 such entries per thread: a backend gives its
// entry back at close, and one that finds no free entry enters through its fd.
describe.runIf(support.ok)('io_uring backend: registered ring fd', () => {
  const PAGE = 4096;
  let dir = '';
  let path = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'miniss-ringfd-'));
    path = join(dir, 'pages.bin');
    writeIndexedPages(path, 32);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Reads page `k` through `b` (blocking on poll) and checks it holds k. */
  function readPage(b: IoUringBackend, fd: number, k: number): void {
    const buf = new Uint8Array(PAGE);
    const id = b.submit({ op: 'read', fd, buffer: buf, offset: k * PAGE, len: PAGE });
    expect(runSync(b, id).result).toBe(PAGE);
    expect(buf.every((v) => v === k)).toBe(true);
  }

  it('40 backends opened and closed one after another in one thread each get an entry (close gives it back)', () => {
    const fd = openSync(path, 'r');
    const fdsBefore = openFdCount();
    try {
      for (let i = 0; i < 40; i++) {
        const b = createBackend();
        try {
          expect(b.stats().ringFdRegistered).toBe(true);
          readPage(b, fd, i % 32);
        } finally {
          b.close();
        }
      }
    } finally {
      closeSync(fd);
    }
    expect(openFdCount()).toBe(fdsBefore - 1);
  });

  it('more rings than entries: the rest enter through their fd, and every ring runs its own operations', () => {
    const fd = openSync(path, 'r');
    const rings: IoUringBackend[] = [];
    try {
      for (let i = 0; i < 20; i++) rings.push(createBackend());
      const registered = rings.filter((b) => b.stats().ringFdRegistered).length;
      expect(registered).toBeGreaterThan(0);
      expect(registered).toBeLessThanOrEqual(16);
      expect(rings.length - registered).toBeGreaterThanOrEqual(4);
      // Interleaved: every ring's read goes into its own SQ; entering the wrong ring would leave
      // it unsubmitted and runSync would time out.
      for (let round = 0; round < 3; round++) rings.forEach((b, i) => readPage(b, fd, (i + round) % 32));
    } finally {
      for (const b of rings) b.close();
      closeSync(fd);
    }
    // Every entry was given back: a new ring gets one again.
    const b = createBackend();
    try {
      expect(b.stats().ringFdRegistered).toBe(true);
    } finally {
      b.close();
    }
  });
});
