import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

describe('apps/hello-world', () => {
  it('runs to completion on the default backend and prints what it did', () => {
    const r = spawnSync(process.execPath, [main], { encoding: 'utf8', timeout: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/miniss hello-world on the '(io_uring|epoll|kqueue|node)' backend/);
    expect(r.stdout).toContain('4 tasks computed squares summing to 30');
    expect(r.stdout).toContain('wrote 14 bytes and read back "Hello, World!\\n"');
    expect(r.stdout).toMatch(/done: 5 tasks spawned, 5 completed; \d+ I\/O operations submitted, \d+ completed/);
  });

  it('runs on the portable node backend', () => {
    const r = spawnSync(process.execPath, [main, '--backend', 'node'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("on the 'node' backend");
  });

  it('fails clearly with an unknown backend', () => {
    const r = spawnSync(process.execPath, [main, '--backend', 'warp'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('INVALID_CONFIG');
  });
});
