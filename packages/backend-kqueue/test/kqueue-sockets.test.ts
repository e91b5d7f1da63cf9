// The readiness-model socket suite (tools/backend-testkit/src/sockets.ts) on kqueue.
import { constants, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBackend, isSupported } from '@miniss/backend-kqueue';
import { socketSuite } from '@miniss/backend-testkit/suites';

socketSuite({
  name: 'kqueue',
  createBackend,
  isSupported,
  writeReadiness: 'EVFILT_WRITE',
  registration: 'kevent change',
  registrations: (b) => b.stats().keventChanges,
  // A file stands in for any non-socket (no eventfd on macOS/BSD).
  nonSocketFd: async (_b, d) => {
    const path = join(tmpdir(), `miniss-kqueue-notsock-${process.pid}`);
    writeFileSync(path, 'x');
    const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
    unlinkSync(path);
    return { fd, release: async () => void (await d.io({ op: 'close', fd })) };
  },
});
