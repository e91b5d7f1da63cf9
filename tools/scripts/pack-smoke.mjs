#!/usr/bin/env node
// Packs every published @miniss/* package and installs the tarballs into throwaway projects outside
// the monorepo, then uses them there as a user would (tools/scripts/pack-smoke-user.mjs):
//
//   node tools/scripts/pack-smoke.mjs [--keep]
//
// 1. Can npm (registry or local cache, --prefer-offline) provide the third-party dependencies of
//    the packages (nan)? If it cannot, there is nothing to test: exit 77 with the reason (SKIP).
// 2. Copies packages/* (without node_modules, dist, build, test) to a temp dir and runs `npm pack` in
//    each copy, dependencies first: each package's prepack builds dist/ from a clean tree. The
//    checkout itself is never written to (tests running next to this one load its dist/).
// 3. Checks each tarball: package.json, README.md and LICENSE; every file main/types/exports/bin
//    name; binding.gyp and native sources for a native backend; the sources every source map
//    names; no tests, build/ output or tsconfig; an install script that runs a bin of the package
//    itself or of a regular dependency (a peer may not be installed yet when it runs).
// 4. Installs into fresh projects (npm install --prefer-offline, the backends' install scripts
//    approved as npm 11's allowScripts asks) and runs the smoke script there:
//    - all:    every package; every backend that works in this checkout (`miniss doctor`) works
//              from the tarballs, plus 'node' and 'auto'; a file read and a TCP echo on each;
//              timer, signal, multicore; the `miniss` bin; the types check with tsc.
//    - single: one native backend installed before core (--legacy-peer-deps: core absent while
//              its install script builds the addon), then core; the other backends are refused.
//    - core:   core alone: 'auto' runs on the portable node backend, the rest is refused.
// 5. Removes the temp dir (--keep or MINISS_PACK_SMOKE_KEEP=1 keeps it), prints
//    `pack-smoke: PASS|FAIL|SKIP (...)` and exits 0, 1 or 77.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SKIP = 77;
/** Pack order: a package after what its prepack (tsc) needs. */
const PACKAGES = ['native-common', 'core', 'backend-iouring', 'backend-epoll', 'backend-kqueue', 'timer', 'signal', 'multicore'];
const NATIVE = { io_uring: 'backend-iouring', epoll: 'backend-epoll', kqueue: 'backend-kqueue' };

const t0 = Date.now();
const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
const log = (msg) => console.log(`[pack-smoke ${secs()}s] ${msg}`);
const keep = process.argv.includes('--keep') || process.env.MINISS_PACK_SMOKE_KEEP === '1';

class Failure extends Error {}
class Skip extends Error {}

/**
 * The environment of every child: this process's, without what `npm test`/vitest/the caller set
 * for the monorepo (npm's per-run config such as local_prefix, package and lifecycle variables,
 * MINISS_* overrides such as MINISS_BACKEND or a kqemu include dir). npm settings of the machine
 * (cache, registry, proxies, certificates, nodedir) stay.
 */
function childEnv() {
  const keepNpm = /^npm_config_(cache|userconfig|globalconfig|registry|.*:registry|cafile|ca|cert|key|proxy|https?_proxy|noproxy|strict_ssl|nodedir|python|fetch_.*|maxsockets|\/\/.*)$/i;
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) && !keepNpm.test(k)) continue;
    if (/^(MINISS_|VITEST|INIT_CWD$|NODE_PATH$)/.test(k)) continue;
    env[k] = v;
  }
  return env;
}
const ENV = childEnv();

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, env: ENV, ...opts });
  return { status: r.status, signal: r.signal, error: r.error, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, stdout: r.stdout ?? '' };
}
const tail = (text, lines = 40) => text.trimEnd().split('\n').slice(-lines).join('\n');
function must(r, what) {
  if (r.status === 0) return r;
  throw new Failure(`${what} failed (exit ${r.status ?? r.signal ?? r.error?.message}):\n${tail(r.out)}`);
}
const npm = (args, cwd) => run(process.platform === 'win32' ? 'npm.cmd' : 'npm', args, { cwd });

