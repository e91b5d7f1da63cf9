import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Runtime, TcpListener, TcpStream, doctor, formatDoctor, probeBackend, type RuntimeError } from '@miniss/core';
import { createBackend, isSupported } from '@miniss/backend-kqueue';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const addonPaths = ['Release', 'Debug'].map((t) => join(pkgDir, 'build', t, 'miniss_kqueue.node'));
const addonBuilt = addonPaths.some((p) => existsSync(p));
/** Linux where nothing was built: what every plain install on Linux (and CI) looks like. */
const plainLinux = process.platform === 'linux' && !addonBuilt;
const support = isSupported();

// The behaviour tests (kqueue-files/-lifecycle/-sockets and core's conformance suite) run only
// where the addon loads: macOS/BSD, or Linux after `node scripts/build-kqemu.mjs`. Say so.
if (!support.ok) {
  describe('kqueue backend behaviour tests', () => {
    it.skip(`skipped (the addon does not load here): ${support.reason ?? 'unknown'}`, () => {});
  });
}

describe.runIf(support.ok)('@miniss/backend-kqueue where the addon loads', () => {
  it("isSupported() is ok, core's loader accepts it, and a runtime on it does I/O", async () => {
    expect(support).toEqual({ ok: true });
    expect(probeBackend('kqueue').ok).toBe(true);
    const rt = new Runtime({ backend: 'kqueue' });
    expect(rt.backend.name).toBe('kqueue');
    const echoed = await rt.blockOn(async () => {
      const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
      const accepted = l.accept();
      const c = await TcpStream.connect({ host: '127.0.0.1', port: l.address.port });
      const s = await accepted;
      await c.sendAll(Buffer.from('over kevent'));
      const buf = new Uint8Array(64);
      const n = await s.recv(buf);
      await Promise.all([c.close(), s.close(), l.close()]);
      return Buffer.from(buf.subarray(0, n)).toString();
    });
    expect(echoed).toBe('over kevent');
    expect(rt.stats().backendLadder.find((l) => l.name === 'kqueue')?.ok).toBe(true);
  });
});

describe.runIf(plainLinux)('@miniss/backend-kqueue on Linux without a kqueue library', () => {
  it('builds cleanly and compiles nothing', () => {
    const require = createRequire(join(pkgDir, 'package.json'));
    const buildNative = join(dirname(require.resolve('@miniss/native-common/package.json')), 'scripts', 'build-native.mjs');
    const env = { ...process.env };
    delete env.MINISS_KQUEUE_INCLUDE_DIR;
    delete env.MINISS_KQUEUE_LIB_DIR;
    delete env.MINISS_FORCE_NATIVE_BUILD;
    const r = spawnSync(process.execPath, [buildNative, '--if-needed'], { cwd: pkgDir, encoding: 'utf8', timeout: 20_000, env });
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('nothing to compile on linux');
    expect(r.stderr).toContain('MINISS_KQUEUE_INCLUDE_DIR');
    expect(addonPaths.some((p) => existsSync(p))).toBe(false);
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

    // auto limited to kqueue by features refuses to start (nothing named works here), with the reason.
    let featureErr: RuntimeError | undefined;
    try {
      new Runtime({ backend: 'auto', features: ['kqueue'] });
    } catch (e) {
      featureErr = e as RuntimeError;
    }
    expect(featureErr?.code).toBe('FEATURE_UNAVAILABLE');
    expect(featureErr?.message).toMatch(/kqueue: .*BSD\/macOS API/);

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

// A compile check only: every file of native/ (binding.cc too, with Node's and nan's headers) and
// @miniss/native-common's op.cc and thread_pool.cc, against test/shim/sys/event.h with
// -fsyntax-only. It runs nothing; it fails when the code stops being well-formed C++ against the
// BSD declarations.
const haveCxx = spawnSync(process.env.CXX || 'c++', ['--version'], { encoding: 'utf8' }).status === 0;
describe.runIf(haveCxx)('kqueue reactor compile check (shim <sys/event.h>, -fsyntax-only)', () => {
  it('native/kqueue.cc, op.cc, thread_pool.cc and binding.cc compile with -Wall -Wextra -Werror', () => {
    const r = spawnSync(process.execPath, [join(pkgDir, 'scripts', 'check-syntax.mjs')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 70_000);
});
