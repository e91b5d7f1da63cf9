import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Runtime, doctor, formatDoctor, probeBackend, type RuntimeError } from '@miniss/core';
import { createBackend, isSupported } from '@miniss/backend-kqueue';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const onLinuxWithoutLibkqueue =
  process.platform === 'linux' && !(process.env.MINISS_KQUEUE_INCLUDE_DIR && process.env.MINISS_KQUEUE_LIB_DIR);

describe.runIf(onLinuxWithoutLibkqueue)('@miniss/backend-kqueue on Linux without libkqueue', () => {
  it('builds cleanly and compiles nothing', () => {
    const r = spawnSync(process.execPath, [join(pkgDir, 'scripts', 'build.mjs'), '--if-needed'], { cwd: pkgDir, encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('nothing to compile on linux');
    expect(r.stderr).toContain('MINISS_KQUEUE_INCLUDE_DIR');
    expect(existsSync(join(pkgDir, 'build', 'Release', 'miniss_kqueue.node'))).toBe(false);
  });

  it('isSupported() says why: a BSD/macOS API, and how to build against libkqueue', () => {
    const s = isSupported();
    expect(s.ok).toBe(false);
    expect(s.reason).toMatch(/kqueue is a BSD\/macOS API/);
    expect(s.reason).toMatch(/this is linux/);
    expect(s.reason).toMatch(/libkqueue/);
    expect(s.reason).toMatch(/MINISS_KQUEUE_INCLUDE_DIR=.*MINISS_KQUEUE_LIB_DIR=/);
  });

  it('createBackend() throws BACKEND_UNAVAILABLE with the reason', () => {
    let err: RuntimeError | undefined;
    try {
      createBackend();
    } catch (e) {
      err = e as RuntimeError;
    }
    expect(err).toBeInstanceOf(Error);
    expect(err?.code).toBe('BACKEND_UNAVAILABLE');
    expect(err?.message).toMatch(/BSD\/macOS API/);
  });

  it("core's loader skips it with that reason, and a named 'kqueue' backend is refused with it", async () => {
    const p = probeBackend('kqueue');
    expect(p.ok).toBe(false);
    expect(p.package).toBe('@miniss/backend-kqueue');
    expect(p.reason).toBe(isSupported().reason);

    // auto limited to kqueue by features still runs, on 'node', and records why kqueue was skipped.
    const rt = new Runtime({ backend: 'auto', features: ['kqueue'] });
    try {
      expect(rt.backend.name).toBe('node');
      const rung = rt.stats().backendLadder.find((r) => r.name === 'kqueue');
      expect(rung?.ok).toBe(false);
      expect(rung?.reason).toMatch(/BSD\/macOS API/);
    } finally {
      await rt.shutdown();
    }

    let err: RuntimeError | undefined;
    try {
      new Runtime({ backend: 'kqueue' });
    } catch (e) {
      err = e as RuntimeError;
    }
    expect(err?.code).toBe('BACKEND_UNAVAILABLE');
    expect(err?.message).toMatch(/BSD\/macOS API/);
  });

  it('miniss doctor shows it with the reason', () => {
    const text = formatDoctor(doctor());
    const line = text.split('\n').findIndex((l) => /\bkqueue\b.*@miniss\/backend-kqueue/.test(l));
    expect(line).toBeGreaterThanOrEqual(0);
    expect(text).toMatch(/no\s+kqueue/);
    expect(text).toContain('kqueue is a BSD/macOS API');
  });
});

// A compile check only: native/kqueue.cc against test/shim/sys/event.h with -fsyntax-only. It runs
// nothing; it fails when the reactor stops being well-formed C++ against the BSD declarations.
const haveCxx = spawnSync(process.env.CXX || 'c++', ['--version'], { encoding: 'utf8' }).status === 0;
describe.runIf(haveCxx)('kqueue reactor compile check (shim <sys/event.h>, -fsyntax-only)', () => {
  it('native/kqueue.cc, op.cc and thread_pool.cc compile with -Wall -Wextra -Werror', () => {
    const r = spawnSync(process.execPath, [join(pkgDir, 'scripts', 'check-syntax.mjs')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 70_000);
});
