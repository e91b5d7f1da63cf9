import { constants as osConstants } from 'node:os';
import { isMainThread } from 'node:worker_threads';
import {
  InvalidArgumentError,
  MAX_TIMER_MS,
  abortReason,
  RuntimeError,
  currentRuntime,
  type PluginFactory,
  type Runtime,
  type RuntimePlugin,
  type ShutdownOptions,
} from '@miniss/core';

/**
 * `@miniss/signal`: wait for process signals, and shut a runtime down gracefully on one.
 *
 * Signals reach only the main thread in Node (a worker thread's `process.on('SIGTERM')` is never
 * called), so this plugin works on core 0 only and refuses with `FEATURE_UNAVAILABLE` elsewhere
 * rather than wait forever; a `MultiCoreRuntime`'s own `shutdown()` relays the shutdown to every
 * other core through its cross-core rings. Signal listeners installed here never keep the process
 * alive on their own (Node's signal handles are unreferenced), and every listener is removed when
 * its wait ends, when its `Disposable` is disposed, or when its runtime shuts down.
 */

export type SignalName = NodeJS.Signals;

const DEFAULT_SIGNALS: SignalName[] = ['SIGINT', 'SIGTERM'];

/** Signals Node cannot listen for (the kernel does not let a process catch them). */
const UNCATCHABLE = new Set(['SIGKILL', 'SIGSTOP']);

const NOT_MAIN_THREAD =
  'signals only reach the main thread in Node: call this on core 0 (the thread that created the runtime), ' +
  'not in a worker thread or a task on another core';

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return `an object (${(v as object).constructor?.name ?? 'no prototype'})`;
  return `${typeof v} ${String(v)}`;
}

function checkSignals(signals: unknown): SignalName[] {
  if (signals === undefined) return DEFAULT_SIGNALS;
  if (!Array.isArray(signals) || signals.length === 0) {
    throw new InvalidArgumentError('signals must be a non-empty array of signal names such as SIGTERM');
  }
  for (const s of signals) {
    if (typeof s !== 'string' || !(s in osConstants.signals)) {
      throw new InvalidArgumentError(`unknown signal ${JSON.stringify(s)} (expected a name from os.constants.signals, e.g. 'SIGTERM')`);
    }
    if (UNCATCHABLE.has(s)) throw new InvalidArgumentError(`${s} cannot be caught by a process`);
  }
  return [...new Set(signals as SignalName[])];
}

/**
 * `waitForSignal`'s options, checked before anything is installed. `null` means no options and a
 * `null` signal no signal, as `@miniss/timer`'s `sleep` takes them.
 */
