#!/usr/bin/env node
// `npm test`: builds what changed (nx, cached), then runs every vitest test once and ends with the
// plain line `N passed, N failed` (skips are counted on the line before). Exits non-zero when a test failed or vitest did.
// Extra arguments go to vitest (e.g. `npm test -- packages/core`).
//
// In CI (CI set and not "false"/"0") or with MINISS_ASAN=1, it then runs the AddressSanitizer job
// (tools/scripts/asan.mjs: native addons rebuilt with -fsanitize=address, the same tests again with
// the ASan runtime preloaded) and the final line counts both runs; every ASan report counts as a
// failure. MINISS_ASAN=0 skips that job even in CI.
// On Linux, a full run (no vitest arguments) also builds the kqueue addon against the package's
// test-only emulation (kqemu), runs the kqueue tests on it and removes that build (MINISS_KQEMU=0 skips).
// A kqemu build left by an interrupted run is removed first, never reused; Ctrl-C/SIGTERM during
// that stage stops it, removes the kqemu build and exits 130/143.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nxBin, nxEnv } from './nx-env.mjs';
import { readVitestReport } from './vitest-report.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const kqemu = join(root, 'packages', 'backend-kqueue', 'scripts', 'build-kqemu.mjs');
const kqemuClean = () => spawnSync(process.execPath, [kqemu, '--clean'], { cwd: root, stdio: 'inherit' });
// A kqemu build left by an interrupted run would make the kqueue addon load in the plain run (and
// be reused): remove it before anything else (silent when there is none).
if (process.platform === 'linux') kqemuClean();
const build = spawnSync(process.execPath, [nxBin(root), 'run-many', '-t', 'build', '--outputStyle=static'], {
  cwd: root,
  stdio: 'inherit',
  env: nxEnv,
});
if (build.status !== 0) {
  console.log('build failed');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const userArgs = process.argv.slice(2);

/** The running child of the kqemu stage, which a signal stops; and the signal, once one came. */
let child;
let interrupted;

/** Runs a command to its end like spawnSync, but leaves the event loop free for signal handlers. */
function runAsync(cmd, args, opts) {
  return new Promise((resolve) => {
    child = spawn(cmd, args, opts);
    child.on('error', (error) => resolve({ status: null, signal: null, error }));
    child.on('exit', (status, signal) => resolve({ status, signal }));
  }).finally(() => {
    child = undefined;
  });
}

/**
 * One vitest run; counts from its JSON report (tools/scripts/vitest-report.mjs: a test file that
 * failed outside its tests counts as a failure). Async (runAsync) when `async` is set.
 */
function vitestRun(args, report, async = false) {
  rmSync(report, { force: true });
  const opts = { cwd: root, stdio: 'inherit', env: { ...nxEnv, FORCE_COLOR: process.env.CI ? '0' : (process.env.FORCE_COLOR ?? '') } };
  const argv = [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...args];
  const count = (run) => {
    const c = { passed: 0, failed: 0, skipped: 0, ...readVitestReport(report), status: run.status };
    if (run.status !== 0 && c.failed === 0) c.failed = 1;
    return c;
  };
  return async ? runAsync(process.execPath, argv, opts).then(count) : count(spawnSync(process.execPath, argv, opts));
}

const main = vitestRun(userArgs, join(root, 'test-results.json'));
let { passed, failed, skipped } = main;
const run = main;

// kqueue cannot run on Linux, but its addon builds against kqemu, the package's test-only kqueue
// emulation on epoll: build it, run the kqueue tests (conformance, its own, the fuzzer), remove it.
// build-kqemu.mjs keeps a normal build/ of the package aside and `--clean` puts it back, so the
// package's build state afterwards is exactly the one before. `--clean` also runs first (and at the
// top): whatever an interrupted run left (test/kqemu/build/ marks it) is removed, never reused.
if (process.platform === 'linux' && userArgs.length === 0 && process.env.MINISS_KQEMU !== '0') {
  const onSignal = (signal) => {
    if (interrupted) return;
    interrupted = signal;
    console.log(`\nkqueue on kqemu: ${signal}, stopping and removing the kqemu build`);
    child?.kill(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let k = { passed: 0, failed: 1, skipped: 0 };
  try {
    kqemuClean();
    if (!interrupted) {
      console.log('\nkqueue on kqemu (test-only emulation): building');
      const b = await runAsync(process.execPath, [kqemu], { cwd: root, stdio: 'inherit', env: nxEnv });
      if (b.status === 0 && !interrupted) {
        k = await vitestRun(
          ['packages/backend-kqueue', 'packages/core/test/conformance.test.ts', 'tools/hardening/test/fuzz-backend.test.ts', '-t', 'kqueue'],
          join(root, 'test-results-kqemu.json'),
          true,
        );
      } else if (!interrupted) {
        console.log('kqemu build failed');
      }
    }
  } finally {
    // Signals stay caught until this is done, so a second Ctrl-C cannot cut the clean-up short.
    kqemuClean();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (interrupted) {
    console.log(`interrupted (${interrupted})`);
    process.exit(interrupted === 'SIGINT' ? 130 : 143);
  }
  console.log(`kqueue on kqemu: ${k.passed} passed, ${k.failed} failed`);
  passed += k.passed;
  failed += k.failed;
}

const ci = process.env.CI !== undefined && !['', '0', 'false'].includes(process.env.CI.toLowerCase());
const asan = process.env.MINISS_ASAN === '1' || (ci && process.env.MINISS_ASAN !== '0');
if (asan) {
  console.log(`plain run: ${passed} passed, ${failed} failed`);
  const summaryFile = join(root, 'test-results-asan.json');
  rmSync(summaryFile, { force: true });
  const job = spawnSync(process.execPath, [join(root, 'tools', 'scripts', 'asan.mjs'), ...userArgs], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, MINISS_ASAN_SUMMARY: summaryFile },
  });
  let asanPassed = 0;
  let asanFailed = 1; // no summary means the job died before running the tests
  if (existsSync(summaryFile)) {
    const c = JSON.parse(readFileSync(summaryFile, 'utf8'));
    asanPassed = c.passed ?? 0;
    asanFailed = (c.failed ?? 0) + (c.asanReports ?? 0) + (c.buildFailed ? 1 : 0) + (c.error ? 1 : 0);
  }
  if (job.status !== 0 && asanFailed === 0) asanFailed = 1;
  console.log(`AddressSanitizer run: ${asanPassed} passed, ${asanFailed} failed (ASan reports count as failures)`);
  passed += asanPassed;
  failed += asanFailed;
} else {
  console.log('(AddressSanitizer run skipped: it runs in CI, or locally with MINISS_ASAN=1)');
}
// The line before the last one counts the skipped tests (README.md, Quick start, says so).
console.log(`(${skipped} skipped: backends or tools not available here, each test names its reason)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || run.status !== 0 ? 1 : 0);
