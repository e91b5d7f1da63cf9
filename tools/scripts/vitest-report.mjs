// Counts of one vitest JSON report (--reporter=json), shared by tools/scripts/test.mjs and
// tools/scripts/asan.mjs so that both count a run the same way.
import { existsSync, readFileSync } from 'node:fs';

/**
 * `{ passed, failed, skipped, failedFiles }` of the report at `file`, or undefined when there is
 * none. `failed` includes `failedFiles`: files vitest marked failed although none of their tests
 * failed (the file did not load, or a hook such as afterAll failed after its tests passed), each
 * counted as one failure.
 */
export function readVitestReport(file) {
  if (!existsSync(file)) return undefined;
  const r = JSON.parse(readFileSync(file, 'utf8'));
  const failedFiles = (r.testResults ?? []).filter(
    (f) => f.status === 'failed' && (f.assertionResults ?? []).every((a) => a.status !== 'failed'),
  ).length;
  return {
    passed: r.numPassedTests ?? 0,
    failed: (r.numFailedTests ?? 0) + failedFiles,
    skipped: (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0),
    failedFiles,
  };
}
