// The socket tests every readiness-model backend (epoll, kqueue) must pass, over a backend factory.
// Each backend's test/<name>-sockets.test.ts calls socketSuite() with its own case; test names carry
// the backend's name (the describe title) so `vitest -t kqueue` still selects them.
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { IoError, type IoBackend } from '@miniss/core';
import { Driver, connect, listen, recvExactly, sendAll } from './index.js';
import { perTestBackend } from './per-test.js';

/** A readiness-model backend: an IoBackend whose stats() count the operations that had to wait. */
export type ReadinessBackend = IoBackend & { stats(): { waited: number } };

/** One readiness-model backend under test. */
export interface ReadinessBackendCase<B extends ReadinessBackend> {
  /** Backend name as it appears in test names: 'epoll', 'kqueue'. */
  name: string;
  createBackend(): B;
  isSupported(): { ok: boolean; reason?: string };
  /** What a send waits for when the socket buffer is full ('EPOLLOUT', 'EVFILT_WRITE'). */
  writeReadiness: string;
  /** What one fd registration is called ('epoll_ctl', 'kevent change'). */
  registration: string;
  /** The backend's count of fd registrations so far (epoll_ctl calls, kevent changes). */
  registrations(b: B): number;
  /** A descriptor that is not a socket, and how to release it once the test is done with it. */
  nonSocketFd(b: B, d: Driver): Promise<{ fd: number; release(): Promise<void> }>;
}

