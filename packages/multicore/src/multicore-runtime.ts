/* eslint-disable @typescript-eslint/no-explicit-any -- shipped functions take (...args, signal): typed loosely on purpose */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { MAX_TIMER_MS, Runtime, RuntimeError, type RuntimeConfig, type ShutdownOptions } from '@miniss/core';
import { BYTES_PER_MESSAGE, RING_HEADER_BYTES, createRing, ringDataBytes } from './byte-ring.js';
import { describeValue, messageOf, stackOf } from './codec.js';
import { CoreNode } from './core-node.js';
import type { CoreTaskHandle } from './handle.js';
import {
  ACTIVE,
  BACKLOG,
  COMPLETED,
  CoreState,
  GLOBAL_SHUTDOWN,
  MSGS_IN,
  MSGS_OUT,
  OPEN_RESOURCES,
  PIN_CPU,
  PIN_ERRNO,
  PIN_FAILED,
  SLEEPING,
  SLEEPS,
  STATE,
  TASKS_ACTIVE,
  WAKEUPS,
  coreBase,
  createControlBlock,
} from './layout.js';
import { setCurrentCore } from './current.js';
import { allowedCpus, pinThread, restoreAffinity, threadAffinity } from './pin.js';
import type { WorkerInit } from './worker.js';

export interface MultiCoreConfig extends RuntimeConfig {
  cores?: number;
  /**
   * Pin core i to the i-th CPU this thread may run on (its affinity mask: CPU i when that is every
   * CPU) through the native backend's setAffinity (default true). Cores beyond those CPUs are not pinned.
   */
  pin?: boolean;
  /**
   * How long an idle core keeps polling its rings after its last message before it sleeps on its
   * doorbell, ms (default 0.05 = 50 us; fractions allowed).
   */
  spinMs?: number;
  /**
   * How long a core that waits for results from other cores keeps polling before it sleeps, ms
   * (default 1: longer than a round trip to an idle core takes here, wake-up included, so it costs
   * one wake-up, not two; see the README's "Doorbell" section).
   */
  awaitSpinMs?: number;
  /**
   * How long, after `graceMs`, shutdown waits for a worker core to send its last results and exit
   * before it terminates the worker, ms (default 5000; 0..2^31-1). Only a core whose thread is
   * blocked (a synchronous loop in a task) needs it.
   */
  workerExitTimeoutMs?: number;
}

export interface CoreStat {
  core: number;
  state: 'starting' | 'running' | 'stopping' | 'exited' | 'crashed';
  /** The CPU the core is pinned to, or null (not asked, no native backend, beyond the CPUs, or refused). */
  pinnedCpu: number | null;
  pinErrno: number | null;
  /** Tasks other cores placed here and not settled (the load measure's remote part). */
  tasksFromOtherCores: number;
  tasksCompletedForOtherCores: number;
  /** The core runtime's own tasksActive and openResources (a worker publishes them before it sleeps and at most every 20 ms while awake). */
  tasksActive: number;
  openResources: number;
  /** The core is asleep on its doorbell right now (its SLEEPING flag is up). */
  asleep: boolean;
  sleeps: number;
  wakeups: number;
  backlog: number;
  crash?: { message: string; stack?: string };
  /**
   * True when shutdown had to terminate this core's worker (it had not exited `workerExitTimeoutMs`
   * after the grace period); its state is then 'exited' and its tasks rejected `RUNTIME_SHUTDOWN`.
   */
  terminated?: boolean;
}

const STATE_NAMES = ['starting', 'running', 'stopping', 'exited', 'crashed'] as const;

/** At shutdown, the shortest wait for SharedArrayBuffers of results already read (see doShutdown). */
const SAB_DRAIN_MIN_MS = 100;

const WORKER_URL = new URL('./worker.js', import.meta.url);

/**
 * The largest `crossCpuChannelCapacity`: 2^20 messages. Each ring takes 64 bytes of shared memory
 * per message (rounded up to a power of two), and there are cores·(cores-1) rings, so this bound
 * already means 64 MiB per ring and 768 MiB for 4 cores. A ring is back-pressure between two
 * cores, never storage (a full ring queues locally, it does not drop), so a bigger one buys
 * nothing but memory; and the ring's free-running 32-bit head and tail cap a ring at 2^31 bytes.
 */
export const MAX_CHANNEL_CAPACITY = 1 << 20;

/** A configuration value for an error message: strings quoted (so '2' does not read as 2). */
function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : describeValue(v);
}

