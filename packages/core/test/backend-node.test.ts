/**
 * The portable `node` backend where it cannot simply share the conformance suite: buffers it
 * cannot pin (a caller may transfer one while an operation waits) and timers longer than
 * `setTimeout` can arm.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { NodeBackend, Runtime, TcpListener, TcpStream, type IoCompletion } from '@miniss/core';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function run<T>(fn: (rt: Runtime) => Promise<T>): Promise<T> {
  const rt = new Runtime({ backend: 'node' });
  const result = await rt.blockOn(() => fn(rt));
  expect(rt.stats().openResources).toBe(0);
  expect(rt.stats().ioInFlight).toBe(0);
  return result;
}

async function pair(): Promise<{ listener: TcpListener; client: TcpStream; server: TcpStream }> {
  const listener = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
  const [client, server] = await Promise.all([TcpStream.connect({ host: '127.0.0.1', port: listener.address.port }), listener.accept()]);
  return { listener, client, server };
}

/** Moves `buf`'s memory away, as `postMessage(buf, [buf.buffer])` does: `buf` is left empty. */
function detach(buf: Uint8Array): ArrayBuffer {
  const ab = buf.buffer as ArrayBuffer;
  return structuredClone(ab, { transfer: [ab] });
}

describe('node backend: caller buffers it cannot pin', () => {
  it('a recv whose buffer is detached while it waits fails EFAULT, and the bytes go to the next recv', async () => {
    await run(async () => {
      const { listener, client, server } = await pair();
      const buf = new Uint8Array(16);
      const p = server.recv(buf).then(
        (n) => n,
        (e: unknown) => e as Error & { code?: string; syscall?: string },
      );
      await sleep(20);
      detach(buf);
      await client.sendAll(Buffer.from('hello'));
      const r = await p;
      expect(r).toMatchObject({ code: 'EFAULT', syscall: 'recv' });
      const next = new Uint8Array(16);
      const n = await server.recv(next);
      expect(Buffer.from(next.subarray(0, n)).toString()).toBe('hello');
      await Promise.all([client.close(), server.close(), listener.close()]);
    });
  });

  it('a send waiting behind another write still sends its bytes if the caller detaches its buffer', async () => {
    await run(async (rt) => {
      const { listener, client, server } = await pair();
      // Raw operations: TcpStream itself never has two sends in the backend at once.
      const big = Buffer.alloc(8 << 20, 'A');
      const p1 = rt.io({ op: 'send', fd: client.fd, buffer: big, len: big.length }, undefined, client);
      const small = new Uint8Array(1000).fill(0x42);
      const p2 = rt.io({ op: 'send', fd: client.fd, buffer: small, len: small.length }, undefined, client);
      await sleep(10);
      detach(small);
      const buf = new Uint8Array(1 << 16);
      let total = 0;
      let bs = 0;
      // (Bounded: bytes that never come must fail the test, not hang it.)
      const deadline = AbortSignal.timeout(5000);
      while (total < big.length + 1000) {
        const n = await server.recv(buf, { signal: deadline }).catch(() => 0);
        if (n === 0) break;
        total += n;
        for (let i = 0; i < n; i++) if (buf[i] === 0x42) bs++;
      }
      expect(await Promise.all([p1, p2])).toEqual([big.length, 1000]);
      expect(total).toBe(big.length + 1000);
      expect(bs).toBe(1000);
      await Promise.all([client.close(), server.close(), listener.close()]);
    });
  });
});

describe('node backend: aborted sends to a peer that does not read', () => {
  it('hold at most one send in Node: 300 aborted 1 MiB sends do not pile up 300 MiB, and a send waiting its turn is dropped for good', async () => {
    await run(async () => {
      const { listener, client, server } = await pair(); // the server never reads
      const buf = new Uint8Array(1 << 20).fill(0x41);
      const before = process.memoryUsage().arrayBuffers;
      let cancelled = 0;
      for (let i = 0; i < 300; i++) {
        const ac = new AbortController();
        const p = client.send(buf, { signal: ac.signal });
        await new Promise((r) => setImmediate(r));
        ac.abort();
        await p.then(
          () => undefined,
          () => cancelled++,
        );
      }
      const grown = process.memoryUsage().arrayBuffers - before;
      expect(cancelled).toBeGreaterThan(250);
      // Before, every aborted send left its copy queued in Node's stream buffer (~300 MiB here).
      expect(grown).toBeLessThan(64 << 20);
      await Promise.all([client.close(), server.close(), listener.close()]);
    });
  });
});

describe('node backend: timeouts longer than setTimeout allows', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('a timeout past 2^31-1 ms is re-armed until its deadline, never completing early', () => {
    // Only setTimeout is faked: nothing else here needs the loop.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(w.name);
    process.on('warning', onWarning);
    const be = new NodeBackend();
    try {
      const ms = 2 ** 31 + 5000;
      const id = be.submit({ op: 'timeout', ms });
      const done = (): IoCompletion[] => be.poll(0).filter((c) => c.handle === id);
      vi.advanceTimersByTime(10);
      expect(done()).toEqual([]);
      vi.advanceTimersByTime(ms - 20);
      expect(done()).toEqual([]);
      vi.advanceTimersByTime(10);
      expect(done()).toEqual([{ handle: id, result: 0 }]);
      // A long one can still be cancelled, whichever step it is in.
      const id2 = be.submit({ op: 'timeout', ms: 2 ** 32 });
      vi.advanceTimersByTime(2 ** 31);
      expect(be.cancel(id2)).toBe(true);
      const c = be.poll(0).filter((x) => x.handle === id2);
      expect((c[0]?.result as { code?: string }).code).toBe('ECANCELED');
      expect(vi.getTimerCount()).toBe(0);
      expect(warnings).not.toContain('TimeoutOverflowWarning');
    } finally {
      process.off('warning', onWarning);
      be.close();
    }
  });
});