export function socketSuite<B extends ReadinessBackend>(k: ReadinessBackendCase<B>): void {
  const support = k.isSupported();
  if (!support.ok) console.warn(`${k.name} socket tests skipped: ${support.reason}`);

  describe.runIf(support.ok)(`${k.name} backend: sockets (readiness model)`, () => {
    let b: B;
    let d: Driver;
    const toClose = perTestBackend(() => k.createBackend(), (nb, nd) => {
      b = nb;
      d = nd;
    });

    it('listens, connects, accepts, and reports local and peer addresses', async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      expect(l.port).toBeGreaterThan(0);
      expect(b.address(l.fd, 'local')).toEqual({ host: '127.0.0.1', port: l.port, family: 4 });
      const acc = d.io({ op: 'accept', fd: l.fd });
      const c = await connect(d, l.port);
      const s = await acc;
      toClose.push(c, s);
      expect(b.address(c, 'peer')).toEqual({ host: '127.0.0.1', port: l.port, family: 4 });
      expect(b.address(s, 'peer').port).toBe(b.address(c, 'local').port);
      expect(() => b.address(l.fd, 'peer')).toThrow(expect.objectContaining({ code: 'ENOTCONN', syscall: 'getpeername' }));
      expect(() => b.address(99999, 'local')).toThrow(expect.objectContaining({ code: 'EBADF' }));
      // IPv6 loopback, and an IPv4 address on a dual-stack IPv6 socket.
      const fd6 = await d.io({ op: 'socket', family: 6 });
      toClose.push(fd6);
      await d.io({ op: 'listen', fd: fd6, addr: { host: '::1', port: 0 }, backlog: 8, reusePort: false });
      expect(b.address(fd6, 'local')).toMatchObject({ host: '::1', family: 6 });
    });

    it('interoperates with node:net in both directions', async () => {
      const server = net.createServer((sock) => sock.pipe(sock));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      try {
        const c = await connect(d, port);
        const msg = Buffer.from('ping through node:net');
        await sendAll(d, c, msg);
        expect(Buffer.from(await recvExactly(d, c, msg.length)).toString()).toBe(msg.toString());
        await d.io({ op: 'close', fd: c }); // server.close() waits for its connections to end
      } finally {
        await new Promise((r) => server.close(r));
      }
      const l = await listen(d);
      toClose.push(l.fd);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const sock = net.connect(l.port, '127.0.0.1');
      const s = await acc;
      toClose.push(s);
      sock.write('hello from node');
      expect(Buffer.from(await recvExactly(d, s, 15)).toString()).toBe('hello from node');
      sock.destroy();
    });

    it('keeps a recv and a send pending on one socket at once, and several accepts on one listener', async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      const accepts = [0, 1, 2].map(() => d.io({ op: 'accept', fd: l.fd }));
      await new Promise((r) => setTimeout(r, 20));
      expect(b.stats().waited).toBeGreaterThanOrEqual(1);
      const clients = await Promise.all([0, 1, 2].map(() => connect(d, l.port)));
      const servers = await Promise.all(accepts);
      toClose.push(...clients, ...servers);
      expect(new Set(servers).size).toBe(3);
      // A recv waits on the client while a big send fills the server's socket buffer; the client
      // has a recv and (later) a send pending at the same time.
      const [c] = clients;
      const [s] = servers;
      const pendingRecv = d.io({ op: 'recv', fd: c!, buffer: new Uint8Array(16), len: 16 });
      const sent = d.io({ op: 'send', fd: c!, buffer: Buffer.from('from-client'), len: 11 });
      expect(await sent).toBe(11);
      expect(Buffer.from(await recvExactly(d, s!, 11)).toString()).toBe('from-client');
      await sendAll(d, s!, Buffer.from('reply'));
      expect(await pendingRecv).toBe(5);
    });

    it(`sends much more than the socket buffer holds: sends wait for ${k.writeReadiness} while the peer reads`, async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const c = await connect(d, l.port);
      const s = await acc;
      toClose.push(c, s);
      const big = Buffer.alloc(16 * 1024 * 1024);
      for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
      const sending = sendAll(d, s, big);
      const got = await recvExactly(d, c, big.length);
      await sending;
      expect(Buffer.from(got).equals(big)).toBe(true);
      expect(b.stats().waited).toBeGreaterThan(0);
    });

    it('half-close: shutdown of the write side delivers EOF after the data; the other direction still works', async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const c = await connect(d, l.port);
      const s = await acc;
      toClose.push(c, s);
      await sendAll(d, c, Buffer.from('last words'));
      expect(await d.io({ op: 'shutdown', fd: c, how: 1 })).toBe(0);
      expect(Buffer.from(await recvExactly(d, s, 10)).toString()).toBe('last words');
      expect(await d.io({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 })).toBe(0); // EOF
      // The server can still talk to the half-closed client.
      await sendAll(d, s, Buffer.from('still here'));
      expect(Buffer.from(await recvExactly(d, c, 10)).toString()).toBe('still here');
      // Sending on the shut-down side is EPIPE (no SIGPIPE).
      const err = await d.error({ op: 'send', fd: c, buffer: Buffer.from('x'), len: 1 });
      expect(err.code).toBe('EPIPE');
      // A recv pending when the server shuts its side completes with EOF.
      const pending = d.io({ op: 'recv', fd: c, buffer: new Uint8Array(8), len: 8 });
      await new Promise((r) => setTimeout(r, 10));
      await d.io({ op: 'shutdown', fd: s, how: 2 });
      expect(await pending).toBe(0);
    });

    it('a peer that closes mid-send gives EPIPE/ECONNRESET as coded errors, never SIGPIPE', async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const c = await connect(d, l.port);
      const s = await acc;
      toClose.push(s);
      // The client sends unread data then closes: its kernel answers with RST.
      await sendAll(d, s, Buffer.alloc(1000));
      await d.io({ op: 'close', fd: c });
      const chunk = Buffer.alloc(256 * 1024);
      let err: (Error & { code?: string }) | undefined;
      for (let i = 0; i < 200 && err === undefined; i++) {
        try {
          await d.io({ op: 'send', fd: s, buffer: chunk, len: chunk.length });
        } catch (e) {
          err = e as Error & { code?: string };
        }
      }
      expect(err).toBeInstanceOf(IoError);
      expect(['EPIPE', 'ECONNRESET']).toContain(err!.code);
      expect((err as IoError).syscall).toBe('send');
      expect((err as IoError).fd).toBe(s);
    });

    it('a recv pending when the peer resets completes with ECONNRESET (or EOF)', async () => {
      const l = await listen(d);
      toClose.push(l.fd);
      const acc = d.io({ op: 'accept', fd: l.fd });
      const sock = net.connect(l.port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      const s = await acc;
      toClose.push(s);
      const pending = d.io({ op: 'recv', fd: s, buffer: new Uint8Array(8), len: 8 });
      await new Promise((r) => setTimeout(r, 10));
      sock.resetAndDestroy();
      const r = await pending.catch((e: { code?: string }) => e.code);
      expect([0, 'ECONNRESET']).toContain(r);
    });

    it('connect to a closed port is ECONNREFUSED; a port in use is EADDRINUSE unless reusePort', async () => {
      const l = await listen(d);
      const port = l.port;
      await d.io({ op: 'close', fd: l.fd });
      const fd = await d.io({ op: 'socket', family: 4 });
      toClose.push(fd);
      const err = await d.error({ op: 'connect', fd, addr: { host: '127.0.0.1', port } });
      expect(err.code).toBe('ECONNREFUSED');
      expect(err).toMatchObject({ syscall: 'connect', address: '127.0.0.1', port });

      const a = await listen(d);
      toClose.push(a.fd);
      const fd2 = await d.io({ op: 'socket', family: 4 });
      toClose.push(fd2);
      const e2 = await d.error({ op: 'listen', fd: fd2, addr: { host: '127.0.0.1', port: a.port }, backlog: 8, reusePort: false });
      expect(e2.code).toBe('EADDRINUSE');
      const r1 = await listen(d, { reusePort: true });
      const r2 = await listen(d, { reusePort: true, port: r1.port });
      toClose.push(r1.fd, r2.fd);
      expect(r2.port).toBe(r1.port);
      const fd3 = await d.io({ op: 'socket', family: 4 });
      toClose.push(fd3);
      const e3 = await d.error({ op: 'connect', fd: fd3, addr: { host: 'not-an-ip', port: 80 } });
      expect(e3.code).toBe('EINVAL');
    });

    it('EBADF for socket operations on closed or bogus fds, never a crash', async () => {
      const fd = await d.io({ op: 'socket', family: 4 });
      await d.io({ op: 'close', fd });
      // Right after the close, in one batch, so the number cannot have been reused meanwhile.
      const onClosed = await Promise.all(
        [
          { op: 'recv', fd, buffer: new Uint8Array(4), len: 4 },
          { op: 'send', fd, buffer: new Uint8Array(4), len: 4 },
          { op: 'accept', fd },
          { op: 'connect', fd, addr: { host: '127.0.0.1', port: 9 } },
          { op: 'shutdown', fd, how: 2 },
        ].map((op) => d.error(op as never)),
      );
      expect(onClosed.map((e) => e.code)).toEqual(['EBADF', 'EBADF', 'EBADF', 'EBADF', 'EBADF']);
      for (const bad of [-1, 123456]) {
        for (const op of [
          { op: 'recv', fd: bad, buffer: new Uint8Array(4), len: 4 },
          { op: 'send', fd: bad, buffer: new Uint8Array(4), len: 4 },
          { op: 'accept', fd: bad },
          { op: 'connect', fd: bad, addr: { host: '127.0.0.1', port: 9 } },
          { op: 'listen', fd: bad, addr: { host: '127.0.0.1', port: 0 }, backlog: 1, reusePort: false },
          { op: 'shutdown', fd: bad, how: 2 },
          { op: 'close', fd: bad },
        ] as const) {
          const err = await d.error(op);
          expect(err.code, `${op.op} on fd ${bad}`).toBe('EBADF');
        }
      }
      // A non-socket fd for a socket op: ENOTSOCK.
      const notSock = await k.nonSocketFd(b, d);
      const err = await d.error({ op: 'recv', fd: notSock.fd, buffer: new Uint8Array(1), len: 1 });
      expect(err.code).toBe('ENOTSOCK');
      await notSock.release();
    });

    it(`an EAGAIN storm: 300 idle connections with pending recvs cost one ${k.registration} each, and only the active one wakes`, async () => {
      const N = 300;
      const l = await listen(d, { backlog: 1024 });
      toClose.push(l.fd);
      const accepts = Array.from({ length: N }, () => d.io({ op: 'accept', fd: l.fd }));
      const clients = await Promise.all(Array.from({ length: N }, () => connect(d, l.port)));
      const servers = await Promise.all(accepts);
      toClose.push(...clients, ...servers);
      const ctlBefore = k.registrations(b);
      const recvs = servers.map((fd) => {
        const buf = new Uint8Array(4);
        return { buf, p: d.io({ op: 'recv', fd, buffer: buf, len: 4 }) };
      });
      await new Promise((r) => setTimeout(r, 20));
      const afterArm = k.registrations(b);
      // At most one registration per idle server socket (none for sockets already registered).
      expect(afterArm - ctlBefore).toBeLessThanOrEqual(N);
      // Wake a single connection many times: the others stay pending and cost nothing more.
      let settled = 0;
      recvs.forEach((r) => void r.p.then(
        () => settled++,
        () => undefined,
      ));
      await sendAll(d, clients[42]!, Buffer.from('ping'));
      expect(await recvs[42]!.p).toBe(4);
      expect(Buffer.from(recvs[42]!.buf).toString()).toBe('ping');
      for (let i = 0; i < 50; i++) {
        const buf = new Uint8Array(4);
        const p = d.io({ op: 'recv', fd: servers[42]!, buffer: buf, len: 4 });
        await sendAll(d, clients[42]!, Buffer.from('pong'));
        expect(await p).toBe(4);
      }
      await new Promise((r) => setTimeout(r, 10));
      expect(settled).toBe(1);
      expect(k.registrations(b) - afterArm).toBe(0); // no registration per operation
      // Close everything: the pending recvs are cancelled by the close ops.
      const closes = toClose.splice(0).map((fd) => d.io({ op: 'close', fd }));
      await Promise.all(closes);
      const outcomes = await Promise.all(recvs.map((r) => r.p.then(() => 'ok', (e: { code?: string }) => e.code)));
      expect(outcomes.filter((o) => o === 'ECANCELED').length).toBe(N - 1);
    });

    it('1,000 concurrent connections echo through one backend', async () => {
      const N = 1000;
      const l = await listen(d, { backlog: 2048 });
      toClose.push(l.fd);
      const echoed: Promise<void>[] = [];
      const serve = async (): Promise<void> => {
        const s = await d.io({ op: 'accept', fd: l.fd });
        const msg = await recvExactly(d, s, 64);
        await sendAll(d, s, msg);
        const eof = await d.io({ op: 'recv', fd: s, buffer: new Uint8Array(1), len: 1 });
        expect(eof).toBe(0);
        await d.io({ op: 'close', fd: s });
      };
      for (let i = 0; i < N; i++) echoed.push(serve());
      const client = async (i: number): Promise<void> => {
        const c = await connect(d, l.port);
        const msg = Buffer.alloc(64, i % 251);
        msg.writeUInt32LE(i, 0);
        await sendAll(d, c, msg);
        const back = await recvExactly(d, c, 64);
        expect(Buffer.from(back).equals(msg)).toBe(true);
        await d.io({ op: 'shutdown', fd: c, how: 1 });
        await d.io({ op: 'close', fd: c });
      };
      await Promise.all([...Array.from({ length: N }, (_, i) => client(i)), ...echoed]);
      expect(d.pending).toBe(0);
    }, 60_000);
  });
}
