// An fd closed behind the backend's back (fs.closeSync) while operations wait on it, and its number
// handed out again by someone else (node:net, another backend): the waiting operations belong to
// the old file, never to the new one (see "Closed behind our back" in native/epoll.cc). Before,
// a recv on the new socket was queued behind the old socket's recv and waited forever, and when
// the old socket lived on in a child process, its events ran the old recv on the new socket.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync } from 'node:fs';
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { createBackend, isSupported, type EpollBackend } from '@miniss/backend-epoll';
import { Driver, connect, eventually, withTimeout } from '@miniss/backend-testkit';
import { perTestBackend } from '@miniss/backend-testkit/suites';

const support = isSupported();
if (!support.ok) console.warn(`epoll fd-reuse tests skipped: ${support.reason}`);

type NetHandle = { fd: number; readStop(): number };
const fdOf = (s: net.Socket): number => (s as unknown as { _handle: NetHandle })._handle.fd;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const text = (buf: Uint8Array, n: number): string => Buffer.from(buf.subarray(0, n)).toString();

describe.runIf(support.ok)('epoll backend: fd numbers reused behind its back', () => {
  let b: EpollBackend;
  let d: Driver;
  perTestBackend(createBackend, (nb, nd) => {
    b = nb;
    d = nd;
  });

  /** A node:net server whose accepted sockets (the peers) are kept in order. */
  async function server(): Promise<{ port: number; peers: net.Socket[]; close: () => Promise<void> }> {
    const peers: net.Socket[] = [];
    const srv = net.createServer((s) => {
      s.on('error', () => undefined); // a reset when the test closes the other end with data unread
      peers.push(s);
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as net.AddressInfo).port;
    return {
      port,
      peers,
      close: async () => {
        for (const p of peers) p.destroy();
        await new Promise((r) => srv.close(r));
      },
    };
  }

  /**
   * Socket A (fd `fdA`, connected to `srv`) gets a recv in this backend; a child process keeps
   * A's file open; A's number is closed behind the backend's back and handed to a node:net socket
   * B, whose peer has written 'secret-of-B'. The caller destroys `sockB` and kills `child`.
   */
  async function staleRecvUnderNewSocket(
    srv: { port: number; peers: net.Socket[] },
    fdA: number,
  ): Promise<{ peerA: net.Socket; bufA: Uint8Array; staleA: Promise<number | string | undefined>; child: ChildProcess; sockB: net.Socket }> {
    const peerA = srv.peers[0]!;
    const bufA = new Uint8Array(16);
    const staleA = d.io({ op: 'recv', fd: fdA, buffer: bufA, len: 16 }).then(
      (n) => n,
      (e: { code?: string }) => e.code,
    );
    await sleep(20);
    const child = await spawnHolding(fdA);
    let sockB: net.Socket;
    try {
      closeSync(fdA);
      sockB = await netSocketAt(fdA, srv.port);
    } catch (err) {
      await kill(child);
      throw err;
    }
    await eventually(() => srv.peers.length >= 2);
    srv.peers.at(-1)!.write('secret-of-B');
    await sleep(30);
    return { peerA, bufA, staleA, child, sockB };
  }

  /**
   * node:net sockets connected to `port` until one gets descriptor number `fd` (the lowest free
   * number is handed out first, so usually the first one). Node does not read from it: the
   * backend does. The others are destroyed; the caller destroys the one returned.
   */
  async function netSocketAt(fd: number, port: number): Promise<net.Socket> {
    const extra: net.Socket[] = [];
    try {
      for (let i = 0; i < 50; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        await new Promise<void>((r) => s.once('connect', () => r()));
        s.pause();
        (s as unknown as { _handle: NetHandle })._handle.readStop();
        if (fdOf(s) === fd) return s;
        extra.push(s);
      }
      throw new Error(`no socket got descriptor number ${fd}`);
    } finally {
      for (const s of extra) s.destroy();
    }
  }

  async function destroy(s: net.Socket): Promise<void> {
    if (s.destroyed) return;
    await new Promise((r) => s.destroy().once('close', r));
  }

  async function spawnHolding(fd: number): Promise<ChildProcess> {
    // The child inherits the socket (as its fd 3) and keeps it open: the backend's epoll
    // registration of that socket outlives our closing it.
    const child = spawn('sleep', ['30'], { stdio: ['ignore', 'ignore', 'ignore', fd] });
    await new Promise((r) => child.once('spawn', r));
    return child;
  }

  async function kill(child: ChildProcess): Promise<void> {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill();
    await exited;
  }

  it('a recv on the reused number gets the new socket data; the old recv fails with EBADF', async () => {
    const srv = await server();
    const fdA = await connect(d, srv.port);
    await eventually(() => srv.peers.length === 1);
    const bufA = new Uint8Array(16);
    const staleA = d.io({ op: 'recv', fd: fdA, buffer: bufA, len: 16 }).then(
      (n) => n,
      (e: { code?: string }) => e.code,
    );
    await sleep(20); // waiting for readiness
    closeSync(fdA); // behind the backend's back
    let sockB: net.Socket | undefined;
    try {
      sockB = await netSocketAt(fdA, srv.port);
      await eventually(() => srv.peers.length >= 2);
      const bufB = new Uint8Array(16);
      const recvB = d.io({ op: 'recv', fd: fdA, buffer: bufB, len: 16 });
      await sleep(20);
      srv.peers.at(-1)!.write('hello-B');
      // Before: queued behind the old socket's recv, on its vanished registration: never completed.
      expect(await withTimeout(recvB, 2000, 'recv on the new socket')).toBe(7);
      expect(text(bufB, 7)).toBe('hello-B');
      expect(await withTimeout(staleA, 2000, 'the old recv')).toBe('EBADF');
      expect(bufA.every((x) => x === 0)).toBe(true);
      expect(b.stats().stale).toBe(1);
    } finally {
      if (sockB !== undefined) await destroy(sockB);
      await srv.close();
    }
  });

  it('while a child process holds the old socket, its data never reaches the old recv through the new socket', async () => {
    const srv = await server();
    const fdA = await connect(d, srv.port);
    await eventually(() => srv.peers.length === 1);
    const { peerA, bufA, staleA, child, sockB } = await staleRecvUnderNewSocket(srv, fdA);
    try {
      const bufB = new Uint8Array(16);
      const recvB = d.io({ op: 'recv', fd: fdA, buffer: bufB, len: 16 });
      await sleep(30);
      // The old socket becomes readable: before, its event ran the old recv on the number, which
      // read the new socket's data, and the new recv waited forever.
      peerA.write('data-for-A');
      expect(await withTimeout(recvB, 2000, 'recv on the new socket')).toBe(11);
      expect(text(bufB, 11)).toBe('secret-of-B');
      expect(await withTimeout(staleA, 2000, 'the old recv')).toBe('EBADF');
      await sleep(30);
      expect(bufA.every((x) => x === 0)).toBe(true);
    } finally {
      await destroy(sockB);
      await kill(child);
      await srv.close();
    }
  });

  it('an fd it did not create: the old socket events never run its recv on the new socket, even with no new operation', async () => {
    const srv = await server();
    // Socket A comes from another backend: to this one it is a foreign fd.
    const other = createBackend();
    const d2 = new Driver(other);
    const fdA = await connect(d2, srv.port);
    await eventually(() => srv.peers.length === 1);
    const { peerA, bufA, staleA, child, sockB } = await staleRecvUnderNewSocket(srv, fdA);
    try {
      peerA.write('data-for-A'); // an event for A's registration, under the number B has now
      expect(await withTimeout(staleA, 2000, 'the old recv')).toBe('EBADF');
      expect(bufA.every((x) => x === 0)).toBe(true);
      // B's data is all still there for whoever reads B.
      const bufB = new Uint8Array(16);
      expect(await withTimeout(d.io({ op: 'recv', fd: fdA, buffer: bufB, len: 16 }), 2000, 'recv B')).toBe(11);
      expect(text(bufB, 11)).toBe('secret-of-B');
    } finally {
      await destroy(sockB);
      await kill(child);
      other.close();
      await srv.close();
    }
  });

  it('a connect on the reused number completes while the old socket recv is still queued', async () => {
    const srv = await server();
    const fdA = await connect(d, srv.port);
    await eventually(() => srv.peers.length === 1);
    const staleA = d.io({ op: 'recv', fd: fdA, buffer: new Uint8Array(8), len: 8 }).then(
      (n) => n,
      (e: { code?: string }) => e.code,
    );
    await sleep(20);
    // A fresh socket from another backend takes the number; this backend connects it. The connect
    // waits for writability: before, on the old socket's registration (gone), forever.
    const other = createBackend(); // before the close: it takes three descriptors itself
    const d2 = new Driver(other);
    closeSync(fdA);
    const spare: number[] = [];
    let fdB = await d2.io({ op: 'socket', family: 4 });
    while (fdB !== fdA && spare.length < 50) {
      spare.push(fdB);
      fdB = await d2.io({ op: 'socket', family: 4 });
    }
    for (const fd of spare) closeSync(fd);
    other.close();
    try {
      expect(fdB).toBe(fdA);
      expect(await withTimeout(d.io({ op: 'connect', fd: fdB, addr: { host: '127.0.0.1', port: srv.port } }), 2000, 'connect')).toBe(0);
      expect(await withTimeout(staleA, 2000, 'the old recv')).toBe('EBADF');
      await eventually(() => srv.peers.length === 2);
    } finally {
      closeSync(fdB); // a waiting connect, if any, is the backend's to cancel at close
      await srv.close();
    }
  });
});
