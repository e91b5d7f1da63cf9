import { resolveBufferPoolConfig } from './buffer-pool.js';
import type { BackendName } from './backend.js';
import type { BufferPoolConfig } from './buffer-pool.js';
import { RuntimeError } from './errors.js';

/** Opt-in features, like Cargo features: a runtime loads only what it names. */
export type FeatureName = 'timer' | 'signal' | 'multicore' | 'io-uring' | 'epoll' | 'kqueue';
export type BackendChoice = 'auto' | BackendName;

export interface RuntimeConfig {
  /** Which I/O backend drives the loop. Default `'auto'`; the env var `MINISS_BACKEND` overrides. */
  backend?: BackendChoice;
  /** Plugins and backends this runtime may load. Backend features limit what `'auto'` may pick. */
  features?: FeatureName[];
  /** With `'multicore'`: how many cores. Default `os.availableParallelism()`. */
  cores?: number;
  /** Capacity of each cross-core ring, in messages. Default 1000. */
  crossCpuChannelCapacity?: number;
  /**
   * The seeds' idle-core spin before sleeping, in ms. Default 10. Accepted and checked (the API
   * names it) but not used: multicore's `spinMs`/`awaitSpinMs` set the spin (see docs/design.md).
   */
  cpuThreadTimeoutMs?: number;
  /**
   * The seeds' initial run-queue capacity. Default 128. Accepted and checked but not used: the run
   * queue is an array that grows as needed (V8 makes one created at a capacity holey).
   */
  initialTaskQueueCapacity?: number;
  /**
   * The seeds' expected wake-ups per turn. Default 16. Accepted and checked but not used: wake-ups
   * are batched per turn whatever their number.
   */
  expectedWakeupCount?: number;
  bufferPool?: Partial<BufferPoolConfig>;
}

/** A config with every default filled in and every value checked. */
export interface ResolvedConfig {
  backend: BackendChoice;
  /** Where `backend` came from, for error messages and `miniss doctor`. */
  backendSource: 'config' | 'env MINISS_BACKEND' | 'default';
  features: FeatureName[];
  cores: number | undefined;
  crossCpuChannelCapacity: number;
  cpuThreadTimeoutMs: number;
  initialTaskQueueCapacity: number;
  expectedWakeupCount: number;
  bufferPool: Partial<BufferPoolConfig>;
}

export const FEATURES: readonly FeatureName[] = ['timer', 'signal', 'multicore', 'io-uring', 'epoll', 'kqueue'];
export const BACKENDS: readonly BackendChoice[] = ['auto', 'io_uring', 'epoll', 'kqueue', 'node'];

/** Feature (and native backend) names to the package that implements them. */
export const FEATURE_PACKAGES: Record<FeatureName, string> = {
  timer: '@miniss/timer',
  signal: '@miniss/signal',
  multicore: '@miniss/multicore',
  'io-uring': '@miniss/backend-iouring',
  epoll: '@miniss/backend-epoll',
  kqueue: '@miniss/backend-kqueue',
};

/** Backend name to the feature that names it (the `node` backend is built in). */
export const BACKEND_FEATURE: Record<Exclude<BackendName, 'node'>, FeatureName> = {
  io_uring: 'io-uring',
  epoll: 'epoll',
  kqueue: 'kqueue',
};

function invalid(message: string): RuntimeError {
  return new RuntimeError('INVALID_CONFIG', message);
}

function positiveInt(config: RuntimeConfig, key: keyof RuntimeConfig, fallback: number): number {
  const v = config[key];
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw invalid(`${key} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Checks a {@link RuntimeConfig} and fills in the seeds' defaults. Throws `INVALID_CONFIG` naming
 * the offending key for unknown names and out-of-range numbers. Does not load anything.
 */
export function resolveConfig(config: RuntimeConfig = {}, env: NodeJS.ProcessEnv = process.env): ResolvedConfig {
  if (config === null || typeof config !== 'object') throw invalid('the runtime config must be an object');
  const known = new Set([
    'backend',
    'features',
    'cores',
    'crossCpuChannelCapacity',
    'cpuThreadTimeoutMs',
    'initialTaskQueueCapacity',
    'expectedWakeupCount',
    'bufferPool',
    // Options MultiCoreRuntime accepts in the same object (createRuntime passes it on whole).
    'pin',
    'spinMs',
    'awaitSpinMs',
    'workerExitTimeoutMs',
  ]);
  for (const key of Object.keys(config)) {
    if (!known.has(key)) throw invalid(`unknown config key '${key}' (known: ${[...known].join(', ')})`);
  }

  let backend: BackendChoice = 'auto';
  let backendSource: ResolvedConfig['backendSource'] = 'default';
  if (config.backend !== undefined) {
    backend = config.backend;
    backendSource = 'config';
  }
  const fromEnv = env.MINISS_BACKEND;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!BACKENDS.includes(fromEnv as BackendChoice)) {
      throw invalid(`MINISS_BACKEND='${fromEnv}' is not a backend (use one of ${BACKENDS.join(', ')})`);
    }
    backend = fromEnv as BackendChoice;
    backendSource = 'env MINISS_BACKEND';
  }
  if (!BACKENDS.includes(backend)) {
    throw invalid(`backend '${String(backend)}' is not a backend (use one of ${BACKENDS.join(', ')})`);
  }

  const features = config.features ?? [];
  if (!Array.isArray(features)) throw invalid('features must be an array of feature names');
  for (const f of features) {
    if (!FEATURES.includes(f)) {
      throw invalid(`unknown feature '${String(f)}' (known: ${FEATURES.join(', ')})`);
    }
  }

  let cores: number | undefined;
  if (config.cores !== undefined) {
    if (typeof config.cores !== 'number' || !Number.isInteger(config.cores) || config.cores <= 0) {
      throw invalid(`cores must be a positive integer, got ${JSON.stringify(config.cores)}`);
    }
    cores = config.cores;
  }

  const cpuThreadTimeoutMs = config.cpuThreadTimeoutMs ?? 10;
  if (typeof cpuThreadTimeoutMs !== 'number' || !Number.isFinite(cpuThreadTimeoutMs) || cpuThreadTimeoutMs < 0) {
    throw invalid(`cpuThreadTimeoutMs must be a finite non-negative number, got ${JSON.stringify(config.cpuThreadTimeoutMs)}`);
  }
  if (config.bufferPool !== undefined && (config.bufferPool === null || typeof config.bufferPool !== 'object')) {
    throw invalid('bufferPool must be an object');
  }

  return {
    backend,
    backendSource,
    features: [...new Set(features)],
    cores,
    crossCpuChannelCapacity: positiveInt(config, 'crossCpuChannelCapacity', 1000),
    cpuThreadTimeoutMs,
    initialTaskQueueCapacity: positiveInt(config, 'initialTaskQueueCapacity', 128),
    expectedWakeupCount: positiveInt(config, 'expectedWakeupCount', 16),
    // Checked now (INVALID_CONFIG), although the pool itself is created on first use.
    bufferPool: resolveBufferPoolConfig(config.bufferPool ?? {}),
  };
}
