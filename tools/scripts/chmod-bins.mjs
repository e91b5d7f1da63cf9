#!/usr/bin/env node
// Makes the `bin` targets of the package in the current directory executable; the last step of
// the build script of every workspace that has a `bin` (`tsc ... && node ../../tools/scripts/chmod-bins.mjs`).
//
// `npx miniss`, `npx miniss-http-echo`... run the file a package.json `bin` names through the link
// npm made in node_modules/.bin, so it must be executable. npm chmods a bin target when it links
// it, but on a fresh clone it links the workspaces before anything is built (the target does not
// exist yet), and tsc creates its output files 0644. It has to happen in the build script itself:
// nx caches a build's outputs as they are when the script ends and restores them from that copy,
// mode included, whenever it replays a cached build (as `npm start` and `npm test` do).
import { chmodSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.cwd();
const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
const bins = typeof pkg.bin === 'string' ? [pkg.bin] : Object.values(pkg.bin ?? {});
for (const bin of bins) {
  const target = join(dir, bin);
  const mode = statSync(target).mode & 0o7777;
  // r -> x for whoever may read it: 0644 becomes 0755, 0600 becomes 0700.
  const want = mode | ((mode & 0o444) >> 2);
  if (want !== mode) chmodSync(target, want);
}
