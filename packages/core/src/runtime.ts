import { setMaxListeners } from 'node:events';
import { closeSync } from 'node:fs';
import { MAX_TIMER_MS, type IoBackend, type IoCompletion, type IoHandleId, type IoOperation } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import { resolveConfig, BACKEND_FEATURE, type FeatureName, type ResolvedConfig, type RuntimeConfig } from './config.js';
import { CancelledError, InvalidArgumentError, IoError, RuntimeError } from './errors.js';
import { checkSignal } from './io-operation.js';
import { createConfiguredBackend, loadFeature, type BackendProbe } from './loader.js';
import { JoinHandle, TaskState, type TaskScheduler } from './task.js';

/**
 * The per-thread runtime: a run queue of tasks, one I/O backend, the plugins its config named.
 *
 * The loop, stage by stage (docs/design.md has the long form):
 *
 * 1. `spawn` appends the task to the run queue. The first spawn of a loop turn schedules one
 *    drain with `setImmediate`; every later spawn of the turn rides on it. A task that is
 *    awaited before the drain reaches it starts right then, inside `then`: awaiting a fresh
 *    handle costs no extra hop through the event loop.
 * 2. The drain runs queued tasks in FIFO order. A task whose function returns synchronously
 *    settles right there; an async one settles when its promise does. At most `DRAIN_BUDGET`
 *    tasks run per drain; the rest continue from `setImmediate`, so a task that keeps spawning
 *    cannot starve I/O.
 * 3. Tasks submit I/O through {@link Runtime.io}: the operation goes to the backend's submission
 *    queue at once, and one flush per batch (one microtask) hands the whole batch
 *    to the kernel in one boundary crossing.
 * 4. The backend's one pollable fd is watched by Node's loop; when it fires, the runtime reaps
 *    every completion with `poll(0)` and resolves the waiting promises, whose continuations run
 *    as microtasks and submit the next batch.
 *
 * Everything here is per thread: a worker thread of the multicore plugin runs its own Runtime.
 */

/** The runtime's view of an opt-in plugin (`@miniss/timer`, `@miniss/signal`, ...). */
export interface RuntimePlugin {
  /** Called once during shutdown, after tasks have been cancelled and before the backend closes. */
  close?(): void | Promise<void>;
  /** Numbers merged into `runtime.stats()` under the plugin's feature name. */
  stats?(): Record<string, number>;
}

/** What a plugin package exports as `minissPlugin`. */
export interface PluginFactory<P extends RuntimePlugin = RuntimePlugin> {
  readonly feature: FeatureName;
  create(runtime: Runtime): P;
}

/** Something the runtime closes at shutdown if the user did not (files, sockets, listeners). */
export interface TrackedResource {
  /** Closes the resource at shutdown; a returned promise is awaited (bounded) before the backend closes. */
  _forceClose(): void | Promise<unknown>;
  /** Called when shutdown begins (before the grace period): listeners stop accepting here. */
  _onShutdownBegin?(): void;
}

export interface RuntimeStats {
  tasksSpawned: number;
  tasksCompleted: number;
  tasksFailed: number;
  tasksCancelled: number;
  /** Spawned and not yet settled. */
  tasksActive: number;
  /** Entries in the run queue (tasks spawned and not started yet, plus started ones the drain has not passed). */
  runQueueLength: number;
  ioSubmitted: number;
  ioCompleted: number;
  ioInFlight: number;
  /** Files, sockets and listeners opened through this runtime and not closed yet. */
  openResources: number;
  backend: string;
  /** How the backend was chosen: every rung tried, with why the skipped ones were skipped. */
  backendLadder: BackendProbe[];
  features: FeatureName[];
  shuttingDown: boolean;
  /** Plugin stats by feature, e.g. `plugins.timer.active`. */
  plugins: Record<string, Record<string, number>>;
}

export interface ShutdownOptions {
  /** How long tasks still running may take to finish before they are cancelled. Default 0. */
  graceMs?: number;
}

/**
 * @internal One operation in flight: how to settle its promise, and its links in its owner's
 * list. One small object per operation (a class, so every record has the same shape).
 */
export class PendingIo {
  onAbort: (() => void) | undefined = undefined;
  /** Neighbours in the owner's list of operations in flight. */
  prev: PendingIo | null = null;
  next: PendingIo | null = null;
  constructor(
    readonly id: IoHandleId,
    public resolve: (n: number) => void,
    public reject: (e: unknown) => void,
    readonly signal: AbortSignal | undefined,
    readonly owner: IoOwner | undefined,
  ) {}
}

/**
 * @internal Something that owns in-flight operations (a file, a stream, a listener): the runtime
 * links the records of its operations into a list headed here (no Set insertion per operation),
 * so closing it can cancel them first. Closing an fd does not wake an io_uring request already
 * holding the file, so the owner must cancel before closing. Initialise it to null.
 */
export interface IoOwner {
  _ioHead?: PendingIo | null;
}

/** Pending operations live in a direct-mapped table by `id & IO_TABLE_MASK`; collisions go to a Map. */
const IO_TABLE_SIZE = 4096;
const IO_TABLE_MASK = IO_TABLE_SIZE - 1;

