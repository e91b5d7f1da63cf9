/**
 * An operation that makes a descriptor (open, socket, accept) and is aborted after it reached the
 * backend may still finish with a new fd: the runtime closes that fd instead of dropping it.
 */
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { File, Runtime, TcpListener, TcpStream, probeBackend, type BackendName } from '@miniss/core';

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

/** Calls `fn` after `n` microtask hops: late enough for the operation to have been flushed. */
function afterMicrotasks(n: number, fn: () => void): void {
  const hop = (): void => (n-- <= 0 ? fn() : queueMicrotask(hop));
  queueMicrotask(hop);
}

type Maker = (signal: AbortSignal) => Promise<{ close(): Promise<void> }>;
const cases: Array<[string, Maker, number]> = [
  ['File.open', (signal) => File.open('/etc/hostname', { read: true }, 0o644, { signal }), 0],
  ['TcpStream.connect', (signal) => TcpStream.connect({ host: '127.0.0.1', port: 9 }, { signal }), 10],
  ['TcpListener.bind', (signal) => TcpListener.bind({ host: '127.0.0.1', port: 0 }, { signal }), 10],
];

/** One runtime's worth of aborted calls; returns how many were aborted. */
async function abortRound(backend: BackendName): Promise<number> {
  const rt = new Runtime({ backend });
  return rt.blockOn(async () => {
    let aborted = 0;
    for (let i = 0; i < 20; i++) {
      for (const [, make, hops] of cases) {
        const ac = new AbortController();
        const p = make(ac.signal);
        if (hops === 0) ac.abort(new Error('user abort'));
        else afterMicrotasks(hops, () => ac.abort(new Error('user abort')));
        await p.then(
          (r) => r.close(),
          (e: Error) => {
            if (e.message === 'the operation was aborted: user abort') aborted++;
          },
        );
      }
    }
    // The closes of late fds go out with the next flush.
    await new Promise((r) => setTimeout(r, 50));
    return aborted;
  });
}

describe.each((['node', 'io_uring', 'epoll'] as BackendName[]).map((name) => ({ name, probe: probeBackend(name) })))(
  'aborted fd-making operations on the $name backend',
  ({ name, probe }) => {
    it.runIf(probe.ok && process.platform === 'linux')(`leave no descriptor open (${probe.reason ?? 'available'})`, async () => {
      await abortRound(name); // warm-up: libuv opens some descriptors of its own on first use
      const before = openFds();
      const aborted = await abortRound(name);
      expect(aborted).toBeGreaterThan(0);
      expect(openFds() - before).toBe(0);
    });
  },
);