function checkWaitOptions(opts: unknown): AbortSignal | undefined {
  if (opts === undefined || opts === null) return undefined;
  if (typeof opts !== 'object') {
    throw new InvalidArgumentError(`waitForSignal: opts must be an object such as { signal }, got ${describe(opts)}`);
  }
  const signal = (opts as { signal?: unknown }).signal;
  if (signal === undefined || signal === null) return undefined;
  if (!(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError(`waitForSignal: opts.signal must be an AbortSignal, got ${describe(signal)}`);
  }
  return signal;
}

/**
 * The per-runtime instance of the plugin: it owns every listener this package installed on the
 * runtime's behalf. At `close()` (runtime shutdown, after tasks were cancelled) each owner is told
 * the runtime shut down: a pending `waitForSignal` removes its listeners and rejects with
 * `RUNTIME_SHUTDOWN`, a `gracefulShutdown` removes its listeners.
 */
export class SignalPlugin implements RuntimePlugin {
  private readonly owners = new Set<(reason: RuntimeError) => void>();
  private received = 0;
  private closed = false;

  /**
   * @internal Registers `onClose`, called once at `close()` unless released first. Returns the
   * release function. Throws `RUNTIME_SHUTDOWN` once the plugin has closed: nothing would ever
   * remove what the caller is about to install.
   */
  _own(onClose: (reason: RuntimeError) => void): () => void {
    if (this.closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime has shut down: it no longer handles signals');
    this.owners.add(onClose);
    return () => {
      this.owners.delete(onClose);
    };
  }

  /** @internal */
  _received(): void {
    this.received++;
  }

  /**
   * Settles every owner. One owner that throws does not stop the others from being removed; the
   * errors are thrown together at the end (core reports them as `PLUGIN_CLOSE_FAILED`).
   */
  close(): void {
    this.closed = true;
    const reason = new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime shut down while waiting for a signal');
    const errors: unknown[] = [];
    for (const onClose of [...this.owners]) {
      this.owners.delete(onClose);
      try {
        onClose(reason);
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} signal listeners failed to close`);
  }

  stats(): Record<string, number> {
    return { listeners: this.owners.size, received: this.received };
  }
}

export const minissPlugin: PluginFactory<SignalPlugin> = {
  feature: 'signal',
  create: () => new SignalPlugin(),
};

/**
 * Resolves with the name of the first of `signals` (default SIGINT and SIGTERM) the process
 * receives. Aborting `opts.signal` removes the listeners and rejects with its reason (an Error
 * reason as is, anything else wrapped in a `CancelledError`). Rejects with `RUNTIME_SHUTDOWN` if the
 * runtime shuts down first. Needs a runtime with `features: ['signal']` (`FEATURE_UNAVAILABLE`
 * otherwise, `NO_RUNTIME` outside one) on the main thread (`FEATURE_UNAVAILABLE` on another core
 * or worker thread: Node delivers signals to the main thread only); bad arguments reject with
 * `INVALID_ARGUMENT`. Never throws synchronously, and installs nothing when it rejects at once.
 */
export function waitForSignal(signals?: string[], opts?: { signal?: AbortSignal }): Promise<string> {
  let list: SignalName[];
  let abort: AbortSignal | undefined;
  let plugin: SignalPlugin;
  try {
    list = checkSignals(signals);
    abort = checkWaitOptions(opts);
    plugin = currentRuntime().plugin<SignalPlugin>('signal');
    if (!isMainThread) throw new RuntimeError('FEATURE_UNAVAILABLE', `waitForSignal: ${NOT_MAIN_THREAD}`);
  } catch (err) {
    return Promise.reject(err);
  }
  if (abort?.aborted) return Promise.reject(abortReason(abort));
  return new Promise<string>((resolve, reject) => {
    let settled = false;
    /** Ends the wait once: takes every listener out. False if it had already ended. */
    const finish = (): boolean => {
      if (settled) return false;
      settled = true;
      release();
      for (const s of list) process.removeListener(s, onSignal);
      abort?.removeEventListener('abort', onAbort);
      return true;
    };
    const onSignal = (name: SignalName): void => {
      if (!finish()) return;
      plugin._received();
      resolve(name);
    };
    const onAbort = (): void => {
      if (finish()) reject(abortReason(abort!));
    };
    // Owned before anything is installed: if the plugin has closed this throws (and the
    // executor turns it into the rejection) with nothing left behind.
    const release = plugin._own((reason) => {
      if (finish()) reject(reason);
    });
    for (const s of list) process.on(s, onSignal);
    abort?.addEventListener('abort', onAbort, { once: true });
  });
}

/** One core's share of the work left during a drain. */
export interface CoreProgress {
  core: number;
  tasksLeft: number;
  connectionsLeft: number;
}

/** What `onProgress` receives while a graceful shutdown runs. */
export interface ShutdownProgress {
  /** 'draining' during the grace period, 'closed' when everything has shut down. */
  phase: 'draining' | 'closed';
  /** The signal that started the shutdown. */
  signal: string;
  elapsedMs: number;
  tasksLeft: number;
  /** Open sockets, listeners and files still held by tasks. */
  connectionsLeft: number;
  cores: CoreProgress[];
  /** Set when the shutdown itself failed (a plugin failed to close, a core crashed). */
  error?: unknown;
}

export interface GracefulShutdownOptions {
  /** Default SIGINT and SIGTERM. */
  signals?: string[];
  /** How long running tasks and in-flight I/O may take to finish before they are cancelled. Default 10,000; at most 2^31 - 1. */
  graceMs?: number;
  /** Called when the drain starts, every `progressIntervalMs` during it, and once at the end. */
  onProgress?: (progress: ShutdownProgress) => void;
  /** Default 250. */
  progressIntervalMs?: number;
  /**
   * What a second signal during the drain does. Default: `process.exit(128 + signo)` at once,
   * as a shell would report a process killed by that signal.
   */
  onForcedExit?: (signal: string, code: number) => void;
}

/** What `gracefulShutdown` returns. */
export interface GracefulShutdown extends Disposable {
  /** Settles when a shutdown started by a signal is over (never if none arrives). */
  readonly done: Promise<void>;
  /**
   * The signal that started the shutdown, or null while none has arrived. Lets a caller tell the
   * `CancelledError` of a root task cut off at `graceMs` (a requested stop) from a real failure.
   */
  readonly signal: string | null;
}

/** The shutdown surface shared by `Runtime` and `MultiCoreRuntime` (and core's `MultiCoreRuntimeLike`). */
interface Shutdownable {
  shutdown(opts?: ShutdownOptions): Promise<void>;
  stats?: () => unknown;
  coreStats?: () => Array<{ core: number; tasksActive?: number; openResources?: number }>;
}

function progressOf(runtime: Shutdownable): { tasksLeft: number; connectionsLeft: number; cores: CoreProgress[] } {
  let cores: CoreProgress[];
  if (typeof runtime.coreStats === 'function') {
    cores = runtime.coreStats().map((c) => ({ core: c.core, tasksLeft: c.tasksActive ?? 0, connectionsLeft: c.openResources ?? 0 }));
  } else {
    const s = (runtime.stats?.() ?? {}) as { tasksActive?: number; openResources?: number };
    cores = [{ core: 0, tasksLeft: s.tasksActive ?? 0, connectionsLeft: s.openResources ?? 0 }];
  }
  return {
    tasksLeft: cores.reduce((a, c) => a + c.tasksLeft, 0),
    connectionsLeft: cores.reduce((a, c) => a + c.connectionsLeft, 0),
    cores,
  };
}

function isRuntime(x: unknown): x is Runtime {
  return typeof (x as Runtime | null)?.plugin === 'function' && typeof (x as Runtime).hasFeature === 'function';
}

function refuseShutDown(): RuntimeError {
  return new RuntimeError(
    'RUNTIME_SHUTDOWN',
    'gracefulShutdown: the runtime is shutting down or has shut down; call gracefulShutdown before runtime.blockOn(...) or shutdown()',
  );
}

/**
 * On the first of `signals`: stop accepting (listeners close and new spawns get
 * `RUNTIME_SHUTDOWN`), let running tasks and in-flight I/O finish for `graceMs`, cancel the rest,
 * close every backend on every core, and remove the listeners so the process exits by itself with
 * code 0. A second signal during the drain exits at once with 128 + signo.
 *
 * Who removes the listeners when no signal comes: on a `Runtime` (which needs
 * `features: ['signal']`), its signal plugin when the runtime shuts down; on a `MultiCoreRuntime`,
 * this function itself once the whole multicore shutdown (every core) is over — it watches core 0's
 * `shutdownSignal`, so the multicore runtime needs no `'signal'` feature. A signal-started
 * shutdown keeps its listeners until that shutdown is over, so a second signal still forces the
 * exit while the last cores drain. Throws `RUNTIME_SHUTDOWN` on a runtime that is already shutting
 * down (nothing would remove the listeners) and `FEATURE_UNAVAILABLE` off the main thread.
 *
 * Returns a `Disposable` that removes the listeners (use it with `using`, or call
 * `[Symbol.dispose]()`), with the `done` promise and the `signal` that started the shutdown.
 */
export function gracefulShutdown(runtime: Runtime | Shutdownable, opts: GracefulShutdownOptions = {}): GracefulShutdown {
  if (opts === null || typeof opts !== 'object') {
    throw new InvalidArgumentError(`gracefulShutdown: opts must be an object, got ${describe(opts)}`);
  }
  const list = checkSignals(opts.signals);
  const graceMs = opts.graceMs ?? 10_000;
  if (typeof graceMs !== 'number' || !(graceMs >= 0 && graceMs <= MAX_TIMER_MS)) {
    throw new InvalidArgumentError(`graceMs must be a number of milliseconds in 0..${MAX_TIMER_MS}, got ${String(opts.graceMs)}`);
  }
  const intervalMs = opts.progressIntervalMs ?? 250;
  // Node's setInterval runs every 1 ms for anything above 2^31 - 1.
  if (typeof intervalMs !== 'number' || !(intervalMs > 0 && intervalMs <= MAX_TIMER_MS)) {
    throw new InvalidArgumentError(`progressIntervalMs must be a number of milliseconds in (0, ${MAX_TIMER_MS}], got ${String(opts.progressIntervalMs)}`);
  }
  // Checked now: a bad onForcedExit would otherwise throw inside a signal listener, uncaught.
  for (const k of ['onProgress', 'onForcedExit'] as const) {
    if (opts[k] !== undefined && opts[k] !== null && typeof opts[k] !== 'function') {
      throw new InvalidArgumentError(`gracefulShutdown: ${k} must be a function, got ${describe(opts[k])}`);
    }
  }
  if (!runtime || typeof (runtime as Shutdownable).shutdown !== 'function') {
    throw new InvalidArgumentError('gracefulShutdown expects a Runtime or a MultiCoreRuntime');
  }
  if (!isMainThread) throw new RuntimeError('FEATURE_UNAVAILABLE', `gracefulShutdown: ${NOT_MAIN_THREAD}`);
  const rt = runtime as Shutdownable;

  // A Runtime must have enabled the feature (its plugin owns the listeners). A MultiCoreRuntime
  // exposes its core-0 Runtime as `runtime`; its plugin, if enabled there, only counts signals.
  let plugin: SignalPlugin | undefined;
  let core0: Runtime | undefined;
  if (isRuntime(runtime)) {
    if (runtime.isShuttingDown) throw refuseShutDown();
    plugin = runtime.plugin<SignalPlugin>('signal');
  } else {
    const inner: unknown = (runtime as { runtime?: unknown }).runtime;
    if (isRuntime(inner)) {
      core0 = inner;
      if (core0.isShuttingDown) throw refuseShutDown();
      if (core0.hasFeature('signal')) plugin = core0.plugin<SignalPlugin>('signal');
    }
  }

  let started: string | null = null;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));

  const report = (phase: ShutdownProgress['phase'], signal: string, t0: number, error?: unknown): void => {
    if (!opts.onProgress) return;
    let p: { tasksLeft: number; connectionsLeft: number; cores: CoreProgress[] };
    try {
      p = progressOf(rt);
    } catch {
      p = { tasksLeft: 0, connectionsLeft: 0, cores: [] };
    }
    const progress: ShutdownProgress = { phase, signal, elapsedMs: Math.round(performance.now() - t0), ...p };
    if (error !== undefined) progress.error = error;
    try {
      opts.onProgress(progress);
    } catch {
      /* a logging callback must not break the shutdown */
    }
  };

  const onSignal = (name: SignalName): void => {
    plugin?._received();
    if (started !== null) {
      const code = 128 + (osConstants.signals[name] ?? 0);
      if (opts.onForcedExit) opts.onForcedExit(name, code);
      else process.exit(code);
      return;
    }
    started = name;
    // From here this shutdown owns the listeners, not the plugin: the plugin closes before the
    // backend (and, on a MultiCoreRuntime, before the other cores) is done, and a second signal
    // must force the exit until the very end.
    release();
    const t0 = performance.now();
    report('draining', name, t0);
    const ticker = setInterval(() => report('draining', name, t0), intervalMs);
    ticker.unref();
    let shutdown: Promise<void>;
    try {
      shutdown = rt.shutdown({ graceMs });
    } catch (err) {
      shutdown = Promise.reject(err);
    }
    shutdown.then(
      () => {
        clearInterval(ticker);
        report('closed', name, t0);
        dispose();
        resolveDone();
      },
      (err: unknown) => {
        clearInterval(ticker);
        report('closed', name, t0, err);
        dispose();
        process.exitCode = 1;
        resolveDone();
      },
    );
  };

  // A MultiCoreRuntime shut down by other means (its blockOn returned, shutdown() was called, a
  // crash policy): remove the listeners once every core is down. The abort is dispatched inside
  // shutdown() before the multicore runtime has stored its promise, so ask for it a microtask
  // later (shutdown() is idempotent and then returns that same promise).
  const onCoreShutdown = (): void => {
    queueMicrotask(() => {
      if (disposed || started !== null) return;
      let shuttingDown = false;
      try {
        shuttingDown = (rt.stats?.() as { shuttingDown?: unknown } | undefined)?.shuttingDown === true;
      } catch {
        /* treat as not shutting down */
      }
      // Core 0 alone was shut down: it can no longer drain anything, so stop listening now.
      if (!shuttingDown) return dispose();
      let whole: Promise<void>;
      try {
        whole = rt.shutdown();
      } catch {
        return dispose();
      }
      whole.then(dispose, dispose);
    });
  };

  let disposed = false;
  const removeListeners = (): void => {
    for (const s of list) process.removeListener(s, onSignal);
  };
  const dispose = (): void => {
    if (disposed) return;
    disposed = true;
    release();
    removeListeners();
    watched?.removeEventListener('abort', onCoreShutdown);
  };

  // Owned (or watched) before anything is installed, so nothing can be left behind.
  const release = plugin !== undefined && core0 === undefined ? plugin._own(dispose) : (): void => {};
  const watched = core0?.shutdownSignal;
  watched?.addEventListener('abort', onCoreShutdown, { once: true });
  for (const s of list) process.on(s, onSignal);
  return {
    done,
    get signal() {
      return started;
    },
    [Symbol.dispose]: dispose,
  };
}