// The resolving functions of the promise being created by io(): the executor is one shared
// function, not a closure per operation.
let capturedResolve: ((n: number) => void) | undefined;
let capturedReject: ((e: unknown) => void) | undefined;
function captureResolvers(resolve: (n: number) => void, reject: (e: unknown) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

/** A settled promise whose then() queues a microtask (queueMicrotask costs an AsyncResource per call). */
const RESOLVED: Promise<void> = Promise.resolve();

const DRAIN_BUDGET = 4096;
/** Shutdown: rounds of closing resources made by operations that completed during the previous one. */
const RESOURCE_ROUNDS = 16;
/** Shutdown: how long it waits for close operations to complete before it closes the backend anyway. */
const CLOSE_WAIT_MS = 2000;
/** Failed tasks nobody awaited kept for the warnings at shutdown (each holds its error). */
const UNOBSERVED_KEPT = 16;
/** The smallest size at which the live-task array is compacted (see `_compactLive`). */
const LIVE_MIN = 64;
const CURRENT = Symbol.for('miniss.currentRuntime');

type Slot = { [CURRENT]?: Runtime | undefined };

/** The runtime running on this thread, if any (shared by every copy of this module in the thread). */
function getCurrent(): Runtime | undefined {
  return (globalThis as Slot)[CURRENT];
}

export class Runtime implements TaskScheduler {
  /** The checked configuration, defaults filled in. */
  readonly config: ResolvedConfig;
  private readonly _backend: IoBackend;
  private readonly _ladder: BackendProbe[];
  private readonly _plugins = new Map<FeatureName, RuntimePlugin>();
  private _pool: BufferPool | null = null;

  // Run queue: a growable array used as a FIFO with a moving head (no shift()).
  private _queue: Array<JoinHandle<unknown>> = [];
  private _head = 0;
  // The newest spawned task waits here, not in `_queue`: it is the one `await spawn(fn)` takes
  // back at once, so the common spawn-and-await pays one field store instead of an array push
  // and pop. The next spawn (or the drain) moves it to the queue's tail, keeping FIFO order.
  private _newest: JoinHandle<unknown> | null = null;
  private _drainScheduled = false;
  // A one-entry cache of `fn.length > 0` for `_run` (see there).
  private _arityFn: unknown = null;
  private _arityWants = false;
  private readonly _drainBound = () => this._drain();
  // Late callbacks of settled handles, run from one microtask per batch.
  private readonly _notifyQueue: Array<JoinHandle<unknown>> = [];
  private _notifyScheduled = false;
  private readonly _notifyBound = () => this._notifyPending();

  // Live tasks (queued or running), so shutdown can cancel them: spawn appends to an array and
  // settled entries are dropped lazily, when the array has grown past twice the tasks it held live
  // after the last compaction (amortised O(1); settling a task writes nothing here). Measured
  // a few ns per spawn+await cheaper than an intrusive doubly-linked list, whose two stores into
  // older objects per spawn hit the GC write barrier. Settled handles wait for the next
  // compaction: at most about twice the recent peak of live tasks (64 at least).
  private _live: Array<JoinHandle<unknown>> = [];
  private _liveLimit = LIVE_MIN;

  /** The task whose function is executing right now (synchronously), or null. */
  currentTask: JoinHandle<unknown> | null = null;

  // I/O bookkeeping.
  private readonly _ioTable: Array<PendingIo | undefined> = new Array<PendingIo | undefined>(IO_TABLE_SIZE).fill(undefined);
  private readonly _ioOverflow = new Map<IoHandleId, PendingIo>();
  private _ioPending = 0;
  private _flushScheduled = false;
  private readonly _flushBound = () => this._flush();
  private readonly _resources = new Set<TrackedResource>();

  // Stats.
  private _spawned = 0;
  private _completed = 0;
  private _failed = 0;
  private _cancelled = 0;
  private _active = 0;
  private _ioSubmitted = 0;
  private _ioCompleted = 0;
  /** Failed tasks nobody was awaiting when they failed (the first UNOBSERVED_KEPT; re-checked at shutdown). */
  private _unobservedFailures: JoinHandle<unknown>[] = [];
  /** Such failures past what `_unobservedFailures` keeps. */
  private _unobservedDropped = 0;

  private _shutdownStarted = false;
  /** blockOn is running a root task (it shuts the runtime down when the task settles). */
  private _rootActive = false;
  /** Tasks started inside `then` (awaited before the drain reached them) since the last drain. */
  private _inlineRuns = 0;
  private _shutdownPromise: Promise<void> | null = null;
  private _idleWaiters: Array<() => void> = [];

  constructor(config: RuntimeConfig = {}) {
    this.config = resolveConfig(config);
    if (this.config.features.includes('multicore')) {
      throw new RuntimeError(
        'INVALID_CONFIG',
        "features: ['multicore'] makes a MultiCoreRuntime: use createRuntime(config) or new MultiCoreRuntime(...) from @miniss/multicore",
      );
    }
    const existing = getCurrent();
    if (existing !== undefined) {
      throw new RuntimeError(
        'RUNTIME_EXISTS',
        `a runtime is already running on this thread; shut it down first (await runtime.shutdown()) or use currentRuntime()`,
      );
    }
    const { backend, ladder } = createConfiguredBackend(this.config);
    this._backend = backend;
    this._ladder = ladder;
    try {
      for (const feature of this.config.features) {
        if (isBackendFeature(feature)) continue;
        const mod = loadFeature<{ minissPlugin?: PluginFactory }>(feature);
        if (!mod.minissPlugin || typeof mod.minissPlugin.create !== 'function') {
          throw new RuntimeError('FEATURE_UNAVAILABLE', `feature '${feature}': its package does not export minissPlugin`);
        }
        this._plugins.set(feature, mod.minissPlugin.create(this));
      }
    } catch (err) {
      for (const p of this._plugins.values()) void p.close?.();
      backend.close();
      throw err;
    }
    backend.onReady(() => this._reap());
    (globalThis as Slot)[CURRENT] = this;
  }

  /** The backend the config resolved to. */
  get backend(): IoBackend {
    return this._backend;
  }

  /** This runtime's buffer pool; on `directIo` backends its memory is 4096-aligned native memory. */
  get bufferPool(): BufferPool {
    if (this._pool === null) {
      const alloc = this._backend.allocateBuffer?.bind(this._backend);
      this._pool = new BufferPool(this.config.bufferPool, alloc);
    }
    return this._pool;
  }

  /** True once `shutdown()` has begun: `spawn` then throws `RUNTIME_SHUTDOWN`. */
  get isShuttingDown(): boolean {
    return this._shutdownStarted;
  }

  hasFeature(feature: FeatureName): boolean {
    return this._plugins.has(feature) || (isBackendFeature(feature) && this.config.features.includes(feature));
  }

  /**
   * The instance of an enabled plugin. Throws `FEATURE_UNAVAILABLE` naming the fix when the
   * runtime was not configured with it (tokio's "call enable_time").
   */
  plugin<P extends RuntimePlugin>(feature: FeatureName): P {
    const p = this._plugins.get(feature);
    if (p === undefined) {
      throw new RuntimeError(
        'FEATURE_UNAVAILABLE',
        `the '${feature}' feature is not enabled in this runtime: create it with features: ['${feature}'] (and install @miniss/${feature})`,
      );
    }
    return p as P;
  }

  // ---------------------------------------------------------------------------------------------
  // Tasks

  /**
   * Spawns `fn` as a task on this runtime. It starts on the next drain of the run queue (never
   * synchronously inside `spawn`). `fn` receives the task's AbortSignal if it declares a parameter.
   */
  spawn<T>(fn: (signal: AbortSignal) => T | PromiseLike<T>): JoinHandle<Awaited<T>> {
    if (this._shutdownStarted) {
      throw new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime is shutting down: no new tasks can be spawned');
    }
    if (typeof fn !== 'function') {
      throw new RuntimeError('INVALID_ARGUMENT', `spawn expects a function, got ${fn === null ? 'null' : typeof fn}`);
    }
    const handle = new JoinHandle<Awaited<T>>(this, fn as (signal?: AbortSignal) => Awaited<T>);
    this._spawned++;
    this._active++;
    const h = handle as JoinHandle<unknown>;
    const live = this._live;
    live.push(h);
    if (live.length > this._liveLimit) this._compactLive();
    const prev = this._newest;
    if (prev !== null) this._queue.push(prev);
    this._newest = h;
    if (!this._drainScheduled) {
      this._drainScheduled = true;
      setImmediate(this._drainBound);
    }
    return handle;
  }

  /**
   * Runs `fn` as the root task, keeps the process alive until it settles, then shuts the
   * runtime down (tasks still running are cancelled, plugins and the backend closed). Settles
   * with `fn`'s result or error.
   */
  async blockOn<T>(fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    // One root task at a time: a second one (a blockOn nested in a task, or two started side by
    // side) would shut the runtime down under the first when it settled.
    if (this._rootActive) {
      throw new RuntimeError(
        'RUNTIME_EXISTS',
        'blockOn: this runtime is already running a root task; spawn the work and await its handle instead',
      );
    }
    const root = this.spawn(fn as () => Awaited<T>);
    this._rootActive = true;
    // A pending promise does not keep Node alive; a root task waiting on something that isn't an
    // I/O operation or timer (say, another thread) must still hold the process open.
    const keepAlive = setInterval(noop, 1 << 30);
    try {
      return await root;
    } finally {
      clearInterval(keepAlive);
      this._rootActive = false; // shutdown() below refuses later spawns (RUNTIME_SHUTDOWN) from here on
      await this.shutdown();
    }
  }

  /** @internal TaskScheduler: a settled handle with late callbacks goes back on the queue. */
  _requeue(handle: JoinHandle<unknown>): void {
    if (handle._requeued) return;
    handle._requeued = true;
    this._notifyQueue.push(handle);
    if (!this._notifyScheduled) {
      this._notifyScheduled = true;
      void RESOLVED.then(this._notifyBound);
    }
  }

  /** @internal TaskScheduler: a handle awaited before the drain reached it starts right away. */
  _runNow(handle: JoinHandle<unknown>): void {
    // A loop of spawn-and-await starts each task here and never returns to the event loop (every
    // step is a microtask): past a drain's budget, leave the task queued for the drain that its
    // spawn scheduled with setImmediate, so timers and I/O get their turn first.
    if (++this._inlineRuns > DRAIN_BUDGET) return;
    // `await spawn(fn)` awaits the newest task: take it out of `_newest` (or the queue's tail) so
    // a loop of spawn-and-await does not grow the queue until the next drain.
    // Awaiting a batch of spawned handles in spawn order takes them from the queue's head the
    // same way, so the queue never holds a long run of already-started entries.
    if (this._newest === handle) {
      this._newest = null;
      this._run(handle);
      return;
    }
    const q = this._queue;
    if (q.length > this._head) {
      if (q[q.length - 1] === handle) q.pop();
      else if (q[this._head] === handle) q[this._head++] = undefined as unknown as JoinHandle<unknown>;
      // (Setting an array's length is a slow builtin call: only when the head moved.)
      if (this._head === q.length && this._head !== 0) {
        q.length = 0;
        this._head = 0;
      }
    }
    this._run(handle);
  }

  private _notifyPending(): void {
    this._notifyScheduled = false;
    const q = this._notifyQueue;
    // Callbacks may requeue more handles; they join this same pass.
    for (let i = 0; i < q.length; i++) {
      const t = q[i]!;
      t._requeued = false;
      t._notify();
    }
    q.length = 0;
  }

  /** @internal TaskScheduler bookkeeping. */
  _taskSettled(handle: JoinHandle<unknown>, cancelled: boolean, failedUnobserved: boolean): void {
    this._active--;
    if (cancelled) this._cancelled++;
    else if (handle._state === TaskState.Ok) this._completed++;
    else {
      this._failed++;
      if (failedUnobserved && !isCancelledError(handle._value)) this._keepUnobserved(handle);
    }
    if (this._active === 0 && this._idleWaiters.length > 0) {
      const ws = this._idleWaiters;
      this._idleWaiters = [];
      for (const w of ws) w();
    }
  }

  /**
   * Remembers a task that failed while nobody awaited it, for the warning at shutdown. Only a few
   * are kept (each holds its error and stack): when the list is full, the ones awaited since are
   * dropped first, and past that only a count is kept.
   */
  private _keepUnobserved(handle: JoinHandle<unknown>): void {
    let kept = this._unobservedFailures;
    if (kept.length >= UNOBSERVED_KEPT) kept = this._unobservedFailures = kept.filter((h) => !h._observed);
    if (kept.length < UNOBSERVED_KEPT) kept.push(handle);
    else this._unobservedDropped++;
  }

  private _drain(): void {
    this._drainScheduled = false;
    this._inlineRuns = 0;
    const q = this._queue;
    let budget = DRAIN_BUDGET;
    for (;;) {
      if (this._head >= q.length) {
        // The queue is done: the newest spawn (perhaps by a task of this drain) comes last.
        const n = this._newest;
        if (n === null) break;
        this._newest = null;
        q.push(n);
      }
      if (budget-- === 0) {
        this._drainScheduled = true;
        setImmediate(this._drainBound);
        break;
      }
      const t = q[this._head]!;
      q[this._head++] = undefined as unknown as JoinHandle<unknown>;
      // Handles awaited before the drain got here have already been started by then().
      if (t._state === TaskState.Queued) this._run(t);
    }
    if (this._head === q.length) {
      q.length = 0;
      this._head = 0;
    } else if (this._head > 1024 && this._head * 2 > q.length) {
      q.splice(0, this._head);
      this._head = 0;
    }
  }

  private _run(t: JoinHandle<unknown>): void {
    t._state = TaskState.Running;
    const fn = t._fn!;
    let r: unknown;
    // then() may start a task from inside another task's synchronous code: restore, don't clear.
    const outer = this.currentTask;
    this.currentTask = t;
    try {
      // Does fn take the signal? `fn.length` is a C++ accessor call (~10-15 ns, a tenth of a
      // spawn): remember the answer for the last function spawned, which a loop spawning the
      // same function again and again hits every time.
      let wants: boolean;
      if (fn === this._arityFn) wants = this._arityWants;
      else {
        wants = fn.length > 0;
        this._arityFn = fn;
        this._arityWants = wants;
      }
      r = wants ? fn(t.signal) : fn();
    } catch (err) {
      this.currentTask = outer;
      t._settle(false, err, false);
      return;
    }
    this.currentTask = outer;
    if (r !== null && typeof r === 'object' && typeof (r as PromiseLike<unknown>).then === 'function') {
      // Two closures and one then() cost less than awaiting the promise in an async helper.
      (r as PromiseLike<unknown>).then(
        (v) => t._settle(true, v, false),
        (e) => t._settle(false, e, false),
      );
    } else {
      t._settle(true, r, false);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // I/O

  /**
   * Submits one operation to the backend and resolves with its result (bytes, fd, 0), or rejects
   * with an `IoError` (`code` is the errno name), the signal's reason if `signal` aborts first
   * (the backend operation is then cancelled), or `RUNTIME_SHUTDOWN`. Submissions made in the
   * same turn reach the kernel in one flush. A `signal` that is not an `AbortSignal` rejects
   * with `INVALID_ARGUMENT` before anything is submitted.
   *
   * `settleOnAbort` (internal, for a File's position-less calls, which it runs at explicit
   * offsets): on abort, settle with what the kernel did, as for stream data (see
   * {@link isStreamData}), because the file's own position must advance by the bytes really read
   * or written.
   */
  io(op: IoOperation, signal?: AbortSignal, owner?: IoOwner, settleOnAbort?: boolean): Promise<number> {
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      try {
        checkSignal(signal, op !== null && typeof op === 'object' && typeof op.op === 'string' ? op.op : 'io');
      } catch (err) {
        return Promise.reject(err);
      }
    }
    if (this._backendClosed) {
      return Promise.reject(new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime has shut down: no more I/O'));
    }
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    let id: IoHandleId;
    try {
      id = this._backend.submit(op);
    } catch (err) {
      return Promise.reject(err);
    }
    this._ioSubmitted++;
    if (!this._flushScheduled) {
      this._flushScheduled = true;
      void RESOLVED.then(this._flushBound);
    }
    // Per operation: the promise (with its two resolving functions) and one PendingIo record.
    // No closure unless a signal was given; no Map or Set insertion in the common case.
    const promise = new Promise<number>(captureResolvers);
    const p = new PendingIo(id, capturedResolve!, capturedReject!, signal, owner);
    capturedResolve = undefined;
    capturedReject = undefined;
    if (owner !== undefined) {
      const head = owner._ioHead ?? null;
      p.next = head;
      if (head !== null) head.prev = p;
      owner._ioHead = p;
    }
    if (signal !== undefined) {
      const reject = p.reject;
      p.onAbort = isStreamData(op, settleOnAbort, this._backend.name !== 'node')
        ? () => {
            // Bytes a stream operation took from or put on a socket or pipe cannot be had again:
            // if the kernel did it before the cancel reached it (io_uring posts the completion at
            // once and it waits to be reaped), settle with that result; only the cancellation
            // itself (ECANCELED) rejects, with the signal's reason, when the backend reports it.
            if (this._ioFind(id) !== p) return;
            p.reject = (e: unknown) => reject(isCanceledError(e) ? abortReason(signal) : e);
            this._backend.cancel(id);
            this._scheduleFlush();
          }
        : () => {
            // Reject now; the backend still completes the operation once (ECANCELED or its
            // result) and keeps its buffer pinned until then. Such operations can be done again
            // (a read or write at an explicit offset, a timeout) or their result is taken care
            // of: an fd that still arrives (the operation finished before the cancel reached it)
            // has no owner any more, so it is closed rather than leaked.
            if (this._ioFind(id) !== p) return;
            p.resolve = op.op === 'open' || op.op === 'socket' || op.op === 'accept' ? this._closeOrphanFd : noop;
            p.reject = noop;
            this._backend.cancel(id);
            this._scheduleFlush();
            reject(abortReason(signal));
          };
      signal.addEventListener('abort', p.onAbort, { once: true });
    }
    const slot = id & IO_TABLE_MASK;
    if (this._ioTable[slot] === undefined) this._ioTable[slot] = p;
    else this._ioOverflow.set(id, p);
    this._ioPending++;
    return promise;
  }

  /** Closes an fd whose operation was aborted after the kernel had made it (nobody will ever own it). */
  private readonly _closeOrphanFd = (fd: number): void => {
    if (this._backendClosed || !(fd >= 0)) return;
    try {
      this._backend.submit({ op: 'close', fd });
    } catch {
      return; // the backend is closing: it closes what it handed out
    }
    this._scheduleFlush();
  };

  /** The record of operation `id` if it is still pending. */
  private _ioFind(id: IoHandleId): PendingIo | undefined {
    const p = this._ioTable[id & IO_TABLE_MASK];
    if (p !== undefined && p.id === id) return p;
    return this._ioOverflow.size === 0 ? undefined : this._ioOverflow.get(id);
  }

  private _flush(): void {
    this._flushScheduled = false;
    if (!this._backendClosed) this._backend.flush();
  }

  private readonly _sink = (id: IoHandleId, result: number | Error): void => this._complete(id, result);

  private _reap(): void {
    const be = this._backend;
    if (typeof be.drain === 'function') {
      // No completion objects or arrays: the backend hands each result straight to _complete.
      while (be.drain(this._sink) > 0);
      return;
    }
    for (;;) {
      const batch: IoCompletion[] = this._backend.poll(0);
      if (batch.length === 0) return;
      for (let i = 0; i < batch.length; i++) {
        const c = batch[i]!;
        this._complete(c.handle, c.result);
      }
    }
  }

  private _complete(id: IoHandleId, result: number | Error): void {
    const slot = id & IO_TABLE_MASK;
    let p = this._ioTable[slot];
    if (p !== undefined && p.id === id) {
      this._ioTable[slot] = undefined;
    } else {
      p = this._ioOverflow.size === 0 ? undefined : this._ioOverflow.get(id);
      if (p === undefined) return;
      this._ioOverflow.delete(id);
    }
    this._ioPending--;
    this._ioCompleted++;
    if (p.owner !== undefined) unlinkFromOwner(p);
    if (p.onAbort !== undefined) p.signal!.removeEventListener('abort', p.onAbort);
    if (typeof result === 'number') p.resolve(result);
    else p.reject(result);
  }

  /**
   * @internal Asks the backend to cancel every operation `owner` has in flight. Each still
   * completes once (ECANCELED or its result), which settles its promise as usual.
   */
  _cancelOwned(owner: IoOwner): void {
    if (this._backendClosed) return;
    const head = owner._ioHead ?? null;
    for (let p = head; p !== null; p = p.next) this._backend.cancel(p.id);
    if (head !== null) this._scheduleFlush();
  }

  /** Batching backends hand cancellations to the kernel at the next flush: make sure one comes. */
  private _scheduleFlush(): void {
    if (!this._flushScheduled && !this._backendClosed) {
      this._flushScheduled = true;
      void RESOLVED.then(this._flushBound);
    }
  }

  /** @internal Files, sockets and listeners register so shutdown can close what is left open. */
  _trackResource(r: TrackedResource): void {
    this._resources.add(r);
  }

  /** @internal */
  _untrackResource(r: TrackedResource): void {
    this._resources.delete(r);
  }

  /**
   * @internal The close of a file, listener or socket: forgets it, cancels what it has in flight
   * (each operation still settles once) and closes `fd`. Shutdown waits (bounded) for these closes
   * before it closes the backend, also for the ones the caller started itself (the resource is no
   * longer tracked by then): a close still queued when the backend closed was refused with
   * `RUNTIME_SHUTDOWN` and its fd leaked (the native backends do not close the descriptors they
   * handed out). A close after the backend closed was never submitted, so it closes `fd` here.
   */
  _closeResource(r: TrackedResource & IoOwner, fd: number): Promise<void> {
    this._untrackResource(r);
    this._cancelOwned(r);
    if (this._backendClosed) {
      try {
        closeSync(fd);
      } catch {
        /* already gone */
      }
      return Promise.resolve();
    }
    const p = this.io({ op: 'close', fd }).then(noop, closeFailed);
    const settled = p.then(noop, noop);
    this._closing.add(settled);
    void settled.then(() => this._closing.delete(settled));
    return p;
  }

  /** Close operations of resources in flight (see `_closeResource`); settled promises. */
  private readonly _closing = new Set<Promise<void>>();

  // ---------------------------------------------------------------------------------------------
  // Shutdown

  private _backendClosed = false;

  /**
   * Shuts the runtime down: new spawns throw `RUNTIME_SHUTDOWN` at once; tasks still running get
   * `graceMs` to finish and are then cancelled; open files and sockets are closed; plugins close;
   * the backend closes (in-flight I/O is cancelled). Idempotent: later calls return the same promise.
   */
  shutdown(opts: ShutdownOptions = {}): Promise<void> {
    if (this._shutdownPromise !== null) return this._shutdownPromise;
    const graceMs = opts.graceMs ?? 0;
    // The wait is one setTimeout, which Node fires after 1 ms for anything above 2^31 - 1 ms.
    if (typeof graceMs !== 'number' || !(graceMs >= 0 && graceMs <= MAX_TIMER_MS)) {
      return Promise.reject(new RuntimeError('INVALID_ARGUMENT', `graceMs must be a number of milliseconds in 0..${MAX_TIMER_MS}, got ${String(graceMs)}`));
    }
    this._shutdownStarted = true;
    this._shutdownController?.abort(new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime is shutting down'));
    for (const r of [...this._resources]) {
      try {
        r._onShutdownBegin?.();
      } catch {
        /* best effort: the resource is force-closed after the grace period anyway */
      }
    }
    this._shutdownPromise = this._doShutdown(graceMs);
    return this._shutdownPromise;
  }

  private _shutdownController: AbortController | null = null;

  /**
   * Aborted when shutdown begins (before the grace period), with a `RUNTIME_SHUTDOWN` reason.
   * Long-running tasks (accept loops, keep-alive connections) watch it to wind down in time:
   * one listener per connection is the expected use, so it has no listener limit (Node warns past
   * 10 listeners on a signal otherwise).
   */
  get shutdownSignal(): AbortSignal {
    if (this._shutdownController === null) {
      this._shutdownController = new AbortController();
      setMaxListeners(0, this._shutdownController.signal);
      if (this._shutdownStarted) this._shutdownController.abort(new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime is shutting down'));
    }
    return this._shutdownController.signal;
  }

  private async _doShutdown(graceMs: number): Promise<void> {
    if (graceMs > 0 && this._active > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this._idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    // Cancel whatever is still queued or running.
    this._cancelLive();
    // Let cancellation callbacks run before resources and the backend go away.
    await new Promise<void>((r) => setImmediate(r));
    await this._closeResources();
    // Operations in flight during the pass above may have made resources since: an open, a
    // connect or an accept that completed turns into a File or TcpStream (tracked from then on)
    // a microtask later. The native backends do not close the descriptors they handed out when
    // they close, so such a resource must be closed here, or its fd leaks (and its object still
    // says it is open). Each round lets the completions reaped meanwhile become their resources
    // first; bounded, in case a task that ignores its cancellation keeps opening things. The
    // rounds come before the plugins close, so what a plugin's close rejects (a signal wait, a
    // sleep) is settled just before the runtime is done, not an event-loop turn earlier, where a
    // caller that awaits it after blockOn returns would find it an unhandled rejection.
    // A close that never completes (one waiting behind a system call stuck in the file pool) is
    // waited for up to CLOSE_WAIT_MS in all, not once per round.
    const closeDeadline = Date.now() + CLOSE_WAIT_MS;
    for (let round = 0; round < RESOURCE_ROUNDS; round++) {
      await new Promise<void>((r) => setImmediate(r));
      if (this._resources.size === 0 && (this._closing.size === 0 || Date.now() >= closeDeadline)) break;
      await this._closeResources();
    }
    const errors: unknown[] = [];
    for (const [name, p] of [...this._plugins].reverse()) {
      try {
        await p.close?.();
      } catch (err) {
        errors.push(new RuntimeError('PLUGIN_CLOSE_FAILED', `plugin '${name}' failed to close: ${(err as Error)?.message}`, { cause: err }));
      }
    }
    this._backendClosed = true;
    this._backend.onReady(null);
    this._backend.close();
    const shutdownErr = new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime shut down while the operation was in flight');
    const pending = [...this._ioTable, ...this._ioOverflow.values()];
    this._ioTable.fill(undefined);
    this._ioOverflow.clear();
    this._ioPending = 0;
    for (const p of pending) {
      if (p === undefined) continue;
      if (p.owner !== undefined) unlinkFromOwner(p);
      if (p.onAbort !== undefined) p.signal!.removeEventListener('abort', p.onAbort);
      p.reject(shutdownErr);
    }
    if ((globalThis as Slot)[CURRENT] === this) (globalThis as Slot)[CURRENT] = undefined;
    this._arityFn = null; // holds no closure (and what it captured) past shutdown
    // A task awaited (and its error caught) after it failed was observed after all.
    for (const h of this._unobservedFailures) {
      if (h._observed) continue;
      process.emitWarning(`a miniss task failed and nobody awaited it: ${describeFailure(h._value)}`, {
        type: 'MinissUnobservedTaskError',
      });
    }
    if (this._unobservedDropped > 0) {
      process.emitWarning(
        `${this._unobservedDropped} more miniss tasks failed while nobody awaited them (only the first ${UNOBSERVED_KEPT} are shown)`,
        { type: 'MinissUnobservedTaskError' },
      );
    }
    this._unobservedFailures = [];
    this._unobservedDropped = 0;
    if (errors.length > 0) throw errors[0];
  }

  /**
   * Force-closes every tracked resource and waits (bounded) for the closes to reach the kernel and
   * complete, so fds are released by their owner rather than dropped with the backend.
   */
  private async _closeResources(): Promise<void> {
    const closing: Promise<unknown>[] = [];
    for (const r of [...this._resources]) {
      try {
        const p = r._forceClose();
        if (p !== undefined) closing.push(p.then(noop, noop));
      } catch {
        /* closing is best effort at shutdown */
      }
    }
    this._resources.clear();
    // And the closes started before (by the caller's own close(), no longer tracked).
    for (const p of this._closing) closing.push(p);
    if (closing.length > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([Promise.all(closing), new Promise<void>((r) => (timer = setTimeout(r, CLOSE_WAIT_MS)))]);
      clearTimeout(timer);
    }
  }

  /** Drops settled handles from the live array (in place, order kept). */
  private _compactLive(): void {
    const live = this._live;
    let k = 0;
    for (let i = 0; i < live.length; i++) {
      const t = live[i]!;
      if (t._state < TaskState.Ok) live[k++] = t;
    }
    live.length = k;
    // Twice what is live, and at least half the old limit (so a burst that settled does not make
    // the next burst compact again and again): each compaction follows at least limit/2 spawns.
    this._liveLimit = Math.max(LIVE_MIN, 2 * k, this._liveLimit >> 1);
  }

  /** Cancels every task still live (queued or running), oldest first. */
  private _cancelLive(): void {
    // Cancelling runs hooks that may settle other tasks; spawns are refused during shutdown.
    const live = this._live;
    this._live = [];
    this._liveLimit = LIVE_MIN;
    for (let i = 0; i < live.length; i++) live[i]!.cancel('the runtime shut down');
  }

  // ---------------------------------------------------------------------------------------------

  stats(): RuntimeStats {
    const plugins: Record<string, Record<string, number>> = {};
    for (const [name, p] of this._plugins) {
      if (p.stats) plugins[name] = p.stats();
    }
    return {
      tasksSpawned: this._spawned,
      tasksCompleted: this._completed,
      tasksFailed: this._failed,
      tasksCancelled: this._cancelled,
      tasksActive: this._active,
      runQueueLength: this._queue.length - this._head + (this._newest !== null ? 1 : 0),
      ioSubmitted: this._ioSubmitted,
      ioCompleted: this._ioCompleted,
      ioInFlight: this._ioPending,
      openResources: this._resources.size,
      backend: this._backend.name,
      backendLadder: this._ladder.map((r) => ({ ...r })),
      features: [...this.config.features],
      shuttingDown: this._shutdownStarted,
      plugins,
    };
  }
}

function isBackendFeature(f: FeatureName): boolean {
  return (Object.values(BACKEND_FEATURE) as FeatureName[]).includes(f);
}

/**
 * What an aborted miniss operation rejects with: the signal's reason when it is an Error with a
 * string `code` (a CancelledError of a cancelled task, a RuntimeError, the caller's own typed
 * error), else a CancelledError (`CANCELLED`) carrying the reason as `cause`. A plain
 * `controller.abort()` makes the reason a DOMException whose `code` is the number 20 (and
 * `AbortSignal.timeout()` one named TimeoutError): every error miniss rejects with has a string
 * `code`, so those are wrapped, as Node's own APIs wrap them in an AbortError. Core's I/O and the
 * plugins (timer, signal) all use it.
 */
export function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  let detail = '';
  try {
    if (r instanceof Error) {
      if (typeof (r as { code?: unknown }).code === 'string') return r;
      if (typeof r.message === 'string' && r.message !== '') detail = `: ${r.message}`;
    }
  } catch {
    // A reason whose traps throw (a Proxy): carried as the cause, untouched.
  }
  return new CancelledError(`the operation was aborted${detail}`, { cause: r });
}

/** @internal */
export function noop(): void {}

/**
 * Operations whose bytes cannot be taken or put again once the kernel did it: `recv`/`send`, and
 * file reads and writes at the kernel's position (offset -1: a pipe, a FIFO, a file opened to
 * append), or at a File's own position (`atCursor`: the position-less calls a File runs at an
 * explicit offset, whose position must move by what the kernel really did). An abort waits for
 * their completion instead of rejecting at once (see `io`).
 */
function isStreamData(op: IoOperation, atCursor: boolean | undefined, fileCancels: boolean): boolean {
  if (atCursor === true) return true; // explicit offsets of a seekable file: every backend finishes them
  switch (op.op) {
    case 'recv':
    case 'send':
      return true;
    case 'read':
    case 'write':
    case 'readv':
    case 'writev':
      // The `node` backend cannot stop a file operation libuv has started: waiting for an aborted
      // read of a FIFO or tty would wait for input that may never come. There it rejects at once
      // (and bytes such a read takes later are lost: see docs/backends.md).
      return fileCancels && !(op.offset >= 0);
    default:
      return false;
  }
}

/** The completion of an operation the backend cancelled. */
function isCanceledError(e: unknown): boolean {
  return e instanceof IoError && e.code === 'ECANCELED';
}

/**
 * Whether a failed task's value is a CancelledError: it stopped because something it awaited was
 * cancelled or aborted on purpose, which is no failure to warn about. A task may throw anything,
 * including a Proxy whose `getPrototypeOf` trap throws, which makes `instanceof` throw.
 */
function isCancelledError(value: unknown): boolean {
  try {
    return value instanceof CancelledError;
  } catch {
    return false;
  }
}

/** A failed task's value as text for a warning; whatever was thrown (its getters may throw too). */
function describeFailure(e: unknown): string {
  try {
    return (e as Error | null)?.stack ?? String(e);
  } catch {
    return 'a value that cannot be shown (reading its stack or converting it to a string threw)';
  }
}

/** A close that failed because the runtime shut down: its backend released every descriptor already. */
function closeFailed(err: unknown): void {
  if (err instanceof RuntimeError && err.code === 'RUNTIME_SHUTDOWN') return;
  throw err;
}

/** Takes an operation's record out of its owner's list of operations in flight. */
function unlinkFromOwner(p: PendingIo): void {
  const prev = p.prev;
  const next = p.next;
  if (prev !== null) prev.next = next;
  else if (p.owner!._ioHead === p) p.owner!._ioHead = next;
  if (next !== null) next.prev = prev;
  p.prev = null;
  p.next = null;
}

// -----------------------------------------------------------------------------------------------
// Thread-level entry points

/** A task handle of `@miniss/multicore` (its `CoreTaskHandle`), as core's types see it. */
export type CoreTaskHandleLike<T> = PromiseLike<T> & { cancel(): boolean; readonly id: number; readonly done: boolean };

/**
 * The public surface of `@miniss/multicore`'s MultiCoreRuntime, which core's `createRuntime`
 * returns for `features: ['multicore']`. Core cannot import multicore's types (multicore depends
 * on core), so they are written here; a type test in multicore checks that its class satisfies
 * this interface, so the two cannot drift apart. See the multicore README for each method.
 */
export interface MultiCoreRuntimeLike {
  readonly cores: number;
  /** The runtime of core 0 (the calling thread). */
  readonly runtime: Runtime;
  blockOn<T>(fn: () => T | PromiseLike<T>): Promise<Awaited<T>>;
  spawn<T, A extends unknown[]>(fn: (...args: [...A, AbortSignal]) => T | PromiseLike<T>, ...args: A): CoreTaskHandleLike<Awaited<T>>;
  spawnOn<T, A extends unknown[]>(core: number, fn: (...args: [...A, AbortSignal]) => T | PromiseLike<T>, ...args: A): CoreTaskHandleLike<Awaited<T>>;
  broadcast<T, A extends unknown[]>(fn: (...args: [...A, AbortSignal]) => T | PromiseLike<T>, ...args: A): Promise<Array<Awaited<T>>>;
  shutdown(opts?: ShutdownOptions): Promise<void>;
  coreStats(): Array<{ core: number; tasksActive: number; openResources: number }>;
  stats(): { cores: number; pinned: boolean; shuttingDown: boolean; core0: RuntimeStats };
}

/**
 * The config-driven entry point: a {@link Runtime}, or a MultiCoreRuntime from `@miniss/multicore`
 * when `features` has `'multicore'` (throws `FEATURE_UNAVAILABLE` if that package is missing).
 */
export function createRuntime(config: RuntimeConfig = {}): Runtime | MultiCoreRuntimeLike {
  const resolved = resolveConfig(config);
  if (resolved.features.includes('multicore')) {
    const mod = loadFeature<{ MultiCoreRuntime?: new (config: RuntimeConfig) => MultiCoreRuntimeLike }>('multicore');
    if (typeof mod.MultiCoreRuntime !== 'function') {
      throw new RuntimeError('FEATURE_UNAVAILABLE', "feature 'multicore': @miniss/multicore does not export MultiCoreRuntime");
    }
    return new mod.MultiCoreRuntime(config);
  }
  return new Runtime(config);
}

/** The runtime running on this thread. Throws `NO_RUNTIME` outside one. */
export function currentRuntime(): Runtime {
  const rt = getCurrent();
  if (rt === undefined) {
    throw new RuntimeError(
      'NO_RUNTIME',
      'no miniss runtime is running on this thread: call this inside runtime.blockOn(...) or runtime.spawn(...)',
    );
  }
  return rt;
}

/** The runtime running on this thread, or undefined (never throws). */
export function tryCurrentRuntime(): Runtime | undefined {
  return getCurrent();
}

/** Spawns `fn` on the current thread's runtime (`NO_RUNTIME` outside one). */
export function spawn<T>(fn: (signal: AbortSignal) => T | PromiseLike<T>): JoinHandle<Awaited<T>> {
  return currentRuntime().spawn(fn);
}

/** `new Runtime(config).blockOn(fn)`; config errors reject instead of throwing. */
export function blockOn<T>(fn: () => T | PromiseLike<T>, config?: RuntimeConfig): Promise<Awaited<T>> {
  let rt: Runtime;
  try {
    rt = new Runtime(config);
  } catch (err) {
    return Promise.reject(err);
  }
  return rt.blockOn(fn);
}
