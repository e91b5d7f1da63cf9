// The readiness-model socket suite (tools/backend-testkit/src/sockets.ts) on epoll.
import { createBackend, isSupported } from '@miniss/backend-epoll';
import { socketSuite } from '@miniss/backend-testkit/suites';

socketSuite({
  name: 'epoll',
  createBackend,
  isSupported,
  writeReadiness: 'EPOLLOUT',
  registration: 'epoll_ctl',
  registrations: (b) => b.stats().epollCtl,
  // An eventfd of the backend stands in for any file; the backend closes it in close().
  nonSocketFd: async (b) => ({ fd: b.eventfd(), release: async () => undefined }),
});
