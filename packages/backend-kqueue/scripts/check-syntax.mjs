#!/usr/bin/env node
// Compile check (NOT a build, NOT a run) of the kqueue reactor on a machine without kqueue:
// `c++ -fsyntax-only` of native/kqueue.cc, op.cc and thread_pool.cc with test/shim on the include
// path, which declares the BSD <sys/event.h> (struct kevent, EV_*/EVFILT_*/NOTE_* and the
// kqueue()/kevent() prototypes). It proves the code is well-formed C++ against those
// declarations; it proves nothing about behaviour on macOS/BSD. Exit status is the compiler's.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const cxx = process.env.CXX || 'c++';
const args = [
  '-fsyntax-only', '-std=c++17', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter',
  '-I', join(pkgDir, 'test', 'shim'),
  ...['kqueue.cc', 'op.cc', 'thread_pool.cc'].map((f) => join(pkgDir, 'native', f)),
];
const r = spawnSync(cxx, args, { stdio: 'inherit' });
if (r.error) {
  process.stderr.write(`cannot run ${cxx}: ${r.error.message}\n`);
  process.exit(2);
}
process.exit(r.status ?? 1);
