#!/usr/bin/env node
// AddressSanitizer job: `node tools/scripts/asan.mjs [vitest args...]`.
//
// 1. Installs clang + libclang-rt-14-dev with apt-get when clang or the ASan runtime is missing.
// 2. Copies the working tree (without node_modules/.nx/build/dist/.git) into a temp dir, so the normal
//    build in this checkout is never touched. node_modules of the copy is a real directory whose
//    entries link to this checkout's node_modules, except @miniss/*, which link to the copy's own
//    workspace packages.
// 3. Builds every workspace there (nx run-many -t build) with CC=clang CXX=clang++ and
//    -fsanitize=address, so every native addon (packages/backend-* with a binding.gyp) is
//    instrumented; checks each built .node really references the ASan runtime.
// 4. Runs the whole vitest suite there with the ASan runtime preloaded (LD_PRELOAD, so child
//    processes the tests spawn are covered too), ASAN_OPTIONS with detect_leaks=0, abort_on_error
//    and log_path into a directory that is read afterwards: any report there fails the job even
//    when the process that produced it was a child whose exit status a test ignored.
// 5. Prints a summary, removes the temp dir (MINISS_ASAN_KEEP=1 keeps it) and exits non-zero on any
//    ASan report, failing test or build failure.
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nxBin, nxEnv } from './nx-env.mjs';
import { readVitestReport } from './vitest-report.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const log = (msg) => process.stderr.write(`[asan] ${msg}\n`);
const t0 = Date.now();

function sh(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { encoding: 'utf8', ...opts });
}

// --- 1. toolchain ------------------------------------------------------------------------------
function asanRuntime() {
  const r = sh('clang', ['-print-file-name=libclang_rt.asan-x86_64.so']);
  if (r.status !== 0) return undefined;
  const p = r.stdout.trim();
  return p.startsWith('/') && existsSync(p) ? p : undefined;
}
if (process.platform !== 'linux') {
  log(`AddressSanitizer job runs on Linux only (this is ${process.platform})`);
  process.exit(1);
}
let runtime = asanRuntime();
if (!runtime) {
  log('installing clang and libclang-rt-14-dev with apt-get');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  sh('apt-get', ['update'], { stdio: 'inherit', env });
  const inst = sh('apt-get', ['install', '-y', 'clang', 'libclang-rt-14-dev'], { stdio: 'inherit', env });
  if (inst.status !== 0) {
    log('apt-get install failed');
    process.exit(1);
  }
  runtime = asanRuntime();
  if (!runtime) {
    log('clang has no libclang_rt.asan-x86_64.so even after installing libclang-rt-14-dev');
    process.exit(1);
  }
}
log(`ASan runtime: ${runtime}`);