function parseConfig(arg: number | MultiCoreConfig | undefined): MultiCoreConfig {
  if (arg === undefined) return {};
  if (typeof arg === 'number') return { cores: arg };
  if (typeof arg !== 'object' || arg === null) {
    throw new RuntimeError('INVALID_CONFIG', `MultiCoreRuntime expects a core count or a config object, got ${shown(arg)}`);
  }
  return arg;
}

/**
 * A shared-nothing multicore runtime: core 0 is the calling thread, cores 1..n-1 are worker
 * threads, each with its own {@link Runtime}. Cores talk only through bounded SPSC rings in
 * shared memory (see {@link CoreNode} for the loop, doorbell and back-pressure).
 */
export class MultiCoreRuntime {
  readonly cores: number;
  private readonly control: SharedArrayBuffer;
  private readonly ctl: Int32Array;
  private readonly runtime0: Runtime;
  private readonly node0: CoreNode;
  private readonly workers: Array<Worker | null> = [null];
  private readonly exited: Array<Promise<void>> = [];
  private readonly crashes = new Map<number, Error>();
  /** Cores whose workers shutdown terminated (they had not exited in time): not crashes. */
  private readonly terminated = new Set<number>();
  private readonly workerExitTimeoutMs: number;
  private shutdownPromise: Promise<void> | null = null;
  /** The calling thread's `Cpus_allowed_list` before core 0 was pinned (null: not pinned / not Linux). */
  private affinityBefore: string | null = null;
  private affinityRestore: 'restored' | 'unchanged' | 'failed' | null = null;
  /** Called when a core crashes (an uncaught error on its thread). */
  onCoreCrash: ((core: number, err: Error) => void) | null = null;

