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
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nxBin, nxEnv } from './nx-env.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
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

/** One vitest run; counts from its JSON report (a test file that failed to load counts as a failure). */
function vitestRun(args, report) {
  rmSync(report, { force: true });
  const run = spawnSync(process.execPath, [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...args], {
    cwd: root,
    stdio: 'inherit',
    env: { ...nxEnv, FORCE_COLOR: process.env.CI ? '0' : (process.env.FORCE_COLOR ?? '') },
  });
  const c = { passed: 0, failed: 0, skipped: 0, status: run.status };
  if (existsSync(report)) {
    const r = JSON.parse(readFileSync(report, 'utf8'));
    c.passed = r.numPassedTests ?? 0;
    c.failed = r.numFailedTests ?? 0;
    c.skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    const brokenFiles = (r.testResults ?? []).filter((f) => f.status === 'failed' && (f.assertionResults ?? []).every((a) => a.status !== 'failed'));
    c.failed += brokenFiles.length;
  }
  if (run.status !== 0 && c.failed === 0) c.failed = 1;
  return c;
}

const main = vitestRun(userArgs, join(root, 'test-results.json'));
let { passed, failed, skipped } = main;
const run = main;

// kqueue cannot run on Linux, but its addon builds against kqemu, the package's test-only kqueue
// emulation on epoll: build it, run the kqueue tests (conformance, its own, the fuzzer), remove it.
const kqueueAddon = join(root, 'packages', 'backend-kqueue', 'build');
if (process.platform === 'linux' && userArgs.length === 0 && process.env.MINISS_KQEMU !== '0' && !existsSync(kqueueAddon)) {
  const kqemu = join(root, 'packages', 'backend-kqueue', 'scripts', 'build-kqemu.mjs');
  console.log('\nkqueue on kqemu (test-only emulation): building');
  const b = spawnSync(process.execPath, [kqemu], { cwd: root, stdio: 'inherit', env: nxEnv });
  let k = { passed: 0, failed: 1, skipped: 0 };
  if (b.status === 0) {
    k = vitestRun(
      ['packages/backend-kqueue', 'packages/core/test/conformance.test.ts', 'tools/hardening/test/fuzz-backend.test.ts', '-t', 'kqueue'],
      join(root, 'test-results-kqemu.json'),
    );
  } else {
    console.log('kqemu build failed');
  }
  spawnSync(process.execPath, [kqemu, '--clean'], { cwd: root, stdio: 'inherit' });
  console.log(`kqueue on kqemu: ${k.passed} passed, ${k.failed} failed`);
  passed += k.passed;
  failed += k.failed;
}
console.log(`(${skipped} skipped: backends or tools not available here, each test names its reason)`);

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
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || run.status !== 0 ? 1 : 0);
