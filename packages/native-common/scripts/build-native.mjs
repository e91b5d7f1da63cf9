#!/usr/bin/env node
// `miniss-build-native`: builds the node-gyp addon of the package in the current directory (a
// @miniss/backend-*), from its "install" script (and, in the monorepo, its "build" script).
//
// It is a bin of @miniss/native-common, which every backend has as a regular dependency (the C++
// it compiles in lives here too), so npm links it before it runs the backend's install script.
// @miniss/core, which backends only name as a peerDependency, may not be installed yet at that
// point (`--legacy-peer-deps`, a backend added before core, package managers that do not install
// peers), so the build must not depend on it. It uses nothing but Node's built-ins, node-gyp and
// the backend's own dependencies (nan, @miniss/native-common).
//
// node-gyp cannot download Node's headers on machines without internet access, so this points it
// at the headers of the running Node (`<prefix>/include/node`) when their version matches, and
// only falls back to node-gyp's own download when they are missing. When they are there but for
// another Node version it stops, before node-gyp deletes anything, and says which version it
// found and which Node runs (npm_config_nodedir, when set, is used as given).
// Flags:
//   --if-needed   skip the build when build/<Release|Debug>/ holds an addon whose stamp
//                 (miniss-build.json, written after every successful build) matches this build
//                 exactly: Node version and ABI (process.versions.modules), platform and arch,
//                 the Node headers directory, the compiler/linker environment (BUILD_ENV below)
//                 and a hash of every source (binding.gyp, native/, native-common's include/ and
//                 src/, nan's version).
//   --debug       a Debug build (used by the AddressSanitizer job)
// Each backend runs this with --if-needed from both its npm "install" script and its "build"
// script (the nx build target): a root `npm install` first runs the install scripts, which
// compile each addon, then the postinstall nx build, which then finds the stamps up to date, so
// every addon compiles once; after a source or toolchain change the stamp differs and
// `npm run build` compiles again. Without --if-needed it always rebuilds.
// The package's package.json may say `"miniss": { "nativeOs": ["linux"] }`: on any other OS
// nothing is compiled (the package's isSupported() then says why) and the install still succeeds.
// `"miniss": { "nativeEnv": ["A", "B"] }` builds outside nativeOs too when every one of those
// environment variables is set (the kqueue backend on Linux against a kqueue emulation library).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';

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

const config = args.has('--debug') ? 'Debug' : 'Release';
const outDir = join(cwd, 'build', config);
const stampFile = join(outDir, 'miniss-build.json');
// Environment that changes what node-gyp compiles (a build input in nx.json too, with
// npm_config_nodedir; the stamp records the headers directory actually used instead).
const BUILD_ENV = [
  'CC',
  'CXX',
  'LINK',
  'CPPFLAGS',
  'CFLAGS',
  'CXXFLAGS',
  'LDFLAGS',
  'MINISS_KQUEUE_INCLUDE_DIR',
  'MINISS_KQUEUE_LIB_DIR',
  'MINISS_FORCE_NATIVE_BUILD',
];
const require = createRequire(join(cwd, 'package.json'));

// Node's own headers next to the running Node: { dir, version } (version undefined if unreadable).
function localNodeHeaders() {
  const prefix = dirname(dirname(process.execPath));
  const header = join(prefix, 'include', 'node', 'node_version.h');
  if (!existsSync(header)) return undefined;
  const text = readFileSync(header, 'utf8');
  const parts = ['MAJOR', 'MINOR', 'PATCH'].map((k) => text.match(new RegExp(`#define NODE_${k}_VERSION (\\d+)`))?.[1]);
  return { dir: prefix, header, version: parts.every(Boolean) ? parts.join('.') : undefined };
}

// The headers node-gyp is pointed at: npm_config_nodedir as given, else the running Node's own
// when their version matches (else none: node-gyp's cache/download, or a stop below on a mismatch).
const localHeaders = process.env.npm_config_nodedir ? undefined : localNodeHeaders();
const nodedir = process.env.npm_config_nodedir || (localHeaders?.version === process.versions.node ? localHeaders.dir : undefined);

/** Hash of every file under `dir` (path relative to `base`, then contents), in a stable order. */
function hashTree(hash, dir, base) {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) hashTree(hash, p, base);
    else if (entry.isFile()) hash.update(`${relative(base, p)}\0`).update(readFileSync(p)).update('\0');
  }
}

