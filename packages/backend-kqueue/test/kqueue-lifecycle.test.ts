// The readiness-model lifecycle suite (tools/backend-testkit/src/lifecycle.ts) on kqueue, plus the reactor timer's disarm.
import { describe, expect, it } from 'vitest';
import { createBackend, isSupported } from '@miniss/backend-kqueue';
import { lifecycleSuite } from '@miniss/backend-testkit/suites';

lifecycleSuite({
  name: 'kqueue',
  createBackend,
  isSupported,
  pkgEntry: new URL('../dist/index.js', import.meta.url).href,
  features: { directIo: false, batchSubmit: true, vectoredIo: true, sqpoll: false },
  checkExtras: (b) => {
    // Linux-only extras of the epoll backend: no eventfd on macOS/BSD, no sched_setaffinity on macOS.
    expect('eventfd' in b).toBe(false);
    expect('signalFd' in b).toBe(false);
    expect('setAffinity' in b).toBe(false);
  },
  // No eventfd on macOS/BSD: the workers wait on a socket that never gets data.
  workerReadFd: 'socket',
});

describe('kqueue: the reactor timer', () => {
  const support = isSupported();
  it.skipIf(!support.ok)('is deleted when every timeout completed before its expiry was read (no kernel timer left pending)', async () => {
    const b = createBackend();
    try {
      const t5 = b.submit({ op: 'timeout', ms: 5 });
      b.flush(); // arms the kernel timer for 5 ms
      const until = performance.now() + 15;
      while (performance.now() < until); // it expires; nobody reads the expiry
      const changes = b.stats().keventChanges;
      const t0 = b.submit({ op: 'timeout', ms: 0 });
      b.flush(); // both deadlines have passed: both complete here, and the armed timer goes
      const done = new Set<number>();
      const end = Date.now() + 2000;
      while (done.size < 2 && Date.now() < end) {
        for (const c of b.poll(0)) done.add(c.handle);
        if (done.size < 2) await new Promise((r) => setTimeout(r, 1));
      }
      expect(done).toEqual(new Set([t5, t0]));
      expect(b.stats().keventChanges).toBe(changes + 1); // the EV_DELETE
    } finally {
      b.close();
    }
  });
});