  constructor(arg?: number | MultiCoreConfig) {
    const cfg = parseConfig(arg);
    const n = cfg.cores ?? availableParallelism();
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) {
      throw new RuntimeError('INVALID_CONFIG', `cores must be a positive integer, got ${shown(n)} (e.g. new MultiCoreRuntime(4))`);
    }
    const capacity = cfg.crossCpuChannelCapacity ?? 1000;
    if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity <= 0 || capacity > MAX_CHANNEL_CAPACITY) {
      throw new RuntimeError(
        'INVALID_CONFIG',
        `crossCpuChannelCapacity must be an integer in 1..${MAX_CHANNEL_CAPACITY} (messages per ring; default 1000), got ${shown(capacity)}`,
      );
    }
    this.cores = n;
    const pin = cfg.pin ?? true;
    const spinMs = cfg.spinMs ?? 0.05;
    const awaitSpinMs = cfg.awaitSpinMs ?? 1;
    for (const [k, v] of [['spinMs', spinMs], ['awaitSpinMs', awaitSpinMs]] as const) {
      if (typeof v !== 'number' || !(v >= 0) || v > 1000) {
        throw new RuntimeError('INVALID_CONFIG', `${k} must be a number of milliseconds in 0..1000, got ${shown(v)}`);
      }
    }
    const exitMs = cfg.workerExitTimeoutMs ?? 5000;
    if (typeof exitMs !== 'number' || !(exitMs >= 0) || exitMs > MAX_TIMER_MS) {
      throw new RuntimeError('INVALID_CONFIG', `workerExitTimeoutMs must be a number of milliseconds in 0..${MAX_TIMER_MS}, got ${shown(exitMs)}`);
    }
    this.workerExitTimeoutMs = exitMs;
    const { cores: _c, pin: _p, spinMs: _s, awaitSpinMs: _a, workerExitTimeoutMs: _w, ...rest } = cfg;
    void _c;
    void _p;
    void _s;
    void _a;
    void _w;
    const coreConfig: RuntimeConfig = { ...rest, features: (cfg.features ?? []).filter((f) => f !== 'multicore') };

    // Core i is pinned to the i-th CPU the process may run on (its affinity mask, read before any
    // thread is pinned), not to CPU i: under `taskset` or a container's cpuset the CPUs allowed
    // need not start at 0. Cores beyond the allowed CPUs are not pinned.
    const cpus = pin ? allowedCpus() : [];

    this.control = createControlBlock(n);
    this.ctl = new Int32Array(this.control);
    const rings: Array<SharedArrayBuffer | null> = [];
    try {
      for (let from = 0; from < n; from++) for (let to = 0; to < n; to++) rings.push(from === to ? null : createRing(capacity));
    } catch (err) {
      // Within the bound, many cores can still ask for more shared memory than there is.
      const bytes = RING_HEADER_BYTES + ringDataBytes(capacity);
      throw new RuntimeError(
        'INVALID_CONFIG',
        `cannot allocate ${n * (n - 1)} cross-core rings of ${bytes} bytes (crossCpuChannelCapacity ${capacity} x ${BYTES_PER_MESSAGE} bytes, ` +
          `cores ${n}): ${(err as Error)?.message}. Lower crossCpuChannelCapacity or cores`,
        { cause: err },
      );
    }
    // ports[a][b]: a's end of the channel between a and b (SharedArrayBuffers travel by port).
    const ports: Array<Array<MessagePort | null>> = [];
    for (let a = 0; a < n; a++) ports.push(new Array<MessagePort | null>(n).fill(null));
    for (let a = 0; a < n; a++) {
      for (let b = a + 1; b < n; b++) {
        const ch = new MessageChannel();
        ports[a]![b] = ch.port1;
        ports[b]![a] = ch.port2;
      }
    }

    this.runtime0 = new Runtime(coreConfig);
    setCurrentCore(0);
    this.node0 = new CoreNode({ core: 0, cores: n, control: this.control, rings, ports: ports[0]!, runtime: this.runtime0, spinMs, awaitSpinMs });
    for (let c = 1; c < n; c++) {
      const init: WorkerInit = {
        core: c,
        cores: n,
        control: this.control,
        rings,
        ports: ports[c]!,
        config: coreConfig,
        spinMs,
        awaitSpinMs,
        pinCpu: c < cpus.length ? cpus[c]! : -1,
      };
      const w = new Worker(WORKER_URL, { workerData: init, transferList: ports[c]!.filter((p): p is MessagePort => p !== null) });
      this.workers.push(w);
      this.exited.push(
        new Promise<void>((resolve) => {
          w.on('error', (err) => this.onCrash(c, err));
          w.on('exit', () => {
            const b = coreBase(c);
            const st = Atomics.load(this.ctl, b + STATE);
            if (st !== CoreState.Exited && st !== CoreState.Crashed) {
              if (this.terminated.has(c)) this.onTerminated(c);
              else this.onCrash(c, new RuntimeError('CORE_CRASHED', `core ${c} exited unexpectedly`));
            }
            resolve();
          });
        }),
      );
    }
    // Pin core 0 after the workers exist: threads inherit their creator's affinity mask.
    // Core 0 is the caller's thread: remember its affinity to give it back at shutdown.
    this.affinityBefore = pin ? threadAffinity() : null;
    pinThread(this.runtime0, cpus.length > 0 ? cpus[0]! : -1, this.ctl, coreBase(0));
    Atomics.store(this.ctl, coreBase(0) + STATE, CoreState.Running);
    this.node0.start();
  }

  private onCrash(core: number, err: Error): void {
    if (this.crashes.has(core)) return;
    const b = coreBase(core);
    if (Atomics.load(this.ctl, b + STATE) === CoreState.Exited) return;
    Atomics.store(this.ctl, b + STATE, CoreState.Crashed);
    this.crashes.set(core, err);
    const lost = new RuntimeError('CORE_CRASHED', `core ${core} crashed: ${messageOf(err)}; its tasks are lost`, { cause: err });
    this.node0.coreLost(core, lost);
    for (let c = 1; c < this.cores; c++) if (c !== core) this.node0.sendCoreLost(c, core);
    try {
      this.onCoreCrash?.(core, err);
    } catch {
      /* a logging hook must not break crash handling */
    }
    if (this.onCoreCrash === null) {
      process.emitWarning(`miniss core ${core} crashed: ${stackOf(err)}`, { type: 'MinissCoreCrash' });
    }
  }

  /**
   * Shutdown terminated core `core`'s worker: it is not a crash (no warning, no onCoreCrash), but
   * its tasks are lost, so their handles reject with `RUNTIME_SHUTDOWN` saying why.
   */
  private onTerminated(core: number): void {
    Atomics.store(this.ctl, coreBase(core) + STATE, CoreState.Exited);
    const err = new RuntimeError(
      'RUNTIME_SHUTDOWN',
      `core ${core} was terminated by shutdown: it had not exited ${this.workerExitTimeoutMs} ms after the grace period ` +
        '(its thread was blocked, e.g. by a synchronous loop in a task), so its tasks are lost',
    );
    this.node0.coreLost(core, err);
    for (let c = 1; c < this.cores; c++) if (c !== core) this.node0.sendCoreLost(c, core);
  }

  /** blockOn is running a root task (it shuts every core down when the task settles). */
  private rootActive = false;

  /** The runtime of core 0 (the calling thread). */
  get runtime(): Runtime {
    return this.runtime0;
  }

  /** Runs `fn` as the root task on core 0, then shuts every core down. */
  async blockOn<T>(fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    // One root task at a time, as core's Runtime.blockOn: a second one (nested in a task, or
    // beside the first) would shut every core down under the first when it settled.
    if (this.rootActive) {
      throw new RuntimeError(
        'RUNTIME_EXISTS',
        'blockOn: this multicore runtime is already running a root task; spawn the work and await its handle instead',
      );
    }
    const root = this.runtime0.spawn(fn as () => Awaited<T>);
    this.rootActive = true;
    const keepAlive = setInterval(() => {}, 1 << 30);
    try {
      return await root;
    } finally {
      clearInterval(keepAlive);
      this.rootActive = false; // shutdown() below refuses later spawns from here on
      await this.shutdown();
    }
  }

  /** Runs `fn(...args, signal)` on the least-loaded core (see README: load measure). */
  spawn<T, A extends unknown[]>(fn: (...args: any[]) => T | PromiseLike<T>, ...args: A): CoreTaskHandle<Awaited<T>> {
    return this.node0.spawn(fn as (...a: unknown[]) => T, args);
  }

  /** Runs `fn(...args, signal)` on core `core`. */
  spawnOn<T, A extends unknown[]>(core: number, fn: (...args: any[]) => T | PromiseLike<T>, ...args: A): CoreTaskHandle<Awaited<T>> {
    return this.node0.spawnOn(core, fn as (...a: unknown[]) => T, args);
  }

  /** Runs `fn(...args, signal)` once on every core; results by core. */
  broadcast<T, A extends unknown[]>(fn: (...args: any[]) => T | PromiseLike<T>, ...args: A): Promise<Array<Awaited<T>>> {
    return this.node0.broadcast(fn as (...a: unknown[]) => T, args);
  }

  /**
   * Stops new spawns (`RUNTIME_SHUTDOWN`) on every core, lets running tasks finish for `graceMs`
   * (listeners close at once on every core, as each core runtime's shutdown does), cancels the
   * rest, closes every backend and waits for every worker to exit.
   */
  shutdown(opts: ShutdownOptions = {}): Promise<void> {
    if (this.shutdownPromise !== null) return this.shutdownPromise;
    const graceMs = opts.graceMs ?? 0;
    // Checked as core's Runtime.shutdown checks it: a longer grace (or Infinity) would reach
    // setTimeout, which turns it into 1 ms, here and on every worker.
    if (typeof graceMs !== 'number' || !(graceMs >= 0) || graceMs > MAX_TIMER_MS) {
      return Promise.reject(new RuntimeError('INVALID_ARGUMENT', `graceMs must be a number of milliseconds in 0..${MAX_TIMER_MS}, got ${shown(graceMs)}`));
    }
    this.shutdownPromise = this.doShutdown(graceMs);
    return this.shutdownPromise;
  }

  private async doShutdown(graceMs: number): Promise<void> {
    Atomics.store(this.ctl, GLOBAL_SHUTDOWN, 1);
    Atomics.store(this.ctl, coreBase(0) + STATE, CoreState.Stopping);
    this.node0.refuse();
    for (let c = 1; c < this.cores; c++) this.node0.sendShutdown(c, graceMs);
    this.node0.detachBackend();
    // Give the calling thread its affinity back (before the backend that can set it closes).
    if (this.affinityBefore !== null && Atomics.load(this.ctl, coreBase(0) + PIN_CPU) >= 0) {
      this.affinityRestore = restoreAffinity(this.runtime0, this.affinityBefore);
    }
    let shutdownErr: unknown = null;
    const t0 = performance.now();
    try {
      await this.runtime0.shutdown({ graceMs });
    } catch (err) {
      shutdownErr = err;
    }
    // Workers get their grace plus time to report; a worker that does not exit is terminated.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const all = Promise.all(this.exited);
    const waitMs = Math.min(graceMs + this.workerExitTimeoutMs, MAX_TIMER_MS);
    const done = await Promise.race([all.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), waitMs)))]);
    clearTimeout(timer);
    if (!done) {
      for (let c = 1; c < this.cores; c++) {
        const st = Atomics.load(this.ctl, coreBase(c) + STATE);
        if (st !== CoreState.Exited && st !== CoreState.Crashed) this.terminated.add(c);
      }
      for (const w of this.workers) if (w) await w.terminate();
    }
    // The workers' last results are published in the rings before they exit: read them all.
    while (this.node0.poll() > 0) {
      /* keep draining */
    }
    // A result that carries SharedArrayBuffers is parked until they arrive on its port, a turn
    // or more later (they were posted before the result was published, so they are on the way):
    // let the ports deliver them before stop() closes the ports, within the shutdown's deadline
    // (grace plus workerExitTimeoutMs), and at least SAB_DRAIN_MIN_MS (the deadline may have been
    // spent waiting for a worker).
    const deadline = Math.max(t0 + graceMs + this.workerExitTimeoutMs, performance.now() + SAB_DRAIN_MIN_MS);
    while (this.node0.parkedCount > 0 && performance.now() < deadline) {
      await new Promise<void>((r) => setImmediate(r));
      while (this.node0.poll() > 0) {
        /* keep draining */
      }
    }
    Atomics.store(this.ctl, coreBase(0) + STATE, CoreState.Exited);
    this.node0.stop(new RuntimeError('RUNTIME_SHUTDOWN', 'the multicore runtime shut down'));
    setCurrentCore(undefined);
    if (shutdownErr !== null) throw shutdownErr;
  }

  /** Per-core progress, for gracefulShutdown's reports. */
  coreStats(): Array<{ core: number; tasksActive: number; openResources: number }> {
    return this.perCore().map((s) => ({ core: s.core, tasksActive: s.tasksActive, openResources: s.openResources }));
  }

  /** Whole-runtime stats: per-core state, pinning, load and transport counters, crashes. */
  stats(): {
    cores: number;
    pinned: boolean;
    /**
     * What shutdown did about the calling thread's CPU affinity (core 0 was pinned to the first allowed CPU):
     * 'restored' to `affinityBefore`, 'unchanged' (nothing to do), 'failed' (it stays pinned;
     * restoring a multi-CPU mask needs `taskset`), null before shutdown or when core 0 was not pinned.
     */
    core0Affinity: { before: string | null; restore: 'restored' | 'unchanged' | 'failed' | null };
    shuttingDown: boolean;
    perCore: CoreStat[];
    core0: ReturnType<Runtime['stats']>;
  } {
    const perCore = this.perCore();
    return {
      cores: this.cores,
      pinned: perCore.every((c) => c.pinnedCpu !== null),
      core0Affinity: { before: this.affinityBefore, restore: this.affinityRestore },
      shuttingDown: this.shutdownPromise !== null,
      perCore,
      core0: this.runtime0.stats(),
    };
  }

  private perCore(): CoreStat[] {
    const out: CoreStat[] = [];
    const s0 = this.runtime0.stats();
    for (let c = 0; c < this.cores; c++) {
      const b = coreBase(c);
      const pc = Atomics.load(this.ctl, b + PIN_CPU);
      const crash = this.crashes.get(c);
      const st: CoreStat = {
        core: c,
        state: STATE_NAMES[Atomics.load(this.ctl, b + STATE)] ?? 'crashed',
        pinnedCpu: pc >= 0 ? pc : null,
        pinErrno: pc === PIN_FAILED ? Atomics.load(this.ctl, b + PIN_ERRNO) : null,
        tasksFromOtherCores: Atomics.load(this.ctl, b + ACTIVE),
        tasksCompletedForOtherCores: Atomics.load(this.ctl, b + COMPLETED),
        tasksActive: c === 0 ? s0.tasksActive : Atomics.load(this.ctl, b + TASKS_ACTIVE),
        openResources: c === 0 ? s0.openResources : Atomics.load(this.ctl, b + OPEN_RESOURCES),
        asleep: Atomics.load(this.ctl, b + SLEEPING) === 1,
        sleeps: Atomics.load(this.ctl, b + SLEEPS),
        wakeups: Atomics.load(this.ctl, b + WAKEUPS),
        backlog: Atomics.load(this.ctl, b + BACKLOG),
      };
      if (crash !== undefined) st.crash = { message: crash.message, ...(crash.stack !== undefined ? { stack: crash.stack } : {}) };
      if (this.terminated.has(c)) st.terminated = true;
      out.push(st);
      void MSGS_IN;
      void MSGS_OUT;
    }
    return out;
  }
}
