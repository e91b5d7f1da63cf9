#!/usr/bin/env node
// `npm test`: builds what changed (nx, cached), then runs every vitest test once and ends with the
// plain line `N passed, N failed` (skips are counted on the line before). Exits non-zero when a test failed or vitest did.
// Extra arguments go to vitest (e.g. `npm test -- packages/core`).
//
// In CI (CI set and not "false"/"0") or with MINISS_ASAN=1, it then runs the AddressSanitizer job
// (tools/scripts/asan.mjs: native addons rebuilt with -fsanitize=address, the same tests again with
// the ASan runtime preloaded) and the final line counts both runs; every ASan report counts as a
// failure. MINISS_ASAN=0 skips that job even in CI.
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

const report = join(root, 'test-results.json');
rmSync(report, { force: true });
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const run = spawnSync(
  process.execPath,
  [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)],
  { cwd: root, stdio: 'inherit', env: { ...nxEnv, FORCE_COLOR: process.env.CI ? '0' : (process.env.FORCE_COLOR ?? '') } },
);

let passed = 0;
let failed = 0;
let skipped = 0;
if (existsSync(report)) {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  passed = r.numPassedTests ?? 0;
  failed = r.numFailedTests ?? 0;
  skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // A test file that failed to load counts as a failure even though it ran no test.
  const brokenFiles = (r.testResults ?? []).filter((f) => f.status === 'failed' && (f.assertionResults ?? []).every((a) => a.status !== 'failed'));
  failed += brokenFiles.length;
}
if (run.status !== 0 && failed === 0) failed = 1;
console.log(`(${skipped} skipped: backends or tools not available here, each test names its reason)`);

const ci = process.env.CI !== undefined && !['', '0', 'false'].includes(process.env.CI.toLowerCase());
const asan = process.env.MINISS_ASAN === '1' || (ci && process.env.MINISS_ASAN !== '0');
if (asan) {
  console.log(`plain run: ${passed} passed, ${failed} failed`);
  const summaryFile = join(root, 'test-results-asan.json');
  rmSync(summaryFile, { force: true });
  const job = spawnSync(process.execPath, [join(root, 'tools', 'scripts', 'asan.mjs'), ...process.argv.slice(2)], {
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
