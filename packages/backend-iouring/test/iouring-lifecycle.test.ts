// The lifecycle suite every native backend passes (tools/backend-testkit/src/lifecycle.ts:
// cancellation, close with operations in flight, timers, fd accounting, worker.terminate(), the
// loop held only while operations are in flight), on io_uring.
import { expect } from 'vitest';
import { createBackend, isSupported } from '@miniss/backend-iouring';
import { lifecycleSuite } from '@miniss/backend-testkit/suites';

lifecycleSuite({
  name: 'io_uring',
  createBackend,
  isSupported,
  pkgEntry: new URL('../dist/index.js', import.meta.url).href,
  features: { directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false, linkedTimeouts: true },
  checkExtras: (b) => {
    for (const m of ['eventfd', 'signalFd', 'setAffinity', 'allocateBuffer', 'drain', 'stats'] as const) {
      expect(typeof b[m]).toBe('function');
    }
  },
  // An eventfd the backend owns: it goes away with the backend (the suite's fd count checks it).
  beforeCloseWithOpsInFlight: (b) => {
    expect(b.eventfd()).toBeGreaterThan(2);
  },
  workerReadFd: 'eventfd',
});