/** What this build depends on; a build is reused (--if-needed) only when all of it is unchanged. */
function buildKey() {
  const hash = createHash('sha256');
  hash.update(readFileSync(join(cwd, 'binding.gyp')));
  hashTree(hash, join(cwd, 'native'), cwd);
  // Sources of @miniss/native-common when the package compiles them, and nan's headers (by version).
  for (const [dep, dirs] of [
    ['@miniss/native-common', ['include', 'src']],
    ['nan', []],
  ]) {
    if (!pkg.dependencies?.[dep]) continue;
    try {
      const depPkg = require.resolve(`${dep}/package.json`);
      hash.update(`${dep}@${JSON.parse(readFileSync(depPkg, 'utf8')).version}\0`);
      for (const d of dirs) hashTree(hash, join(dirname(depPkg), d), dirname(depPkg));
    } catch {
      hash.update(`${dep} missing\0`); // node-gyp will say so
    }
  }
  return {
    node: process.versions.node,
    abi: process.versions.modules,
    platform: process.platform,
    arch: process.arch,
    config,
    nodedir: nodedir ?? '(node-gyp cache or download)',
    env: Object.fromEntries(BUILD_ENV.map((k) => [k, process.env[k] ?? ''])),
    sources: hash.digest('hex'),
  };
}

const key = buildKey();
if (args.has('--if-needed')) {
  const built = existsSync(outDir) ? readdirSync(outDir).filter((f) => f.endsWith('.node')) : [];
  let stamp;
  try {
    stamp = JSON.parse(readFileSync(stampFile, 'utf8'));
  } catch {
    stamp = undefined;
  }
  if (built.length > 0 && JSON.stringify(stamp) === JSON.stringify(key)) {
    log('native addon is up to date');
    process.exit(0);
  }
  if (built.length > 0) {
    const why = !stamp
      ? 'it has no build stamp'
      : Object.keys(key)
          .filter((k) => JSON.stringify(stamp[k]) !== JSON.stringify(key[k]))
          .map((k) => {
            if (k === 'sources') return 'sources changed';
            if (k !== 'env') return `${k} ${JSON.stringify(stamp[k])} -> ${JSON.stringify(key[k])}`;
            const changed = BUILD_ENV.filter((e) => stamp.env?.[e] !== key.env[e]);
            return changed.map((e) => `${e} ${JSON.stringify(stamp.env?.[e] ?? '')} -> ${JSON.stringify(key.env[e])}`).join(', ');
          })
          .filter(Boolean)
          .join('; ') || 'its stamp is from another version of this script';
    log(`rebuilding the existing addon (${why})`);
  }
}

// node-gyp: one installed where the package can resolve it (the monorepo pins one), else the one
// npm runs install scripts with (npm sets npm_config_node_gyp in every lifecycle script), else the
// copy bundled with the npm next to this Node.
let gypBin;
const gypTried = [`node-gyp from ${cwd}`];
try {
  gypBin = require.resolve('node-gyp/bin/node-gyp.js');
} catch {
  /* tried below */
}
const npmGyp = process.env.npm_config_node_gyp;
if (npmGyp) gypTried.push(`npm_config_node_gyp=${npmGyp}`);
if (!gypBin && npmGyp && /\.[cm]?js$/.test(npmGyp) && existsSync(npmGyp)) gypBin = npmGyp;
const npmBundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
gypTried.push(npmBundled);
if (!gypBin && existsSync(npmBundled)) gypBin = npmBundled;
if (!gypBin) {
  log(`cannot find node-gyp (tried ${gypTried.join(', ')}); install it with: npm install -D node-gyp`);
  process.exit(1);
}

const gypArgs = [gypBin, 'rebuild'];
if (process.env.npm_config_nodedir) {
  log(`Node headers: npm_config_nodedir=${nodedir} (running Node ${process.versions.node})`);
} else if (localHeaders && !nodedir) {
  // Checked before node-gyp runs: `rebuild` deletes build/ first, and its download fallback
  // fails offline, which would leave no addon at all.
  log(
    `the Node headers at ${localHeaders.header} are for Node ${localHeaders.version ?? '(unreadable version)'}, but Node ${process.versions.node} ` +
      `(${process.execPath}) runs this build; an addon compiled against them would not load. Set npm_config_nodedir to ` +
      `a directory whose include/node/ holds the headers of Node ${process.versions.node}, or build with the Node those ` +
      `headers belong to. Nothing was built or deleted.`,
  );
  process.exit(1);
} else if (!localHeaders) {
  log(`no Node headers next to ${process.execPath}; node-gyp will use its cache or download those of Node ${process.versions.node}`);
}
if (nodedir) gypArgs.push(`--nodedir=${nodedir}`);
if (args.has('--debug')) gypArgs.push('--debug');
gypArgs.push(`--jobs=${process.env.JOBS ?? 'max'}`);
log(`node ${gypArgs.slice(1).join(' ')}`);
const r = spawnSync(process.execPath, gypArgs, { cwd, stdio: 'inherit', env: process.env });
if (r.status !== 0) {
  log(`native build failed (exit ${r.status ?? r.signal}); see the compiler output above`);
  process.exit(r.status ?? 1);
}
// A target without sources on this OS (a forced build elsewhere) produces no build/<config>/.
if (existsSync(outDir)) writeFileSync(stampFile, `${JSON.stringify(key, null, 2)}\n`);
