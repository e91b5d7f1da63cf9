// The per-operation fast paths of the epoll backend (issue 8): recycled operation slots with
// generation-checked ids, the addon's backing-store cache, the poll(0) that does not cross into
// native code twice, and recv/accept that skip the EAGAIN system call when the socket's receive
// queue is known to be empty.
import { spawn, spawnSync } from 'node:child_process';
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { createBackend, isSupported, type EpollBackend } from '@miniss/backend-epoll';
import { Driver, connect, eventually, listen, recvExactly, sendAll, withTimeout } from '@miniss/backend-testkit';
import { perTestBackend } from '@miniss/backend-testkit/suites';

const support = isSupported();
if (!support.ok) console.warn(`epoll hot-path tests skipped: ${support.reason}`);

describe.runIf(support.ok)('epoll backend: per-operation fast paths', () => {
  let b: EpollBackend;
  let d: Driver;
  const toClose = perTestBackend(createBackend, (nb, nd) => {
    b = nb;
    d = nd;
  });

  it('recycles operation slots under new ids; a finished id is stale for cancel()', async () => {
    const seen = new Set<number>();
    let last = -1;
    for (let i = 0; i < 50; i++) {
      const { id, done } = d.submit({ op: 'nop' });
      expect(Number.isInteger(id)).toBe(true);
      expect(id).toBeGreaterThan(0);
      expect(id).toBeLessThan(2 ** 30); // a small integer for V8
      expect(seen.has(id)).toBe(false); // the slot is reused, the id is not
      seen.add(id);
      await done;
      expect(b.cancel(id)).toBe(false); // finished: stale
      last = id;
    }
    expect(b.inFlight).toBe(0);
    expect(b.cancel(last)).toBe(false);
    for (const bogus of [-1, 0, 1.5, Number.NaN, 2 ** 31, 2 ** 53, Infinity]) expect(b.cancel(bogus)).toBe(false);
  });

  it('keeps thousands of operations in flight with distinct ids, each completing once', async () => {
    const N = 5000;
    const subs = Array.from({ length: N }, () => d.submit({ op: 'timeout', ms: 1 }));
    expect(new Set(subs.map((s) => s.id)).size).toBe(N);
    expect(b.inFlight).toBe(N);
    // Cancel every other one: the cancelled complete with ECANCELED, the rest with 0.
    let cancelled = 0;
    for (let i = 0; i < N; i += 2) if (b.cancel(subs[i]!.id)) cancelled++;
    expect(cancelled).toBe(N / 2);
    const results = await withTimeout(Promise.allSettled(subs.map((s) => s.done)), 5000, 'timeouts');
    results.forEach((r, i) => {
      if (i % 2 === 0) expect(r).toMatchObject({ status: 'rejected', reason: { code: 'ECANCELED' } });
      else expect(r).toEqual({ status: 'fulfilled', value: 0 });
    });
    for (const s of subs) expect(d.completions.get(s.id)).toBe(1);
    expect(b.inFlight).toBe(0);
  });

  it('poll(0) loops see completions that arrive after an empty poll', async () => {
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    toClose.push(l.fd, c, s);
    // Drive this backend by hand for a moment: no onReady, poll(0) in a loop.
    b.onReady(null);
    const buf = new Uint8Array(8);
    const id = b.submit({ op: 'recv', fd: s, buffer: buf, len: 8 });
    b.flush();
    expect(b.poll(0)).toEqual([]);
    expect(b.poll(0)).toEqual([]);
    const sent = b.submit({ op: 'send', fd: c, buffer: new TextEncoder().encode('late'), len: 4 });
    b.flush();
    const got = new Map<number, number>();
    await eventually(() => {
      for (const x of b.poll(0)) got.set(x.handle, x.result as number);
      return got.has(id) && got.has(sent);
    });
    expect(got.get(id)).toBe(4);
    expect(new TextDecoder().decode(buf.subarray(0, 4))).toBe('late');
    b.onReady(() => d.reap());
  });

  it('a wake-up that finds nothing to reap does not hide the completions of the next one', async () => {
    const l = await listen(d);
    // s: accepted from a Node client, so its data arrives without any flush of this backend.
    const acc = d.io({ op: 'accept', fd: l.fd });
    const sock = net.connect(l.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const s = await acc;
    const acc2 = d.io({ op: 'accept', fd: l.fd });
    const c2 = await connect(d, l.port);
    const s2 = await acc2;
    toClose.push(l.fd, s, c2, s2);
    const buf = new Uint8Array(16);
    const pending = d.io({ op: 'recv', fd: s, buffer: buf, len: 16 });
    await new Promise((r) => setImmediate(r)); // flushed: waiting for data
    // A send that completes inside flush schedules a wake-up; take its completion by hand first,
    // so the wake-up's poll finds nothing.
    const id = b.submit({ op: 'send', fd: c2, buffer: new Uint8Array([1]), len: 1 });
    b.flush();
    const taken = [...b.poll(0), ...b.poll(0)];
    expect(taken.map((c) => c.handle)).toContain(id);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    // Now data arrives from outside: the next wake-up must deliver the recv.
    sock.write('hello');
    expect(await withTimeout(pending, 2000, 'recv after an empty wake-up')).toBe(5);
    sock.destroy();
  });

  it('a request/response exchange pays no EAGAIN recv, and every byte still arrives', async () => {
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    toClose.push(l.fd, c, s);
    const before = b.stats();
    const req = new Uint8Array(100);
    const res = new Uint8Array(300);
    const rbuf = new Uint8Array(4096);
    const ROUNDS = 200;
    for (let i = 0; i < ROUNDS; i++) {
      req.fill(i & 0xff);
      res.fill((i + 1) & 0xff);
      // The server's recv is in flight before the request is sent, as in a keep-alive server.
      const got = d.io({ op: 'recv', fd: s, buffer: rbuf, len: rbuf.length });
      await sendAll(d, c, req);
      const n = await withTimeout(got, 2000, `recv of round ${i}`);
      expect(n).toBe(100);
      expect(rbuf[0]).toBe(i & 0xff);
      expect(rbuf[99]).toBe(i & 0xff);
      await sendAll(d, s, res);
      const back = await withTimeout(recvExactly(d, c, 300), 2000, `response of round ${i}`);
      expect(back[299]).toBe((i + 1) & 0xff);
    }
    const after = b.stats();
    // After a short read the socket's queue is known to be empty: the next recv waits for the
    // edge without a system call. Nearly every server recv of the loop is such a recv.
    expect(after.skipped - before.skipped).toBeGreaterThan(ROUNDS / 2);
  });

  it('after a short read, end of stream and shut read sides still read 0 at once', async () => {
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    toClose.push(l.fd, s);
    const buf = new Uint8Array(64);
    // Short read (the queue is empty afterwards), then the peer closes: recv sees 0.
    const first = d.io({ op: 'recv', fd: s, buffer: buf, len: 64 });
    await sendAll(d, c, new Uint8Array([1, 2, 3]));
    expect(await withTimeout(first, 2000, 'first recv')).toBe(3);
    await d.io({ op: 'close', fd: c });
    expect(await withTimeout(d.io({ op: 'recv', fd: s, buffer: buf, len: 64 }), 2000, 'recv at EOF')).toBe(0);
    expect(await withTimeout(d.io({ op: 'recv', fd: s, buffer: buf, len: 64 }), 2000, 'second recv at EOF')).toBe(0);

    // Short read, then this side shuts its read side: the next recv is 0, not a wait.
    const acc2 = d.io({ op: 'accept', fd: l.fd });
    const c2 = await connect(d, l.port);
    const s2 = await acc2;
    toClose.push(c2, s2);
    const r1 = d.io({ op: 'recv', fd: s2, buffer: buf, len: 64 });
    await sendAll(d, c2, new Uint8Array([9]));
    expect(await withTimeout(r1, 2000, 'recv')).toBe(1);
    await d.io({ op: 'shutdown', fd: s2, how: 0 });
    expect(await withTimeout(d.io({ op: 'recv', fd: s2, buffer: buf, len: 64 }), 2000, 'recv after SHUT_RD')).toBe(0);
  });

  it('a peer that writes while nothing is waiting is read by the next recv', async () => {
    // Node's net client, so the writes happen outside this backend's control.
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const sock = net.connect(l.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const s = await acc;
    toClose.push(l.fd, s);
    const buf = new Uint8Array(1024);
    for (let i = 0; i < 20; i++) {
      // A short read leaves the fd marked "queue empty"; the next bytes arrive with no recv in
      // flight, so only the readiness edge says they are there.
      const p = d.io({ op: 'recv', fd: s, buffer: buf, len: buf.length });
      await new Promise((r) => setImmediate(r)); // flushed: EAGAIN, the fd joins the epoll set
      sock.write(Buffer.from([i, i]));
      expect(await withTimeout(p, 2000, `recv ${i}`)).toBe(2);
      // The short read marked the socket empty and the last try got EAGAIN: this recv waits for
      // the edge without a system call (mostly: 1 in 8 is tried anyway).
      const q = d.io({ op: 'recv', fd: s, buffer: buf, len: buf.length });
      await new Promise((r) => setImmediate(r));
      sock.write(Buffer.from([i + 50]));
      expect(await withTimeout(q, 2000, `queued recv ${i}`)).toBe(1);
      expect(buf[0]).toBe(i + 50);
      sock.write(Buffer.from([i + 100]));
      await new Promise((r) => setTimeout(r, 2)); // arrives while nothing waits
      expect(await withTimeout(d.io({ op: 'recv', fd: s, buffer: buf, len: buf.length }), 2000, `late recv ${i}`)).toBe(1);
      expect(buf[0]).toBe(i + 100);
    }
    expect(b.stats().skipped).toBeGreaterThan(0);
    sock.destroy();
  });

  // TCP stops a read at the urgent mark, so a short read does not always mean "queue empty".
  const python = spawnSync('python3', ['-c', 'import socket'], { stdio: 'ignore' }).status === 0;
  it.runIf(python)('urgent (out-of-band) data does not stall the bytes queued behind it', async () => {
    const l = await listen(d);
    toClose.push(l.fd);
    const acc = d.io({ op: 'accept', fd: l.fd });
    // A peer that sends "hi", then "abc" + urgent "X" + "def", then waits 3 s before closing.
    const peer = spawn(
      'python3',
      [
        '-c',
        `import socket, sys, time
s = socket.create_connection(('127.0.0.1', ${l.port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sys.stdin.readline(); s.send(b'hi')
sys.stdin.readline(); s.send(b'abc'); s.send(b'X', socket.MSG_OOB); s.send(b'def')
time.sleep(3); s.close()`,
      ],
      { stdio: ['pipe', 'ignore', 'inherit'] },
    );
    try {
      const s = await withTimeout(acc, 3000, 'accept');
      toClose.push(s);
      const buf = new Uint8Array(64);
      const first = d.io({ op: 'recv', fd: s, buffer: buf, len: 64 });
      await new Promise((r) => setTimeout(r, 20)); // the recv waits: the fd joins the epoll set
      peer.stdin!.write('\n');
      expect(await withTimeout(first, 3000, 'first recv')).toBe(2); // short: the queue is empty
      peer.stdin!.write('\n');
      await new Promise((r) => setTimeout(r, 100)); // everything has arrived, nothing waits
      const t0 = performance.now();
      let text = '';
      while (text.length < 6) {
        const n = await withTimeout(d.io({ op: 'recv', fd: s, buffer: buf, len: 64 }), 5000, 'recv');
        if (n === 0) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      expect(text).toBe('abcdef'); // the urgent byte is not inline
      expect(performance.now() - t0).toBeLessThan(1500); // not only when the peer closes at 3 s
    } finally {
      const exited = new Promise((r) => peer.once('exit', r));
      peer.stdin!.destroy();
      peer.kill();
      await withTimeout(exited, 3000, 'peer exit');
    }
  });

  it('sends the same buffer many times (cached backing store) and refuses it once detached', async () => {
    const l = await listen(d);
    const acc = d.io({ op: 'accept', fd: l.fd });
    const c = await connect(d, l.port);
    const s = await acc;
    toClose.push(l.fd, c, s);
    const msg = new Uint8Array(256).map((_, i) => i);
    const total = 256 * 100;
    const reading = recvExactly(d, s, total);
    for (let i = 0; i < 100; i++) await sendAll(d, c, msg);
    const got = await withTimeout(reading, 5000, 'recv of 100 sends');
    for (let i = 0; i < total; i += 997) expect(got[i]).toBe(i % 256);
    // The ArrayBuffer is now in the addon's cache; detached before the flush, it must be refused
    // (not written from the memory the cache still pins).
    const p = d.io({ op: 'send', fd: c, buffer: msg, len: msg.length });
    structuredClone(msg.buffer, { transfer: [msg.buffer] });
    await expect(p).rejects.toMatchObject({ code: 'EFAULT' });
    // A new buffer at possibly the same address is a different ArrayBuffer: it works.
    const msg2 = new Uint8Array(256).fill(7);
    const r2 = recvExactly(d, s, 256);
    await sendAll(d, c, msg2);
    expect((await withTimeout(r2, 2000, 'recv'))[255]).toBe(7);
  });
});
