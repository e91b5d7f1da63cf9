import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RuntimeError, type BackendModule, type BackendOptions, type IoBackend } from '@miniss/core';

/**
 * `@miniss/backend-kqueue`: the readiness-model backend for macOS and the BSDs (kevent(2)).
 *
 * State of this version (say it plainly): the kevent reactor (native/kqueue.{h,cc}) is written
 * and compile-checked on Linux against a shim header only; the Node binding (native/binding.cc)
 * and the JS driver are NOT written yet. The package installs cleanly everywhere, compiles
 * nothing, and {@link isSupported} always returns `ok: false` with the precise reason, so core's
 * `auto` ladder skips it and `miniss doctor` shows why. {@link createBackend} throws
 * `BACKEND_UNAVAILABLE` with the same reason. See README.md.
 */

const BSD_PLATFORMS: readonly string[] = ['darwin', 'freebsd', 'openbsd', 'netbsd'];
const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const ADDON_PATHS = [join(pkgDir, 'build', 'Release', 'miniss_kqueue.node'), join(pkgDir, 'build', 'Debug', 'miniss_kqueue.node')];

let cached: { ok: boolean; reason?: string; addon?: unknown } | undefined;

function probe(): { ok: boolean; reason?: string; addon?: unknown } {
  const platform = process.platform;
  const inc = process.env.MINISS_KQUEUE_INCLUDE_DIR;
  const lib = process.env.MINISS_KQUEUE_LIB_DIR;
  if (!BSD_PLATFORMS.includes(platform) && !(platform === 'linux' && inc && lib)) {
    return {
      ok: false,
      reason:
        `kqueue is a BSD/macOS API (kqueue(2)/kevent(2)) and this is ${platform}; use the 'epoll' or 'io_uring' backend here. ` +
        'To exercise the kqueue code on Linux, install libkqueue and rebuild with MINISS_KQUEUE_INCLUDE_DIR=<dir with sys/event.h> ' +
        'MINISS_KQUEUE_LIB_DIR=<dir with libkqueue.so> npm rebuild @miniss/backend-kqueue',
    };
  }
  if (!existsSync(join(pkgDir, 'native', 'binding.cc'))) {
    return {
      ok: false,
      reason:
        '@miniss/backend-kqueue 0.1.0 is incomplete: the kevent reactor (native/kqueue.cc) exists but its Node binding ' +
        `(native/binding.cc) and JS driver are not written, so nothing was compiled on ${platform}; use backend 'node' (auto falls back to it)`,
    };
  }
  const require = createRequire(import.meta.url);
  const errors: string[] = [];
  for (const p of ADDON_PATHS) {
    if (!existsSync(p)) {
      errors.push(`${p}: not built`);
      continue;
    }
    try {
      return { ok: true, addon: require(p) as unknown };
    } catch (err) {
      errors.push(`${p}: ${(err as Error)?.message ?? String(err)}`);
    }
  }
  return { ok: false, reason: `the kqueue addon did not load; tried ${errors.join('; ')}. Rebuild with: npm rebuild @miniss/backend-kqueue` };
}

/** Whether kqueue can be used here, and if not exactly why (never throws, no lasting side effects). */
export function isSupported(): { ok: boolean; reason?: string } {
  cached ??= probe();
  return cached.ok ? { ok: true } : { ok: false, reason: cached.reason };
}

/** Creates a kqueue backend; throws `RuntimeError` `BACKEND_UNAVAILABLE` with the reason where it cannot. */
export function createBackend(_options?: BackendOptions): IoBackend {
  const s = isSupported();
  if (!s.ok) throw new RuntimeError('BACKEND_UNAVAILABLE', `kqueue backend unavailable: ${s.reason}`);
  // Only reachable once native/kqueue.cc exists and loads; the JS side that drives it (a copy of
  // backend-epoll's src/index.ts) is written together with it.
  throw new RuntimeError('BACKEND_UNAVAILABLE', 'kqueue backend unavailable: the JS driver for the native addon is not written yet');
}

/** This package as a {@link BackendModule} (what core's loader checks for). */
export const backendModule: BackendModule = { createBackend, isSupported };
