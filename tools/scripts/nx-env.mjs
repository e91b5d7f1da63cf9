// nx must never reach for the network or a daemon here: CI and fresh machines are offline.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const nxEnv = {
  ...process.env,
  NX_DAEMON: 'false',
  NX_NO_CLOUD: 'true',
  NX_TUI: 'false',
};

/** Path of nx's CLI entry, read from its package.json `bin` (it moved between nx majors). */
export function nxBin(root) {
  const pkgPath = join(root, 'node_modules', 'nx', 'package.json');
  if (!existsSync(pkgPath)) return join(root, 'node_modules', 'nx', 'dist', 'bin', 'nx.js');
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'));
  const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin?.nx;
  return join(root, 'node_modules', 'nx', bin ?? 'dist/bin/nx.js');
}
