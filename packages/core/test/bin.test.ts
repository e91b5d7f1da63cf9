/**
 * The workspace `bin`s run through the links npm makes in node_modules/.bin. Each names a
 * committed, executable file under `bin/` that imports the build: npm links bins at install time,
 * before a fresh clone has been built, and leaves out a link whose target does not exist yet.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const bin = (name: string): string => join(root, 'node_modules', '.bin', name);

describe.runIf(process.platform !== 'win32')('bins', () => {
  it('`miniss doctor` runs through node_modules/.bin', () => {
    const r = spawnSync(bin('miniss'), ['doctor'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.error).toBeUndefined();
    expect(r.stdout).toContain('miniss doctor:');
  });

  it('`miniss doctor` with an invalid MINISS_BACKEND says every runtime would refuse to start, picks nothing and exits 1', () => {
    const r = spawnSync(bin('miniss'), ['doctor'], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, MINISS_BACKEND: 'iouring' } });
    expect(r.error).toBeUndefined();
    expect(r.stdout).toMatch(/configuration error .*MINISS_BACKEND='iouring' is not a backend/);
    expect(r.stdout).toContain('auto would pick: nothing');
    expect(r.status).toBe(1);
    const j = spawnSync(bin('miniss'), ['doctor', '--json'], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, MINISS_BACKEND: 'iouring' } });
    const report = JSON.parse(j.stdout) as { autoPick: unknown; envOverride: unknown; configError: unknown };
    expect(report).toMatchObject({ autoPick: null, envOverride: 'iouring', configError: expect.stringContaining('is not a backend') });
  });

  it('`miniss-http-echo` runs through node_modules/.bin (a bad option: usage, exit 2)', () => {
    const r = spawnSync(bin('miniss-http-echo'), ['--port', 'x'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('usage: miniss-http-echo');
  });

  it.each(['graceful-shutdown', 'hello-world', 'multicore-demo', 'periodic-task-demo', 'timer-api-verification', 'timer-sleep'])(
    'the miniss-%s link is there',
    (app) => {
      // Running them would start servers and timers; the link's presence is what a fresh install broke.
      const r = spawnSync('test', ['-x', bin(`miniss-${app}`)]);
      expect(r.status).toBe(0);
    },
  );
});
