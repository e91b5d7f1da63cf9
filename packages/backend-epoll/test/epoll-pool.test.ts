// The thread-pool suite (tools/backend-testkit/src/pool.ts) on epoll: stuck jobs, cancelled opens,
// pool writes racing a close of their fd.
import { createBackend, isSupported } from '@miniss/backend-epoll';
import { poolSuite } from '@miniss/backend-testkit/suites';

poolSuite({ name: 'epoll', createBackend, isSupported, pkgEntry: new URL('../dist/index.js', import.meta.url).href });
