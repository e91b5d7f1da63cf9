/**
 * Aborting a recv or send never loses bytes or sends the caller's later bytes: a recv the kernel
 * had already done when its signal aborted resolves with its count (io_uring posts the completion
 * at once and it waits to be reaped), and a cancelled send leaves the caller's buffer alone.
 */
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { Runtime, TcpStream, probeBackend, type BackendName } from '@miniss/core';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function withPeer<T>(backend: BackendName, body: (c: TcpStream, peer: () => net.Socket) => Promise<T>, pause = false): Promise<T> {
  let peer: net.Socket | undefined;
  const srv = net.createServer((s) => {
    if (pause) s.pause();
    s.on('error', () => undefined);
    peer = s;
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const rt = new Runtime({ backend });
  try {
    return await rt.blockOn(async () => {
      const c = await TcpStream.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port });
      while (peer === undefined) await sleep(2);
      try {
        return await body(c, () => peer!);
      } finally {
        await c.close();
      }
    });
  } finally {
    peer?.destroy();
    await new Promise((r) => srv.close(r));
  }
}

describe.each((['node', 'io_uring', 'epoll'] as BackendName[]).map((name) => ({ name, probe: probeBackend(name) })))(
  'aborting stream I/O on the $name backend',
  ({ name, probe }) => {
    it.runIf(probe.ok)(`a recv aborted after its bytes arrived loses none of them (${probe.reason ?? 'available'})`, async () => {
      const got = await withPeer(name, async (c, peer) => {
        const seen: number[] = [];
        const buf = new Uint8Array(16);
        for (let i = 0; i < 20; i++) {
          const ac = new AbortController();
          const p = c.recv(buf, { signal: ac.signal });
          await sleep(2); // the recv is in the backend, waiting
          peer().write(Buffer.from([i]));
          // Same turn: the kernel has done the recv (or will), its completion is not reaped yet.
          const until = Date.now() + 3;
          while (Date.now() < until);
          ac.abort();
          const n = await p.catch((e: { code?: string }) => {
            expect(e.code).toBe('CANCELLED');
            return -1;
          });
          if (n > 0) {
            seen.push(...buf.subarray(0, n));
            continue;
          }
          // The abort won: the byte is still in the stream for the next recv.
          const m = await c.recv(buf, { signal: AbortSignal.timeout(2000) });
          seen.push(...buf.subarray(0, m));
        }
        return seen;
      });
      expect(got).toEqual(Array.from({ length: 20 }, (_, i) => i));
    });

    it.runIf(probe.ok)(`a send aborted part way never sends what the caller puts in its buffer afterwards (${probe.reason ?? 'available'})`, async () => {
      const counts = await withPeer(
        name,
        async (c, peer) => {
          const big = new Uint8Array(16 << 20).fill(0x41); // 'A', more than the socket buffers take
          const ac = new AbortController();
          const p = c.sendAll(big, { signal: ac.signal });
          await sleep(100); // the peer is paused: the send waits for room
          ac.abort();
          await expect(p).rejects.toMatchObject({ code: 'CANCELLED' });
          big.fill(0x42); // the caller reuses its buffer: 'B'
          const s = peer();
          let a = 0;
          let b = 0;
          s.on('data', (d: Buffer) => {
            for (const x of d) {
              if (x === 0x41) a++;
              else if (x === 0x42) b++;
            }
          });
          const ended = new Promise<void>((r) => s.once('end', () => r()));
          s.resume();
          await c.shutdown('write');
          await Promise.race([ended, sleep(10_000)]);
          return { a, b };
        },
        true,
      );
      expect(counts.a).toBeGreaterThan(0);
      expect(counts.b).toBe(0);
    });

    it.runIf(probe.ok)(`a signal that is not an AbortSignal is INVALID_ARGUMENT, also for a call queued behind another, and close() still works (${probe.reason ?? 'available'})`, async () => {
      await withPeer(name, async (c) => {
        const first = c.recv(new Uint8Array(8)); // in the backend: later recvs queue behind it
        for (const bad of [{}, null, 'x']) {
          await expect(c.recv(new Uint8Array(8), { signal: bad as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
          await expect(c.send(new Uint8Array(8), { signal: bad as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
          await expect(c.sendAll(new Uint8Array(8), { signal: bad as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
        }
        await c.close(); // used to throw on the bogus signal of a queued call
        await expect(first).rejects.toMatchObject({ code: 'ECANCELED' });
      });
    });

    it.runIf(probe.ok)(`connect refuses a timeoutMs setTimeout cannot wait (${probe.reason ?? 'available'})`, async () => {
      const rt = new Runtime({ backend: name });
      await rt.blockOn(async () => {
        for (const timeoutMs of [2 ** 31, 1e12, Infinity, 0, -1, Number.NaN]) {
          await expect(TcpStream.connect({ host: '127.0.0.1', port: 9 }, { timeoutMs })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
          // The raw backend refuses it the same way, whatever times the connect there.
          expect(() => rt.backend.submit({ op: 'connect', fd: 3, addr: { host: '127.0.0.1', port: 9 }, timeoutMs } as never)).toThrow(
            expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('at most 2147483647') }),
          );
        }
      });
    });
  },
);
