// Core's I/O submission and completion dispatch over the epoll backend: the direct-mapped table of
// pending operations (and its overflow map), the per-owner lists close() cancels from, and abort
// signals (the only case that still costs a closure per operation).
import { afterEach, describe, expect, it } from 'vitest';
import { Runtime, TcpListener, TcpStream, tryCurrentRuntime } from '@miniss/core';
import { isSupported } from '@miniss/backend-epoll';
import { withTimeout } from '@miniss/backend-testkit';

const support = isSupported();
if (!support.ok) console.warn(`epoll runtime I/O tests skipped: ${support.reason}`);

describe.runIf(support.ok)('runtime I/O path on epoll', () => {
  afterEach(async () => {
    const rt = tryCurrentRuntime();
    if (rt !== undefined) {
      await rt.shutdown();
      throw new Error('a test left its runtime running');
    }
  });

  it('settles 10,000 concurrent operations (more than the pending table holds) exactly once each', async () => {
    const rt = new Runtime({ backend: 'epoll' });
    await rt.blockOn(async () => {
      const N = 10_000;
      const ps: Promise<number>[] = [];
      for (let i = 0; i < N; i++) ps.push(rt.io(i % 3 === 0 ? { op: 'timeout', ms: 1 } : { op: 'nop' }));
      expect(rt.stats().ioInFlight).toBe(N);
      const rs = await withTimeout(Promise.all(ps), 5000, 'operations');
      expect(rs.every((r) => r === 0)).toBe(true);
      const st = rt.stats();
      expect(st.ioInFlight).toBe(0);
      expect(st.ioCompleted).toBe(st.ioSubmitted);
    });
  });

  it('an aborted operation rejects with the reason; the others of the batch are unaffected', async () => {
    const rt = new Runtime({ backend: 'epoll' });
    await rt.blockOn(async () => {
      const ac = new AbortController();
      const slow = rt.io({ op: 'timeout', ms: 10_000 }, ac.signal);
      const quick = rt.io({ op: 'timeout', ms: 1 }, new AbortController().signal);
      const plain = rt.io({ op: 'nop' });
      ac.abort(new Error('stop'));
      await expect(withTimeout(slow, 2000, 'aborted op')).rejects.toThrow('stop');
      expect(await quick).toBe(0);
      expect(await plain).toBe(0);
      // The cancelled backend operation completes (ECANCELED) and leaves nothing pending.
      for (let i = 0; i < 100 && rt.stats().ioInFlight > 0; i++) await new Promise((r) => setTimeout(r, 5));
      expect(rt.stats().ioInFlight).toBe(0);
      // An already aborted signal rejects before submitting.
      const before = rt.stats().ioSubmitted;
      await expect(rt.io({ op: 'nop' }, ac.signal)).rejects.toThrow('stop');
      expect(rt.stats().ioSubmitted).toBe(before);
    });
  });

  it('closing a stream cancels its recv in flight; other streams keep theirs', async () => {
    const rt = new Runtime({ backend: 'epoll' });
    await rt.blockOn(async () => {
      const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
      const streams: TcpStream[] = [];
      const accepted: TcpStream[] = [];
      for (let i = 0; i < 3; i++) {
        const acc = l.accept();
        streams.push(await TcpStream.connect({ host: '127.0.0.1', port: l.address.port }));
        accepted.push(await acc);
      }
      const bufs = accepted.map(() => new Uint8Array(16));
      const recvs = accepted.map((s, i) => s.recv(bufs[i]!));
      // Two recvs on the middle stream, one in the backend and one waiting behind it in the
      // stream's queue (call order): both are cancelled. Handlers go on first: the queued one is
      // rejected while close() is still in progress.
      const extra = accepted[1]!.recv(new Uint8Array(16));
      const cancelled = [recvs[1]!, extra].map((p) =>
        withTimeout(p, 2000, 'cancelled recv').then(
          () => 'resolved',
          (e: { code?: string }) => e.code,
        ),
      );
      await new Promise((r) => setImmediate(r));
      await accepted[1]!.close();
      expect(await Promise.all(cancelled)).toEqual(['ECANCELED', 'ECANCELED']);
      await streams[0]!.sendAll(new Uint8Array([1, 2]));
      await streams[2]!.sendAll(new Uint8Array([3]));
      expect(await withTimeout(recvs[0]!, 2000, 'recv 0')).toBe(2);
      expect(await withTimeout(recvs[2]!, 2000, 'recv 2')).toBe(1);
      expect(bufs[2]![0]).toBe(3);
      await expect(accepted[1]!.recv(new Uint8Array(4))).rejects.toMatchObject({ code: 'EBADF' });
      for (const s of [...streams, ...accepted]) await s.close();
      await l.close();
      expect(rt.stats().ioInFlight).toBe(0);
    });
  });

  it('shutdown rejects operations still in flight with RUNTIME_SHUTDOWN', async () => {
    const rt = new Runtime({ backend: 'epoll' });
    let pending: Promise<number> | undefined;
    await rt.blockOn(() => {
      pending = rt.io({ op: 'timeout', ms: 60_000 });
      pending.catch(() => undefined);
    });
    await expect(pending).rejects.toMatchObject({ code: 'RUNTIME_SHUTDOWN' });
    expect(rt.stats().ioInFlight).toBe(0);
  });
});
