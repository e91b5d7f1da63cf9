#!/usr/bin/env node
// `npm install` at the root builds everything: TypeScript of every workspace and the native
// addons of the backends this OS supports (each backend's build script skips what the OS lacks).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nxBin, nxEnv } from './nx-env.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
if (process.env.MINISS_SKIP_POSTINSTALL) process.exit(0);
if (!existsSync(nxBin(root))) {
  console.error('[miniss] nx is not installed yet; run `npm install` at the repository root');
  process.exit(0);
}
const r = spawnSync(process.execPath, [nxBin(root), 'run-many', '-t', 'build', '--outputStyle=static'], {
  cwd: root,
  stdio: 'inherit',
  env: nxEnv,
});
process.exit(r.status ?? 1);
