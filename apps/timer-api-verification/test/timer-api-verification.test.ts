import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

describe('apps/timer-api-verification', () => {
  it('exercises every @miniss/timer API, prints each check and exits 0', () => {
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout).not.toContain('FAIL');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/on the '(io_uring|epoll|kqueue|node)' backend/);
    for (const line of [
      /ok {3}sleep outside a runtime fails with NO_RUNTIME/,
      /ok {3}sleep without the feature fails with FEATURE_UNAVAILABLE: .*features: \['timer'\]/,
      /ok {3}sleep\(30\) resolved after [\d.]+ ms/,
      /ok {3}sleep\(10000, \{ signal \}\) rejected with the signal's reason/,
      /ok {3}sleep\(-1\) fails with INVALID_ARGUMENT/,
      /ok {3}sleep\(NaN\) fails with INVALID_ARGUMENT/,
      /ok {3}sleep\(Infinity\) fails with INVALID_ARGUMENT/,
      /ok {3}new Interval\(0\) fails with INVALID_ARGUMENT/,
      /ok {3}timeout\(200, work done in 5 ms\) resolved with 'fast'/,
      /ok {3}timeout\(20, work of 5 s\) rejected with TimeoutError code TIMEOUT/,
      /ok {3}withTimeout\(fn\(signal\), 20\) rejected with TIMEOUT; the work's signal was aborted: true/,
      /ok {3}withTimeout\(work done in 1 ms, 500\) resolved with 42/,
      /ok {3}Interval\(10\): 3 ticks via tick\(\)/,
      /ok {3}Interval: 3 more ticks by for-await, then break cancelled it/,
      /ok {3}Interval.cancel\(\) rejects a pending tick with CANCELLED/,
      /ok {3}spawnPeriodic\(10, fn returning false on run 4\) stopped after 4 runs/,
      /ok {3}spawnPeriodic cancelled after [1-9]\d* runs \(cancel\(\) returned true\)/,
      /ok {3}spawnPeriodic rejected with fn's error 'boom on run 2' on run 2/,
      /ok {3}timers pending after the run: 0/,
    ]) {
      expect(r.stdout).toMatch(line);
    }
    expect(r.stdout).toContain('all timer API checks passed');
  });
});
