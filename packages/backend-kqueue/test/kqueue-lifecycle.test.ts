// The readiness-model lifecycle suite (tools/backend-testkit/src/lifecycle.ts) on kqueue.
import { expect } from 'vitest';
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
