// The thread-pool suite (tools/backend-testkit/src/pool.ts) on kqueue (on Linux: against kqemu):
// stuck jobs, cancelled opens, pool writes racing a close of their fd.
import { createBackend, isSupported } from '@miniss/backend-kqueue';
import { poolSuite } from '@miniss/backend-testkit/suites';

poolSuite({ name: 'kqueue', createBackend, isSupported, pkgEntry: new URL('../dist/index.js', import.meta.url).href });
