#!/usr/bin/env node
// `npm test`: builds what changed (nx, cached), then runs every vitest test once and ends with the
// plain line `N passed, N failed` (skips are counted on the line before). Exits non-zero when a test failed or vitest did.
// Extra arguments go to vitest (e.g. `npm test -- packages/core`).
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
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || run.status !== 0 ? 1 : 0);
