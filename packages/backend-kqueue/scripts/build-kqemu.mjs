#!/usr/bin/env node
// Builds the kqueue addon on Linux against kqemu, the TEST-ONLY kqueue emulation in test/kqemu
// (Debian 12 has no libkqueue package). Two steps:
//   1. cc -shared test/kqemu/kqemu.c -> test/kqemu/build/libkqueue.so
//   2. miniss-build-native with MINISS_KQUEUE_INCLUDE_DIR=test/kqemu/include and
//      MINISS_KQUEUE_LIB_DIR=test/kqemu/build (the same route a real libkqueue takes).
// Afterwards isSupported() is ok on this machine and the core conformance suite runs the kqueue
// block. Remove the result with `--clean`, which puts back exactly what was there before.
// Flags: --debug (a Debug build, e.g. with CC/CXX/CFLAGS/CXXFLAGS/LDFLAGS set for AddressSanitizer).
//
// State, so that an interrupted build, test run or clean is always recoverable:
//   - test/kqemu/build/ exists from before anything is built until the very end of `--clean`:
//     while it exists, build/ is kqemu's (or half of it) and never a normal build.
//   - a normal build/ found when starting (e.g. against a real libkqueue) is first moved to
//     tmp/build-before-kqemu/ (git-ignored) and moved back by `--clean`.
// Building starts with the same steps as `--clean`, so a leftover of an interrupted run is removed
// instead of being mistaken for a normal build.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, rmdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const emuDir = join(pkgDir, 'test', 'kqemu');
const libDir = join(emuDir, 'build');
const log = (msg) => process.stderr.write(`[build-kqemu] ${msg}\n`);
const addonDir = join(pkgDir, 'build');
const savedDir = join(pkgDir, 'tmp', 'build-before-kqemu');
const args = process.argv.slice(2);

/** Removes kqemu's build (and any leftover of an interrupted one) and puts back the normal build/. */
function clean() {
  const done = [];
  if (existsSync(libDir)) {
    // Marker still there: build/ is kqemu's. The marker goes last, so an interrupted clean repeats.
    rmSync(addonDir, { recursive: true, force: true });
    rmSync(libDir, { recursive: true, force: true });
    done.push('removed the kqemu build (build/ and test/kqemu/build/)');
  }
  if (existsSync(savedDir)) {
    if (existsSync(addonDir)) {
      // Built normally since (kqemu's build was already gone): that build is the newer one.
      rmSync(savedDir, { recursive: true, force: true });
      done.push('dropped tmp/build-before-kqemu/ (build/ was rebuilt since)');
    } else {
      renameSync(savedDir, addonDir);
      done.push('restored the build/ from before kqemu');
    }
    try {
      rmdirSync(dirname(savedDir)); // tmp/, unless something else is in it
    } catch {
      /* not empty */
    }
  }
  return done;
}

if (args.includes('--clean')) {
  const done = clean();
  if (done.length) log(done.join('; ')); // silent when there was nothing (tools/scripts/test.mjs runs it at every start)
  process.exit(0);
}
if (process.platform !== 'linux') {
  log(`kqemu emulates kqueue on Linux epoll; this is ${process.platform}: build normally instead`);
  process.exit(1);
}
for (const line of clean()) log(`before building: ${line}`);
if (existsSync(addonDir)) {
  // A normal build (no kqemu marker): keep it for --clean. Moved before the marker is created, so
  // that an interruption in between cannot get it deleted as kqemu's.
  mkdirSync(dirname(savedDir), { recursive: true });
  renameSync(addonDir, savedDir);
  log('moved the existing build/ to tmp/build-before-kqemu/ (--clean puts it back)');
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
const buildNative = join(dirname(require.resolve('@miniss/native-common/package.json')), 'scripts', 'build-native.mjs');
const env = { ...process.env, MINISS_KQUEUE_INCLUDE_DIR: join(emuDir, 'include'), MINISS_KQUEUE_LIB_DIR: libDir };
r = spawnSync(process.execPath, [buildNative, ...args.filter((a) => a === '--debug')], { cwd: pkgDir, stdio: 'inherit', env });
process.exit(r.status ?? 1);
