#!/usr/bin/env node
// Builds the node-gyp addon of the package in the current directory (a @miniss/backend-*).
//
// node-gyp cannot download Node's headers on machines without internet access, so this points it
// at the headers of the running Node (`<prefix>/include/node`) when their version matches, and
// only falls back to node-gyp's own download when they are missing. Flags:
//   --if-needed   skip the build when build/Release/<target>.node is newer than every source
//   --debug       a Debug build (used by the AddressSanitizer job)
// The package's package.json may say `"miniss": { "nativeOs": ["linux"] }`: on any other OS
// nothing is compiled (the package's isSupported() then says why) and the install still succeeds.
// `"miniss": { "nativeEnv": ["A", "B"] }` builds outside nativeOs too when every one of those
// environment variables is set (the kqueue backend on Linux against a kqueue emulation library).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const cwd = process.cwd();
const pkg = JSON.parse(readFileSync(join(cwd, 'package.json'), 'utf8'));
const args = new Set(process.argv.slice(2));
const log = (msg) => process.stderr.write(`[${pkg.name}] ${msg}\n`);

const nativeOs = pkg.miniss?.nativeOs;
const nativeEnv = Array.isArray(pkg.miniss?.nativeEnv) ? pkg.miniss.nativeEnv : [];
const envOverride = nativeEnv.length > 0 && nativeEnv.every((k) => !!process.env[k]);
if (Array.isArray(nativeOs) && !nativeOs.includes(process.platform) && !process.env.MINISS_FORCE_NATIVE_BUILD && !envOverride) {
  const hint = nativeEnv.length > 0 ? `; to build here anyway set ${nativeEnv.join(' and ')}` : '';
  log(`nothing to compile on ${process.platform} (native code is for ${nativeOs.join(', ')}); isSupported() will say so${hint}`);
  process.exit(0);
}

function newestMtime(dir) {
  let newest = 0;
  if (!existsSync(dir)) return newest;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

if (args.has('--if-needed')) {
  const rel = join(cwd, 'build', 'Release');
  const built = existsSync(rel) ? readdirSync(rel).filter((f) => f.endsWith('.node')) : [];
  if (built.length > 0) {
    const out = Math.min(...built.map((f) => statSync(join(rel, f)).mtimeMs));
    // Sources of this package, plus those of @miniss/native-common when the package compiles them.
    const dirs = [join(cwd, 'native')];
    if (pkg.dependencies?.['@miniss/native-common']) {
      try {
        const common = dirname(createRequire(join(cwd, 'package.json')).resolve('@miniss/native-common/package.json'));
        dirs.push(join(common, 'include'), join(common, 'src'));
      } catch {
        // not installed: node-gyp will say so
      }
    }
    const src = Math.max(...dirs.map((d) => (existsSync(d) ? newestMtime(d) : 0)), statSync(join(cwd, 'binding.gyp')).mtimeMs);
    if (out >= src) {
      log('native addon is up to date');
      process.exit(0);
    }
  }
}

// Node's own headers, when they match the running Node exactly.
function localNodeDir() {
  const prefix = dirname(dirname(process.execPath));
  const header = join(prefix, 'include', 'node', 'node_version.h');
  if (!existsSync(header)) return undefined;
  const text = readFileSync(header, 'utf8');
  const v = ['MAJOR', 'MINOR', 'PATCH'].map((k) => text.match(new RegExp(`#define NODE_${k}_VERSION (\\d+)`))?.[1]).join('.');
  return v === process.versions.node ? prefix : undefined;
}

const require = createRequire(join(cwd, 'package.json'));
let gypBin;
for (const candidate of ['node-gyp/bin/node-gyp.js']) {
  try {
    gypBin = require.resolve(candidate);
  } catch {
    /* tried below */
  }
}
const npmBundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
if (!gypBin && existsSync(npmBundled)) gypBin = npmBundled;
if (!gypBin) {
  log(`cannot find node-gyp (tried node-gyp from ${cwd} and ${npmBundled}); install it with: npm install -D node-gyp`);
  process.exit(1);
}

const gypArgs = [gypBin, 'rebuild'];
const nodedir = process.env.npm_config_nodedir || localNodeDir();
if (nodedir) gypArgs.push(`--nodedir=${nodedir}`);
if (args.has('--debug')) gypArgs.push('--debug');
gypArgs.push(`--jobs=${process.env.JOBS ?? 'max'}`);
log(`node ${gypArgs.slice(1).join(' ')}`);
const r = spawnSync(process.execPath, gypArgs, { cwd, stdio: 'inherit', env: process.env });
if (r.status !== 0) {
  log(`native build failed (exit ${r.status ?? r.signal}); see the compiler output above`);
  process.exit(r.status ?? 1);
}
