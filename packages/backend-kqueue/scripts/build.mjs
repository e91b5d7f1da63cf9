#!/usr/bin/env node
// Build script of @miniss/backend-kqueue (install and build).
//
// kqueue is a BSD/macOS API. On darwin/freebsd/openbsd/netbsd this would hand over to core's
// miniss-build-native. On Linux it compiles nothing unless MINISS_KQUEUE_INCLUDE_DIR and
// MINISS_KQUEUE_LIB_DIR point at a libkqueue install (then it forces the build so binding.gyp
// builds against that library). core's build-native.mjs only knows `miniss.nativeOs`, so the
// Linux+libkqueue case is handled here (the change core would need is in NOTES.md).
//
// The Node binding (native/binding.cc) is NOT written yet (native/kqueue.cc, the reactor, and
// binding.gyp are); until it exists this script compiles nothing on any OS, says so, and exits 0 so
// installs stay clean.
// isSupported() reports the same reason at run time.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const log = (msg) => process.stderr.write(`[@miniss/backend-kqueue] ${msg}\n`);
const BSD = ['darwin', 'freebsd', 'openbsd', 'netbsd'];

const inc = process.env.MINISS_KQUEUE_INCLUDE_DIR;
const lib = process.env.MINISS_KQUEUE_LIB_DIR;
const native = BSD.includes(process.platform);
const libkqueue = process.platform === 'linux' && !!inc && !!lib;

if (!native && !libkqueue) {
  log(
    `nothing to compile on ${process.platform}: kqueue is a BSD/macOS API. To build against libkqueue on Linux set ` +
      'MINISS_KQUEUE_INCLUDE_DIR (the dir holding sys/event.h) and MINISS_KQUEUE_LIB_DIR (the dir holding libkqueue.so)',
  );
  process.exit(0);
}
const missing = ['native/kqueue.cc', 'native/binding.cc', 'binding.gyp'].filter((f) => !existsSync(join(pkgDir, f)));
if (missing.length > 0) {
  log(`nothing to compile: the native kqueue sources are not written yet (missing ${missing.join(', ')}); see README.md`);
  process.exit(0);
}
const require = createRequire(join(pkgDir, 'package.json'));
let bin;
try {
  bin = join(dirname(require.resolve('@miniss/core/package.json')), 'scripts', 'build-native.mjs');
} catch {
  bin = join(pkgDir, '..', 'core', 'scripts', 'build-native.mjs');
}
const env = { ...process.env };
if (libkqueue) env.MINISS_FORCE_NATIVE_BUILD = '1';
const r = spawnSync(process.execPath, [bin, ...process.argv.slice(2)], { cwd: pkgDir, stdio: 'inherit', env });
process.exit(r.status ?? 1);