// --- 2. copy -----------------------------------------------------------------------------------
const work = mkdtempSync(join(tmpdir(), 'miniss-asan-'));
const copy = join(work, 'repo');
const logs = join(work, 'asan-logs');
mkdirSync(copy);
mkdirSync(logs);
let exitCode = 1;
const summary = [];
// Counts for a caller that merges this job into its own `N passed, N failed` line (tools/scripts/test.mjs).
const counts = { passed: 0, failed: 0, skipped: 0, asanReports: 0, buildFailed: false, error: undefined };
try {
  const excludes = ['node_modules', '.nx', 'build', 'dist', '.git', 'test-results.json', '*.tsbuildinfo'];
  const tar = `tar -C ${JSON.stringify(root)} ${excludes.map((e) => `--exclude=${JSON.stringify(e)}`).join(' ')} -cf - . | tar -C ${JSON.stringify(copy)} -xf -`;
  const cp = sh('sh', ['-c', tar], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (cp.status !== 0) throw new Error('copying the tree failed');

  // node_modules: link every entry to this checkout's, except @miniss/* (the copy's workspaces).
  const nm = join(root, 'node_modules');
  const cnm = join(copy, 'node_modules');
  mkdirSync(cnm);
  for (const entry of readdirSync(nm)) {
    if (entry === '@miniss' || entry === '.cache') continue;
    symlinkSync(join(nm, entry), join(cnm, entry));
  }
  mkdirSync(join(cnm, '@miniss'));
  for (const entry of readdirSync(join(nm, '@miniss'))) {
    const target = readlinkSync(join(nm, '@miniss', entry));
    // Workspace links are relative (../../packages/x): the same relative link points into the copy.
    if (target && !target.startsWith('/')) symlinkSync(target, join(cnm, '@miniss', entry));
    else symlinkSync(join(nm, '@miniss', entry), join(cnm, '@miniss', entry));
  }
  log(`copied the tree to ${copy}`);

  // --- 3. build with ASan ------------------------------------------------------------------------
  const flags = '-fsanitize=address -fno-omit-frame-pointer -g -O1';
  const buildEnv = {
    ...nxEnv,
    CC: 'clang',
    CXX: 'clang++',
    LINK: 'clang++',
    CFLAGS: flags,
    CXXFLAGS: flags,
    LDFLAGS: '-fsanitize=address',
    JOBS: '2',
  };
  const build = sh(process.execPath, [nxBin(copy), 'run-many', '-t', 'build', '--outputStyle=static', '--skip-nx-cache'], {
    cwd: copy,
    stdio: 'inherit',
    env: buildEnv,
  });
  // A workspace that does not build fails the job, but the tests still run so that the ASan
  // verdict on everything that did build is not lost.
  const buildFailed = build.status !== 0;
  summary.push(buildFailed ? 'build: FAILED for some workspace (see the nx output above)' : 'build: ok');
  const addons = [];
  for (const pkg of readdirSync(join(copy, 'packages'))) {
    const rel = join(copy, 'packages', pkg, 'build', 'Release');
    if (!existsSync(rel)) continue;
    for (const f of readdirSync(rel)) {
      if (!f.endsWith('.node')) continue;
      const file = join(rel, f);
      const syms = sh('nm', ['-D', '--undefined-only', file]).stdout ?? '';
      const instrumented = /__asan_/.test(syms);
      addons.push(`${relative(copy, file)}: ${instrumented ? 'instrumented' : 'NOT instrumented'}`);
      if (!instrumented) throw new Error(`${file} was built without -fsanitize=address`);
    }
  }
  summary.push(`addons: ${addons.length ? addons.join(', ') : 'none built'}`);
  log(summary.at(-1));

  // --- 4. tests under ASan -----------------------------------------------------------------------
  const report = join(work, 'vitest.json');
  const testEnv = {
    ...nxEnv,
    LD_PRELOAD: runtime,
    ASAN_OPTIONS: [
      'detect_leaks=0',
      'abort_on_error=1',
      'halt_on_error=1',
      'exitcode=86',
      // V8 and libuv install their own SEGV handlers; let ASan report stack overflows/segfaults too.
      'handle_segv=1',
      'allow_user_segv_handler=1',
      `log_path=${join(logs, 'asan')}`,
    ].join(':'),
    MINISS_UNDER_ASAN: '1',
    FORCE_COLOR: '0',
  };
  const vitest = join(copy, 'node_modules', 'vitest', 'vitest.mjs');
  const run = sh(
    process.execPath,
    [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)],
    { cwd: copy, stdio: 'inherit', env: testEnv },
  );
  // Counted as in tools/scripts/test.mjs (a file that failed outside its tests counts once).
  const { passed, failed, skipped, failedFiles } = readVitestReport(report) ?? { passed: 0, failed: 0, skipped: 0, failedFiles: 0 };
  Object.assign(counts, { passed, failed: failed + (run.status !== 0 && failed === 0 ? 1 : 0), skipped, buildFailed });
  summary.push(
    `vitest: exit ${run.status ?? run.signal}, ${passed} passed, ${failed} failed (${failedFiles} of them files that failed outside their tests: load or hook errors), ${skipped} skipped`,
  );

  const reports = readdirSync(logs).filter((f) => f.startsWith('asan'));
  for (const f of reports) {
    process.stderr.write(`\n===== ASan report ${f} =====\n${readFileSync(join(logs, f), 'utf8')}\n`);
  }
  summary.push(`ASan reports: ${reports.length}`);
  counts.asanReports = reports.length;
  exitCode = !buildFailed && run.status === 0 && failed === 0 && reports.length === 0 ? 0 : 1;
} catch (e) {
  summary.push(`error: ${e instanceof Error ? e.message : String(e)}`);
  counts.error = e instanceof Error ? e.message : String(e);
  exitCode = 1;
} finally {
  if (process.env.MINISS_ASAN_KEEP) log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
console.log(`\nASan job summary (${((Date.now() - t0) / 1000).toFixed(0)} s):`);
for (const line of summary) console.log(`  ${line}`);
console.log(exitCode === 0 ? 'ASan job: PASS' : 'ASan job: FAIL');
if (process.env.MINISS_ASAN_SUMMARY) writeFileSync(process.env.MINISS_ASAN_SUMMARY, JSON.stringify({ ...counts, exitCode }));
process.exit(exitCode);
