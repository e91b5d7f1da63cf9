import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

describe('apps/timer-sleep', () => {
  it('sleeps a few times, never early, prints the elapsed times and exits 0', () => {
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/miniss timer-sleep on the '(io_uring|epoll|kqueue|node)' backend/);
    for (const ms of [10, 50, 100, 200]) {
      const m = r.stdout.match(new RegExp(`sleep\\(${ms}\\) took ([\\d.]+) ms`));
      expect(m, `sleep(${ms}) line`).not.toBeNull();
      expect(Number(m![1])).toBeGreaterThanOrEqual(ms);
    }
    const c = r.stdout.match(/3 concurrent sleeps \(30, 60, 90 ms\) finished at ([\d.]+), ([\d.]+), ([\d.]+) ms/);
    expect(c).not.toBeNull();
    expect(c!.slice(1).map(Number).every((t, i) => t >= [30, 60, 90][i]!)).toBe(true);
    expect(r.stdout).toMatch(/timer wheel: 7 timers fired, 0 cancelled, 0 still pending, \d+ wake-ups/);
    expect(r.stdout).toContain('no sleep ended early');
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('runs on the portable node backend', () => {
    const r = spawnSync(process.execPath, [main, '--backend', 'node'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("on the 'node' backend");
  });
});
