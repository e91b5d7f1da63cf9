#!/usr/bin/env node
// Builds the kqueue addon on Linux against kqemu, the TEST-ONLY kqueue emulation in test/kqemu
// (Debian 12 has no libkqueue package). Two steps:
//   1. cc -shared test/kqemu/kqemu.c -> test/kqemu/build/libkqueue.so
//   2. miniss-build-native with MINISS_KQUEUE_INCLUDE_DIR=test/kqemu/include and
//      MINISS_KQUEUE_LIB_DIR=test/kqemu/build (the same route a real libkqueue takes).
// Afterwards isSupported() is ok on this machine and the core conformance suite runs the kqueue
// block. Remove the result with `--clean` (deletes build/ and test/kqemu/build/).
// Flags: --debug (a Debug build, e.g. with CC/CXX/CFLAGS/CXXFLAGS/LDFLAGS set for AddressSanitizer).
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const emuDir = join(pkgDir, 'test', 'kqemu');
const libDir = join(emuDir, 'build');
const log = (msg) => process.stderr.write(`[build-kqemu] ${msg}\n`);
const args = process.argv.slice(2);

if (args.includes('--clean')) {
  rmSync(join(pkgDir, 'build'), { recursive: true, force: true });
  rmSync(libDir, { recursive: true, force: true });
  log('removed build/ and test/kqemu/build/');
  process.exit(0);
}
if (process.platform !== 'linux') {
  log(`kqemu emulates kqueue on Linux epoll; this is ${process.platform}: build normally instead`);
  process.exit(1);
}
mkdirSync(libDir, { recursive: true });
const cc = process.env.CC || 'cc';
const cflags = (process.env.CFLAGS || '-O1 -g').split(/\s+/).filter(Boolean);
const ldflags = (process.env.LDFLAGS || '').split(/\s+/).filter(Boolean);
const ccArgs = [...cflags, '-std=c11', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-o', join(libDir, 'libkqueue.so'), join(emuDir, 'kqemu.c'), ...ldflags, '-lpthread'];
log(`${cc} ${ccArgs.join(' ')}`);
let r = spawnSync(cc, ccArgs, { stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);

const require = createRequire(join(pkgDir, 'package.json'));
const buildNative = join(dirname(require.resolve('@miniss/core/package.json')), 'scripts', 'build-native.mjs');
const env = { ...process.env, MINISS_KQUEUE_INCLUDE_DIR: join(emuDir, 'include'), MINISS_KQUEUE_LIB_DIR: libDir };
r = spawnSync(process.execPath, [buildNative, ...args.filter((a) => a === '--debug')], { cwd: pkgDir, stdio: 'inherit', env });
process.exit(r.status ?? 1);
