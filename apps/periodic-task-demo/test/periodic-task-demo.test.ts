import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

describe('apps/periodic-task-demo', () => {
  it('runs the periodic task N times, then it stops itself; a second one is cancelled', () => {
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/on the '(io_uring|epoll|kqueue|node)' backend: every 50 ms, 5 runs/);
    const at = [...r.stdout.matchAll(/run (\d+) at ([\d.]+) ms/g)].map((m) => [Number(m[1]), Number(m[2])] as const);
    expect(at.map(([n]) => n)).toEqual([1, 2, 3, 4, 5]);
    // Run k happens no earlier than k periods after the start.
    at.forEach(([n, t]) => expect(t).toBeGreaterThanOrEqual(50 * n));
    expect(r.stdout).toMatch(/periodic task stopped itself after 5 runs in [\d.]+ ms/);
    expect(r.stdout).toMatch(/second periodic task cancelled from outside after [1-9]\d* runs/);
    expect(r.stdout).toMatch(/tasks: \d+ spawned, \d+ completed; timers pending: 0/);
  });

  it('takes --runs and --period, and rejects nonsense', () => {
    const r = spawnSync(process.execPath, [main, '--runs', '3', '--period', '20'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('every 20 ms, 3 runs');
    expect(r.stdout).toMatch(/stopped itself after 3 runs/);
    const bad = spawnSync(process.execPath, [main, '--period', '0'], { encoding: 'utf8', timeout: 20_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('--period must be a positive integer');
  });
});
