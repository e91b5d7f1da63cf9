import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { BackendModule, BackendName, IoBackend } from './backend.js';
import { NodeBackend } from './backend-node.js';
import { BACKEND_FEATURE, FEATURE_PACKAGES, type FeatureName, type ResolvedConfig } from './config.js';
import { RuntimeError } from './errors.js';

/**
 * Loads feature packages by name, only when a config names them.
 *
 * Packages are loaded with `require()` of their ESM entry (Node >= 20.19 loads ESM without
 * top-level await synchronously), so `new Runtime(config)` and `createRuntime(config)` can be
 * synchronous and fail at once with an actionable error. `require` and `import` share one module
 * cache, so a package the user also imports is one instance, not two.
 */

const requireFromCore = createRequire(import.meta.url);

/** Thrown-away cache of modules by package name (the module cache is Node's; this saves resolution). */
const loaded = new Map<string, unknown>();

export interface LoadFailure {
  /** 'missing': not installed; 'broken': installed but threw while loading. */
  kind: 'missing' | 'broken';
  message: string;
  cause?: unknown;
}

function isNotFound(err: unknown, pkg: string): boolean {
  const e = err as { code?: string; message?: string };
  return (
    (e?.code === 'MODULE_NOT_FOUND' || e?.code === 'ERR_MODULE_NOT_FOUND') &&
    typeof e.message === 'string' &&
    e.message.includes(pkg)
  );
}

/** Loads `pkg` from core's own location, then from the working directory. */
export function tryLoadPackage(pkg: string): { module: unknown } | LoadFailure {
  if (loaded.has(pkg)) return { module: loaded.get(pkg) };
  const tried: string[] = [];
  const requires = [
    { from: import.meta.url, req: requireFromCore },
    { from: join(process.cwd(), 'package.json'), req: createRequire(join(process.cwd(), 'package.json')) },
  ];
  for (const { from, req } of requires) {
    tried.push(from);
    try {
      const mod = req(pkg) as unknown;
      loaded.set(pkg, mod);
      return { module: mod };
    } catch (err) {
      if (isNotFound(err, pkg)) continue;
      return {
        kind: 'broken',
        message: `${pkg} is installed but failed to load: ${(err as Error)?.message ?? String(err)}`,
        cause: err,
      };
    }
  }
  return {
    kind: 'missing',
    message: `${pkg} is not installed (looked from ${tried.join(' and ')}); install it with: npm install ${pkg}`,
  };
}

/** Loads the package that implements `feature`, or throws `FEATURE_UNAVAILABLE` saying what to install. */
export function loadFeature<T>(feature: FeatureName): T {
  const pkg = FEATURE_PACKAGES[feature];
  const r = tryLoadPackage(pkg);
  if ('module' in r) return r.module as T;
  throw new RuntimeError('FEATURE_UNAVAILABLE', `feature '${feature}': ${r.message}`, { cause: r.cause });
}

/** One rung of the `auto` ladder as it was tried, for `stats()`, errors and `miniss doctor`. */
export interface BackendProbe {
  name: BackendName;
  ok: boolean;
  /** Why it was skipped: not installed, not allowed by `features`, refused by this OS or kernel. */
  reason?: string;
  package?: string;
}

export const AUTO_LADDER: readonly BackendName[] = ['io_uring', 'epoll', 'kqueue', 'node'];

/** Probes one backend: is its package installed and does its `isSupported()` say yes here. */
export function probeBackend(name: BackendName): BackendProbe & { module?: BackendModule } {
  if (name === 'node') return { name, ok: true };
  const pkg = FEATURE_PACKAGES[BACKEND_FEATURE[name]];
  const r = tryLoadPackage(pkg);
  if (!('module' in r)) return { name, ok: false, reason: r.message, package: pkg };
  const mod = r.module as Partial<BackendModule>;
  if (typeof mod.createBackend !== 'function' || typeof mod.isSupported !== 'function') {
    return { name, ok: false, reason: `${pkg} does not export createBackend() and isSupported()`, package: pkg };
  }
  let support: { ok: boolean; reason?: string };
  try {
    support = mod.isSupported();
  } catch (err) {
    support = { ok: false, reason: `isSupported() threw: ${(err as Error)?.message ?? String(err)}` };
  }
  if (!support.ok) {
    return { name, ok: false, reason: support.reason ?? `${pkg} is not supported here`, package: pkg };
  }
  return { name, ok: true, package: pkg, module: mod as BackendModule };
}

/**
 * The rungs `auto` may consider under this config. Backend features named in `features` are the
 * whole ladder, in auto's order: asking for `features: ['epoll']` means epoll, and if no named one
 * works here the runtime refuses to start (`FEATURE_UNAVAILABLE`) rather than run on something
 * that was not asked for. With none named, every rung, down to the portable `node` backend.
 */
export function autoCandidates(features: readonly FeatureName[]): BackendName[] {
  const named = AUTO_LADDER.filter((b) => b !== 'node' && features.includes(BACKEND_FEATURE[b as Exclude<BackendName, 'node'>]));
  return named.length > 0 ? named : [...AUTO_LADDER];
}

export interface ResolvedBackend {
  backend: IoBackend;
  /** Every rung tried, in order, with why the skipped ones were skipped. */
  ladder: BackendProbe[];
}

/**
 * Creates the backend a config asks for. `auto` walks io_uring, epoll, kqueue, node and records
 * why each rung was skipped; a named backend that is missing or refused throws
 * `BACKEND_UNAVAILABLE` with the reason and the fix.
 */
export function createConfiguredBackend(config: ResolvedConfig): ResolvedBackend {
  const ladder: BackendProbe[] = [];
  const candidates: BackendName[] = config.backend === 'auto' ? autoCandidates(config.features) : [config.backend];
  for (const name of candidates) {
    const probe = probeBackend(name);
    const { module, ...record } = probe;
    ladder.push(record);
    if (!probe.ok) continue;
    try {
      const backend = name === 'node' ? new NodeBackend() : module!.createBackend();
      return { backend, ladder };
    } catch (err) {
      record.ok = false;
      record.reason = `createBackend() failed: ${(err as Error)?.message ?? String(err)}`;
      if (config.backend !== 'auto') break;
    }
  }
  const last = ladder[ladder.length - 1]!;
  const src = config.backendSource === 'default' ? '' : ` (from ${config.backendSource})`;
  if (config.backend === 'auto') {
    // Only named backend features can leave auto with nothing ('node' always works).
    const named = candidates.map((b) => `'${BACKEND_FEATURE[b as Exclude<BackendName, 'node'>]}'`).join(', ');
    throw new RuntimeError(
      'FEATURE_UNAVAILABLE',
      `backend 'auto'${src} may only pick from the backend features named (${named}), and none works here: ` +
        ladder.map((r) => `${r.name}: ${r.reason ?? 'unknown reason'}`).join('; ') +
        `. Name another backend feature, or none to let 'auto' fall back as far as the portable 'node' backend; 'npx miniss doctor' shows what works here.`,
    );
  }
  throw new RuntimeError(
    'BACKEND_UNAVAILABLE',
    `backend '${config.backend}'${src} is unavailable: ${last.reason ?? 'unknown reason'}. ` +
      `Use backend: 'auto' to fall back, or run 'npx miniss doctor' to see what works here.`,
  );
}
