import { constants as osConstants } from 'node:os';
import {
  InvalidArgumentError,
  currentRuntime,
  type PluginFactory,
  type Runtime,
  type RuntimePlugin,
  type ShutdownOptions,
} from '@miniss/core';

/**
 * `@miniss/signal`: wait for process signals, and shut a runtime down gracefully on one.
 *
 * Signals reach only the main thread in Node, so this plugin lives on core 0; a
 * `MultiCoreRuntime`'s own `shutdown()` relays the shutdown to every other core through its
 * cross-core rings. Signal listeners installed here never keep the process alive on their own (Node's
 * signal handles are unreferenced), and every listener is removed when its wait ends, when its
 * `Disposable` is disposed, or when the runtime closes the plugin.
 */

export type SignalName = NodeJS.Signals;

const DEFAULT_SIGNALS: SignalName[] = ['SIGINT', 'SIGTERM'];

/** Signals Node cannot listen for (the kernel does not let a process catch them). */
const UNCATCHABLE = new Set(['SIGKILL', 'SIGSTOP']);

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

/** The per-runtime instance of the plugin: it owns every listener this package installed. */
export class SignalPlugin implements RuntimePlugin {
  private readonly disposers = new Set<() => void>();
  private received = 0;

  /** @internal Registers a listener remover, run at `close()`. */
  _own(dispose: () => void): () => void {
    this.disposers.add(dispose);
    return () => {
      if (this.disposers.delete(dispose)) dispose();
    };
  }

  /** @internal */
  _received(): void {
    this.received++;
  }

  close(): void {
    for (const d of [...this.disposers]) d();
    this.disposers.clear();
  }

  stats(): Record<string, number> {
    return { listeners: this.disposers.size, received: this.received };
  }
}

export const minissPlugin: PluginFactory<SignalPlugin> = {
  feature: 'signal',
  create: () => new SignalPlugin(),
};

function pluginOf(runtime: { plugin?: unknown }): SignalPlugin | undefined {
  if (typeof (runtime as Runtime).plugin === 'function') return (runtime as Runtime).plugin<SignalPlugin>('signal');
  return undefined;
}

/**
 * Resolves with the name of the first of `signals` (default SIGINT and SIGTERM) the process
 * receives. Aborting `opts.signal` removes the listeners and rejects with its reason. Needs a
 * runtime with `features: ['signal']` (`FEATURE_UNAVAILABLE` otherwise, `NO_RUNTIME` outside one);
 * unknown names reject with `INVALID_ARGUMENT`.
 */
export function waitForSignal(signals?: string[], opts: { signal?: AbortSignal } = {}): Promise<string> {
  let list: SignalName[];
  let plugin: SignalPlugin;
  try {
    list = checkSignals(signals);
    plugin = currentRuntime().plugin<SignalPlugin>('signal');
  } catch (err) {
    return Promise.reject(err);
  }
  const abort = opts.signal;
  if (abort?.aborted) return Promise.reject(abort.reason);
  return new Promise<string>((resolve, reject) => {
    const onSignal = (name: SignalName): void => {
      plugin._received();
      release();
      resolve(name);
    };
    const onAbort = (): void => {
      release();
      reject(abort!.reason);
    };
    const remove = (): void => {
      for (const s of list) process.removeListener(s, onSignal);
      abort?.removeEventListener('abort', onAbort);
    };
    const release = plugin._own(remove);
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
  /** How long running tasks and in-flight I/O may take to finish before they are cancelled. Default 10,000. */
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

/** The shutdown surface shared by `Runtime` and `MultiCoreRuntime`. */
interface Shutdownable {
  shutdown(opts?: ShutdownOptions): Promise<void>;
  stats(): unknown;
  coreStats?: () => Array<{ core: number; tasksActive?: number; openResources?: number }>;
}

function progressOf(runtime: Shutdownable): { tasksLeft: number; connectionsLeft: number; cores: CoreProgress[] } {
  let cores: CoreProgress[];
  if (typeof runtime.coreStats === 'function') {
    cores = runtime.coreStats().map((c) => ({ core: c.core, tasksLeft: c.tasksActive ?? 0, connectionsLeft: c.openResources ?? 0 }));
  } else {
    const s = runtime.stats() as { tasksActive?: number; openResources?: number };
    cores = [{ core: 0, tasksLeft: s.tasksActive ?? 0, connectionsLeft: s.openResources ?? 0 }];
  }
  return {
    tasksLeft: cores.reduce((a, c) => a + c.tasksLeft, 0),
    connectionsLeft: cores.reduce((a, c) => a + c.connectionsLeft, 0),
    cores,
  };
}

/**
 * On the first of `signals`: stop accepting (listeners close and new spawns get
 * `RUNTIME_SHUTDOWN`), let running tasks and in-flight I/O finish for `graceMs`, cancel the rest,
 * close every backend on every core, and remove the listeners so the process exits by itself with
 * code 0. A second signal during the drain exits at once with 128 + signo. Returns a `Disposable`
 * that removes the listeners (use it with `using`, or call `[Symbol.dispose]()`).
 */
export function gracefulShutdown(runtime: Runtime | Shutdownable, opts: GracefulShutdownOptions = {}): Disposable & { readonly done: Promise<void> } {
  const list = checkSignals(opts.signals);
  const graceMs = opts.graceMs ?? 10_000;
  if (typeof graceMs !== 'number' || !(graceMs >= 0) || !Number.isFinite(graceMs)) {
    throw new InvalidArgumentError(`graceMs must be a finite non-negative number, got ${String(opts.graceMs)}`);
  }
  const intervalMs = opts.progressIntervalMs ?? 250;
  if (typeof intervalMs !== 'number' || !(intervalMs > 0)) {
    throw new InvalidArgumentError(`progressIntervalMs must be a positive number, got ${String(opts.progressIntervalMs)}`);
  }
  if (!runtime || typeof (runtime as Shutdownable).shutdown !== 'function') {
    throw new InvalidArgumentError('gracefulShutdown expects a Runtime or a MultiCoreRuntime');
  }
  const rt = runtime as Shutdownable;
  // A Runtime must have enabled the feature; a MultiCoreRuntime relays to its cores itself.
  const plugin = pluginOf(runtime as { plugin?: unknown });

  let started = false;
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
    if (started) {
      const code = 128 + (osConstants.signals[name] ?? 0);
      if (opts.onForcedExit) opts.onForcedExit(name, code);
      else process.exit(code);
      return;
    }
    started = true;
    const t0 = performance.now();
    report('draining', name, t0);
    const ticker = setInterval(() => report('draining', name, t0), intervalMs);
    ticker.unref();
    rt.shutdown({ graceMs }).then(
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

  const remove = (): void => {
    for (const s of list) process.removeListener(s, onSignal);
  };
  for (const s of list) process.on(s, onSignal);
  const release = plugin ? plugin._own(remove) : remove;
  let disposed = false;
  const dispose = (): void => {
    if (disposed) return;
    disposed = true;
    release();
  };
  return {
    done,
    [Symbol.dispose]: dispose,
  };
}

