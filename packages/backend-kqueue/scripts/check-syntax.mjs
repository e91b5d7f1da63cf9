#!/usr/bin/env node
// Compile check (NOT a build, NOT a run) of the kqueue addon on a machine without kqueue:
// `c++ -fsyntax-only` of every file in native/ (the reactor and the nan binding) and of
// @miniss/native-common's op.cc, thread_pool.cc (and module_methods.cc with the binding), with test/shim on the include path, which
// declares the BSD <sys/event.h> (struct kevent, EV_*/EVFILT_*/NOTE_* and the kqueue()/kevent()
// prototypes), plus native-common's, Node's and nan's headers. It proves the code is well-formed C++ against those declarations; it
// proves nothing about behaviour on macOS/BSD, and on Linux the macOS/BSD #ifdef branches
// (SO_NOSIGPIPE, sin_len, SO_REUSEPORT_LB) are not compiled. Exit status is the compiler's.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const cxx = process.env.CXX || 'c++';
const require = createRequire(join(pkgDir, 'package.json'));
const nanDir = dirname(require.resolve('nan/package.json'));
const nodeInclude = join(dirname(dirname(process.execPath)), 'include', 'node');
const commonDir = dirname(require.resolve('@miniss/native-common/package.json'));
const files = [join(pkgDir, 'native', 'kqueue.cc'), join(commonDir, 'src', 'op.cc'), join(commonDir, 'src', 'thread_pool.cc')];
const includes = ['-I', join(pkgDir, 'test', 'shim'), '-I', join(commonDir, 'include')];
if (existsSync(join(nodeInclude, 'node.h'))) {
  files.push(join(pkgDir, 'native', 'binding.cc'), join(commonDir, 'src', 'module_methods.cc'));
  includes.push('-I', nodeInclude, '-I', nanDir);
} else {
  process.stderr.write(`note: ${nodeInclude}/node.h not found: native/binding.cc not checked\n`);
}
const args = [
  '-fsyntax-only', '-std=c++17', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-Wno-cast-function-type',
  // Node's and V8's own headers are not -Wextra clean; they are system headers here.
  ...includes.flatMap((v, i) => (v === '-I' && i > 3 ? ['-isystem'] : v === '-I' ? ['-I'] : [v])),
  ...files,
];
const r = spawnSync(cxx, args, { stdio: 'inherit' });
if (r.error) {
  process.stderr.write(`cannot run ${cxx}: ${r.error.message}\n`);
  process.exit(2);
}
process.exit(r.status ?? 1);