const work = mkdtempSync(join(tmpdir(), 'miniss-pack-smoke-'));
function cleanup() {
  if (keep) console.log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    cleanup();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

const readJson = (p) => JSON.parse(readFileSync(p, 'utf8'));
const pkgJson = Object.fromEntries(PACKAGES.map((p) => [p, readJson(join(root, 'packages', p, 'package.json'))]));

/** 1. npm must be able to provide the third-party dependencies, else the test cannot run here. */
function probeThirdParty() {
  const deps = new Map();
  for (const p of PACKAGES) {
    for (const [name, range] of Object.entries(pkgJson[p].dependencies ?? {})) if (!name.startsWith('@miniss/')) deps.set(name, range);
  }
  const cwd = join(work, 'probe');
  mkdirSync(cwd);
  for (const [name, range] of deps) {
    // One retry, soon: an unreachable registry is known in seconds, not after npm's default ~70 s.
    const r = npm(['cache', 'add', `${name}@${range}`, '--prefer-offline', '--fetch-retries=1', '--fetch-retry-mintimeout=1000', '--fetch-retry-maxtimeout=5000'], cwd);
    if (r.status === 0) continue;
    const code = r.out.match(/npm error code (\S+)/)?.[1] ?? '';
    const unreachable =
      /^(ENOTCACHED|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|E404|E5\d\d|ERR_SOCKET_TIMEOUT|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/.test(code) ||
      /network|getaddrinfo|socket hang up|cache mode is 'only-if-cached'/i.test(r.out);
    const why = `${name}@${range} (a dependency of the published packages) cannot be fetched: the registry is unreachable and the npm cache does not hold it (npm: ${code || 'error'})`;
    if (unreachable) throw new Skip(why);
    throw new Failure(`npm cache add ${name}@${range} failed:\n${tail(r.out)}`);
  }
  log(`third-party dependencies available: ${[...deps].map(([n, r]) => `${n}@${r}`).join(', ') || 'none'}`);
}

/** 2. A copy of packages/* whose node_modules resolves @miniss/* to the copies, the rest to the checkout's. */
function copyTree() {
  const src = join(work, 'src');
  for (const p of PACKAGES) {
    cpSync(join(root, 'packages', p), join(src, 'packages', p), {
      recursive: true,
      filter: (from) => {
        const rel = relative(join(root, 'packages', p), from).split(/[\\/]/);
        return !['node_modules', 'dist', 'build', 'test'].includes(rel[0]) && !from.endsWith('.tsbuildinfo');
      },
    });
  }
  cpSync(join(root, 'tsconfig.base.json'), join(src, 'tsconfig.base.json'));
  const nm = join(root, 'node_modules');
  const cnm = join(src, 'node_modules');
  mkdirSync(join(cnm, '@miniss'), { recursive: true });
  for (const entry of readdirSync(nm)) {
    if (entry !== '@miniss') symlinkSync(join(nm, entry), join(cnm, entry));
  }
  for (const entry of readdirSync(join(nm, '@miniss'))) {
    const target = PACKAGES.includes(entry) ? join(src, 'packages', entry) : join(nm, '@miniss', entry);
    symlinkSync(target, join(cnm, '@miniss', entry));
  }
  return src;
}

/** Every file path a package.json field points at (main, types, exports' leaves, bin). */
function entryFiles(pkg) {
  const out = new Set();
  const add = (v) => {
    if (typeof v === 'string') {
      if (!v.includes('*')) out.add(posix.normalize(v));
    } else if (v && typeof v === 'object') Object.values(v).forEach(add);
  };
  add(pkg.main);
  add(pkg.types);
  add(pkg.exports);
  add(pkg.bin);
  return [...out];
}

/** 3. What a tarball must and must not hold. */
function checkTarball(p, dir, files) {
  const pkg = pkgJson[p];
  const has = new Set(files);
  const problems = [];
  for (const f of ['package.json', 'README.md', 'LICENSE']) if (!has.has(f)) problems.push(`no ${f}`);
  if (has.has('LICENSE') && !/MIT License/.test(readFileSync(join(dir, 'LICENSE'), 'utf8'))) problems.push('LICENSE is not the MIT license');
  for (const f of entryFiles(pkg)) if (!has.has(f)) problems.push(`package.json names ${f}, which is not in the tarball`);
  for (const b of Object.values(typeof pkg.bin === 'string' ? { [pkg.name]: pkg.bin } : (pkg.bin ?? {}))) {
    const f = posix.normalize(b);
    if (has.has(f) && !readFileSync(join(dir, f), 'utf8').startsWith('#!')) problems.push(`bin ${f} has no #! line`);
  }
  if (existsSync(join(dir, 'binding.gyp'))) {
    if (!has.has('binding.gyp')) problems.push('no binding.gyp');
    if (!files.some((f) => f.startsWith('native/') && f.endsWith('.cc'))) problems.push('no native/*.cc');
  }
  for (const f of files) {
    if (/(^|\/)(build|node_modules)\//.test(f) || /\.test\.|(^|\/)tsconfig[^/]*\.json$|\.tsbuildinfo$|\.node$/.test(f)) {
      problems.push(`ships ${f}`);
    }
    if (f.endsWith('.map')) {
      const map = readJson(join(dir, f));
      for (const s of map.sources ?? []) {
        const target = posix.normalize(posix.join(posix.dirname(f), map.sourceRoot ?? '', s));
        if (!has.has(target)) problems.push(`${f} maps to ${target}, which is not in the tarball`);
      }
    }
  }
  // An install script runs before npm has necessarily installed the package's peers: the command
  // it starts must be a bin of the package itself or of a regular dependency.
  for (const script of ['preinstall', 'install', 'postinstall']) {
    const cmd = pkg.scripts?.[script]?.trim().split(/\s+/)[0];
    if (!cmd || cmd === 'node') continue;
    const owners = [p, ...Object.keys(pkg.dependencies ?? {}).map((d) => d.replace('@miniss/', ''))].filter((o) => {
      const b = pkgJson[o]?.bin;
      return b && typeof b === 'object' && Object.hasOwn(b, cmd);
    });
    const peerOnly = Object.keys(pkg.peerDependencies ?? {}).some((d) => pkgJson[d.replace('@miniss/', '')]?.bin?.[cmd]);
    if (owners.length === 0) {
      problems.push(`"${script}": "${pkg.scripts[script]}" runs ${cmd}, which is no bin of ${pkg.name} or of its dependencies${peerOnly ? ' (only of a peerDependency, which may be missing when it runs)' : ''}`);
    }
  }
  if (problems.length > 0) throw new Failure(`${pkg.name} tarball:\n  ${problems.join('\n  ')}`);
}

/** 2 + 3. Packs each copy (its prepack builds dist/) and checks the tarball; returns { name: path }. */
function packAll(src) {
  const dest = join(work, 'tarballs');
  mkdirSync(dest);
  const tarballs = {};
  for (const p of PACKAGES) {
    const dir = join(src, 'packages', p);
    const r = must(npm(['pack', '--pack-destination', dest, '--json'], dir), `npm pack of ${pkgJson[p].name}`);
    // Lifecycle output may come first; the JSON report is the last top-level array.
    const at = r.stdout.lastIndexOf('\n[');
    const report = JSON.parse(at >= 0 ? r.stdout.slice(at + 1) : r.stdout.slice(r.stdout.indexOf('[')))[0];
    const files = report.files.map((f) => f.path);
    checkTarball(p, dir, files);
    tarballs[p] = join(dest, report.filename);
  }
  log(`packed and checked ${PACKAGES.length} tarballs: ${Object.values(tarballs).map((t) => basename(t)).join(', ')}`);
  return tarballs;
}

/** The backends that work in this checkout, by its own `miniss doctor --json`. */
function referenceBackends() {
  const r = must(run(process.execPath, [join(root, 'packages', 'core', 'bin', 'miniss.js'), 'doctor', '--json'], { cwd: root }), 'miniss doctor in the checkout');
  const report = JSON.parse(r.stdout);
  return report.backends.filter((b) => b.ok && b.name !== 'node').map((b) => b.name);
}

/** A fresh project outside the monorepo; `approve` are the tarballs whose install scripts may run. */
function project(name, approve) {
  const dir = join(work, 'projects', name);
  mkdirSync(dir, { recursive: true });
  // npm 11 asks for dependencies' install scripts to be approved (package.json allowScripts, keyed
  // by the resolved identity: file:<path> for a tarball; it warns, or refuses with
  // --strict-allow-scripts, about the others); older npm ignores the field.
  const allowScripts = Object.fromEntries(approve.map((t) => [`file:${t}`, true]));
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name: `smoke-${name}`, version: '1.0.0', private: true, type: 'module', allowScripts }, null, 2)}\n`);
  cpSync(join(root, 'tools', 'scripts', 'pack-smoke-user.mjs'), join(dir, 'smoke.mjs'));
  return dir;
}
function install(dir, tarballs, extra = [], what = 'npm install') {
  must(npm(['install', '--prefer-offline', '--no-audit', '--no-fund', ...extra, ...tarballs], dir), `${what} in ${dir}`);
}
/** The compiled addon of an installed backend (its install script must have built it). */
function addonBuilt(dir, backend) {
  const rel = join(dir, 'node_modules', '@miniss', NATIVE[backend], 'build', 'Release');
  return existsSync(rel) && readdirSync(rel).some((f) => f.endsWith('.node'));
}
function smoke(dir, expect) {
  writeFileSync(join(dir, 'expect.json'), JSON.stringify(expect));
  const r = must(run(process.execPath, ['smoke.mjs', 'expect.json'], { cwd: dir, timeout: 60_000 }), `smoke script in ${dir}`);
  for (const line of r.stdout.trim().split('\n')) log(`  ${line}`);
}
/** `miniss doctor --json` through the bin npm linked, as `npx miniss doctor` runs it. */
function doctor(dir) {
  const bin = join(dir, 'node_modules', '.bin', process.platform === 'win32' ? 'miniss.cmd' : 'miniss');
  if (!existsSync(bin)) throw new Failure(`npm linked no miniss bin in ${dir}/node_modules/.bin`);
  const r = run(bin, ['doctor', '--json'], { cwd: dir });
  if (r.status !== 0) throw new Failure(`miniss doctor failed (exit ${r.status ?? r.signal}):\n${tail(r.out)}`);
  return JSON.parse(r.stdout);
}

function scenarioAll(tarballs, working) {
  const natives = Object.keys(NATIVE).map((b) => tarballs[NATIVE[b]]);
  const dir = project('all', natives);
  install(dir, PACKAGES.map((p) => tarballs[p]));
  for (const b of working) if (!addonBuilt(dir, b)) throw new Failure(`the install script of @miniss/${NATIVE[b]} built no addon`);
  smoke(dir, { backends: [...working, 'node'], missing: [], plugins: true });
  const rep = doctor(dir);
  const ok = rep.backends.filter((b) => b.ok && b.name !== 'node').map((b) => b.name);
  if (ok.join() !== working.join()) throw new Failure(`miniss doctor from the tarballs says ${ok.join(', ') || 'none'} work, the checkout says ${working.join(', ') || 'none'}`);
  if (rep.plugins.some((p) => !p.installed)) throw new Failure(`miniss doctor misses plugins: ${JSON.stringify(rep.plugins)}`);
  log(`  ok miniss doctor: ${ok.concat('node').join(', ')} work, auto picks ${rep.autoPick}`);
  typecheck(dir);
}

/** The published .d.ts files type-check in a user's strict TypeScript project (the checkout's tsc and @types/node). */
function typecheck(dir) {
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const types = join(root, 'node_modules', '@types');
  if (!existsSync(tsc) || !existsSync(join(types, 'node'))) throw new Failure('typescript or @types/node is missing from the checkout (run npm install)');
  writeFileSync(
    join(dir, 'check.ts'),
    [
      "import { Runtime, File, TcpListener, TcpStream, spawn, createRuntime, RuntimeError, type RuntimeConfig } from '@miniss/core';",
      "import { sleep, timeout, withTimeout, Interval, spawnPeriodic, TimeoutError } from '@miniss/timer';",
      "import { waitForSignal, gracefulShutdown } from '@miniss/signal';",
      "import { MultiCoreRuntime, currentCore } from '@miniss/multicore';",
      ...Object.entries(NATIVE).map(([b, p]) => `import * as ${b} from '@miniss/${p}';`),
      "const config: RuntimeConfig = { backend: 'auto', features: ['timer'] };",
      'export const rt: Runtime = new Runtime(config);',
      `export const all = [File, TcpListener, TcpStream, spawn, createRuntime, RuntimeError, sleep, timeout, withTimeout, Interval, spawnPeriodic, TimeoutError, waitForSignal, gracefulShutdown, MultiCoreRuntime, currentCore, ${Object.keys(NATIVE)
        .map((b) => `${b}.createBackend, ${b}.isSupported`)
        .join(', ')}];`,
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [types] },
      files: ['check.ts'],
    }),
  );
  must(run(process.execPath, [tsc, '-p', dir], { cwd: dir }), 'tsc on a user project importing every package');
  log('  ok types: tsc --strict (skipLibCheck off) on imports of every package');
}

function scenarioSingle(tarballs, working) {
  const linux = process.platform === 'linux';
  const name = working.find((b) => b !== 'io_uring') ?? working[0] ?? (linux ? 'epoll' : 'kqueue');
  const backendTgz = tarballs[NATIVE[name]];
  const dir = project('single', [backendTgz]);
  // The backend first, core not installed (--legacy-peer-deps: npm leaves the peer out, as it is
  // when a backend is added before core): its install script must still build the addon.
  install(dir, [tarballs['native-common'], backendTgz], ['--legacy-peer-deps'], `npm install of @miniss/${NATIVE[name]} alone`);
  if (existsSync(join(dir, 'node_modules', '@miniss', 'core'))) throw new Failure('npm installed @miniss/core with --legacy-peer-deps; this scenario needs it absent');
  if (working.includes(name) && !addonBuilt(dir, name)) throw new Failure(`@miniss/${NATIVE[name]} installed before core built no addon`);
  install(dir, [tarballs.core], [], 'npm install of @miniss/core after the backend');
  const missing = Object.keys(NATIVE).filter((b) => b !== name);
  smoke(dir, { backends: [...(working.includes(name) ? [name] : []), 'node'], missing, plugins: false });
  log(`  (scenario single: @miniss/${NATIVE[name]} installed before @miniss/core)`);
}

function scenarioCore(tarballs) {
  const dir = project('core', []);
  install(dir, [tarballs.core]);
  smoke(dir, { backends: ['node'], missing: Object.keys(NATIVE), plugins: false });
  const rep = doctor(dir);
  if (rep.autoPick !== 'node') throw new Failure(`miniss doctor with core alone says auto picks ${rep.autoPick}`);
  log('  ok miniss doctor: auto picks node');
}

let status = 1;
let summary = '';
try {
  log(`temp dir ${work}`);
  probeThirdParty();
  const src = copyTree();
  const tarballs = packAll(src);
  const working = referenceBackends();
  log(`native backends working in this checkout: ${working.join(', ') || 'none'}`);
  for (const [name, fn] of [
    ['all', () => scenarioAll(tarballs, working)],
    ['single', () => scenarioSingle(tarballs, working)],
    ['core', () => scenarioCore(tarballs)],
  ]) {
    log(`scenario ${name}`);
    fn();
  }
  status = 0;
  summary = `PASS (${secs()} s)`;
} catch (err) {
  if (err instanceof Skip) {
    status = SKIP;
    summary = `SKIP (${err.message})`;
  } else {
    status = 1;
    summary = `FAIL (${secs()} s): ${err instanceof Failure ? err.message : (err?.stack ?? String(err))}`;
  }
} finally {
  cleanup();
}
console.log(`pack-smoke: ${summary}`);
process.exit(status);
