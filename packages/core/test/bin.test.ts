/**
 * The workspace `bin`s run through the links npm makes in node_modules/.bin, which needs the
 * built files executable (tsc writes them 0644; each build script ends with
 * tools/scripts/chmod-bins.mjs, see there).
 */
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../..', import.meta.url));

describe.runIf(process.platform !== 'win32')('bins', () => {
  it('`miniss doctor` runs through node_modules/.bin', () => {
    const r = spawnSync(join(root, 'node_modules', '.bin', 'miniss'), ['doctor'], { encoding: 'utf8', timeout: 20_000 });
    expect(r.error).toBeUndefined();
    expect(r.stdout).toContain('miniss doctor:');
  });

  it.each(['graceful-shutdown', 'hello-world', 'http-echo', 'multicore-demo', 'periodic-task-demo', 'timer-api-verification', 'timer-sleep'])(
    'the %s app is built executable',
    (app) => {
      expect(statSync(join(root, 'apps', app, 'dist', 'main.js')).mode & 0o111).toBe(0o111);
    },
  );
});
