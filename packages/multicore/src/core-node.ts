import { writeSync } from 'node:fs';
import type { MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { MAX_TIMER_MS, RuntimeError, type JoinHandle, type Runtime } from '@miniss/core';
import { RECORD_HEADER, RingReader, RingWriter } from './byte-ring.js';
import { Kind, SCRATCH, decodeArgs, decodeError, decodeValue, encodeArgs, encodeError, encodeValue, describeValue, messageOf, stackOf, type Encoded } from './codec.js';
import { CoreTaskHandle } from './handle.js';
import { PendingTable } from './pending.js';
import {
  ACTIVE,
  BACKLOG,
  BELL,
  COMPLETED,
  CoreState,
  FD,
  GLOBAL_SHUTDOWN,
  MSGS_IN,
  MSGS_OUT,
  PIN_CPU,
  SLEEPING,
  SLEEPS,
  STATE,
  WAKEUPS,
  activeByIndex,
  coreBase,
} from './layout.js';
import { compile, explainNotShippable, sourceOf, type ShippedFn } from './shipping.js';

/**
 * One core's endpoint: the thread-local half of the multicore runtime. Every core (the calling
 * thread as core 0, each worker thread as cores 1..n-1) has exactly one. It owns the producer side
 * of the rings to every other core and the consumer side of the rings from every other core, runs
 * the tasks other cores send it on its own {@link Runtime}, and settles the handles of the tasks
 * it sent.
 *
 * The loop, per core:
 *
 * 1. Sending writes records into the destination's ring with plain stores and marks it dirty;
 *    one microtask per turn publishes every dirty ring (one `Atomics.store` of each tail) and rings
 *    the doorbell of each destination that is asleep. A full ring is never waited on: the message
 *    goes to a local backlog (order kept) and the producer asks the consumer, through the ring's
 *    `wait` word, to ring its doorbell when it frees space.
 * 2. While awake, the core polls its incoming rings once per event-loop turn (`setImmediate`),
 *    so its own I/O and timers keep running between polls. Each poll runs every record that has
 *    been published and frees them with one store of the head per ring. When a turn finds
 *    nothing but traffic was recent, the core also spins synchronously for at most
 *    {@link SYNC_SPIN_MS} on the rings' tail words before it yields the turn: a reply or the
 *    next task of a busy exchange then lands in well under a microsecond instead of one loop
 *    turn later, and the core's own I/O waits at most that long.
 * 3. After `spinMs` without traffic (`awaitSpinMs` while this core waits for results from other
 *    cores, long enough to cover the other core's wake-up) the core goes to sleep in its
 *    backend: it raises its `SLEEPING` flag, re-checks every ring (so a message published
 *    between its last poll and the flag is not missed: the sender's load of the flag and the
 *    receiver's load of the tail are ordered by the flag store, the same Dekker pattern as
 *    Seastar's `smp` sleep), and waits on
 *    its doorbell. The doorbell is an eventfd with a `read` kept in flight through the runtime on
 *    native backends, or `Atomics.waitAsync` on a word of the control block on the `node` backend.
 *    A sender rings only when it wins the compare-and-exchange of the flag from 1 to 0, so a burst
 *    of messages costs one wake-up, and an awake core costs its senders one atomic load.
 */

export const MsgType = {
  Task: 1,
  Result: 2,
  Cancel: 3,
  Shutdown: 4,
  CoreLost: 5,
} as const;

const F_MORE = 1;
const F_SRC = 2;
const F_ERR = 4;
const F_SABS = 8;

/** Records a poll handles per ring before it lets the event loop run. */
const POLL_BUDGET = 1024;

/** Longest synchronous wait for the next message inside one event-loop turn, ms. */
export const SYNC_SPIN_MS = 0.01;
/** Unobserved failures remembered for the shutdown warning (core's Runtime keeps as many). */
const MAX_UNOBSERVED = 16;
/** Longest time one tick keeps serving messages before it yields to the event loop, ms. */
export const TICK_BUDGET_MS = 0.1;
/** Empty rounds after which the microtask spin gives up (a round is ~50-100 ns). */
const MICRO_SPIN_IDLE = 200;
/** Within one turn, messages to one core are published at least every this many. */
const PUBLISH_EVERY = 64;

export interface CoreNodeInit {
  core: number;
  cores: number;
  control: SharedArrayBuffer;
  /** rings[from * cores + to]; null on the diagonal. */
  rings: Array<SharedArrayBuffer | null>;
  /** ports[other]: the MessagePort to `other` for SharedArrayBuffer delivery; null for self. */
  ports: Array<MessagePort | null>;
  runtime: Runtime;
  /** How long an idle core polls before it sleeps, ms. */
  spinMs: number;
  /** How long a core that waits for results from other cores polls before it sleeps, ms. */
  awaitSpinMs: number;
  /** Called on a worker when core 0 asks it to shut down. */
  onShutdownRequest?: (graceMs: number) => void;
  /** Called before the core sleeps and at most every 20 ms while it is awake (publishes load for stats). */
  onPublish?: () => void;
}

interface OutMsg {
  type: number;
  flags: number;
  kind: number;
  id: number;
  aux: number;
  body: Uint8Array;
  /** Body bytes already written (fragments). */
  sent: number;
}

interface Out {
  writer: RingWriter;
  backlog: OutMsg[];
  dirty: boolean;
  /** Local sources of functions already sent to this core, by fn id. */
  sentFns: Set<number>;
  /** Messages written since the last publication. */
  unpublished: number;
}

interface InMsg {
  type: number;
  flags: number;
  kind: number;
  id: number;
  aux: number;
  body: Uint8Array;
}

interface In {
  reader: RingReader;
  /** Fragments of a message being reassembled. */
  frags: Uint8Array[] | null;
  /** Messages waiting (in order) for SharedArrayBuffers still in transit on the port. */
  parked: InMsg[];
  /** SharedArrayBuffers that arrived on the port, by batch id. */
  sabs: Map<number, SharedArrayBuffer[]>;
  /**
   * Batches to drop on arrival: they belong to results of tasks cancelled here, read from the ring
   * before their SharedArrayBuffers came over the port.
   */
  discard: Set<number>;
  /** Compiled functions this source sent, by its fn id (an Error if it did not compile). */
  fns: Map<number, ShippedFn | Error>;
  /** Tasks from this source running here, by their id. */
  running: Map<number, JoinHandle<unknown>>;
}

interface FnEntry {
  id: number;
  src: string;
}

type Signalling = { signalFd?(fd: number): void; eventfd?(): number };

const EIGHT = new Uint8Array(new BigUint64Array([1n]).buffer);

export class CoreNode {
  readonly core: number;
  readonly cores: number;
  readonly runtime: Runtime;
  private readonly ctl: Int32Array;
  private readonly base: number;
  private readonly out: Array<Out | null>;
  private readonly inn: Array<In | null>;
  private readonly ports: Array<MessagePort | null>;
  private readonly spinMs: number;
  private readonly awaitSpinMs: number;
  /** Tasks sent to other cores and not settled (all of `inflight` but this core's own). */
  private remoteInflight = 0;
  /**
   * This core has a CPU of its own (pinned): only then does it spin `awaitSpinMs` for results.
   * Unpinned, the kernel may run the core it waits for on this very CPU, where spinning would
   * only keep that core from running.
   */
  private pinned = false;
  private readonly onShutdownRequest: ((graceMs: number) => void) | undefined;
  private readonly onPublish: (() => void) | undefined;
  private lastPublish = 0;

  // Tasks this core sent (or placed on itself), by id.
  private readonly pending = new PendingTable<CoreTaskHandle<unknown>>();
  /** Handles that failed while nobody awaited them (see noteFailure). */
  private readonly unobserved: Array<CoreTaskHandle<unknown>> = [];
  private readonly inflight: Int32Array;
  /** The next task id (see newId). */
  private nextId = 1;
  /** Task ids have wrapped around 2^32 once: from then on newId skips ids still pending. */
  private idsWrapped = false;
  private rr = 0;
  private readonly fnByObj = new WeakMap<object, FnEntry>();
  private readonly fnBySrc = new Map<string, FnEntry>();
  private nextFnId = 1;
  private lastFn: unknown = null;
  private lastEntry: FnEntry | null = null;
  private nextBatch = 1;

  // Loop state.
  private started = false;
  private stopped = false;
  private tickScheduled = false;
  /** True while poll() runs: messages emitted then are published by the poll's caller. */
  private inPoll = false;
  /** Handles this core settled during the current poll (their continuations wait for the tick to end). */
  private settledInPoll = 0;
  /** Messages published by emit() itself (counted into MSGS_OUT at the next flush). */
  private sentImmediately = 0;
  private microSpinning = false;
  private microStart = 0;
  private microIdle = 0;
  private readonly microSpinBound = () => this.microSpin();
  private activeLocal = 0;
  private completedLocal = 0;
  private readonly activeBy: Int32Array;
  private countersDirty = false;
  private flushScheduled = false;
  private activity = false;
  private lastActive = 0;
  private sleeping = false;
  private waitGen = 0;
  private backlogCount = 0;
  private refuseTasks = false;
  private readonly dirtyList: number[] = [];

  // Doorbell: eventfd (native backends) or Atomics.waitAsync.
  private bellFd = -1;
  private bellArmed = false;
  private bellAbort: AbortController | null = null;
  private readonly bellBuf = new Uint8Array(8);
  private readonly signaller: Signalling;

  private readonly tickBound = () => this.tick();
  private readonly flushBound = () => this.flush();

  constructor(init: CoreNodeInit) {
    this.core = init.core;
    this.cores = init.cores;
    this.runtime = init.runtime;
    this.ctl = new Int32Array(init.control);
    this.base = coreBase(init.core);
    this.spinMs = init.spinMs;
    this.awaitSpinMs = Math.max(init.spinMs, init.awaitSpinMs);
    this.onShutdownRequest = init.onShutdownRequest;
    this.onPublish = init.onPublish;
    this.ports = init.ports;
    this.inflight = new Int32Array(init.cores);
    this.activeBy = new Int32Array(init.cores);
    this.signaller = init.runtime.backend as unknown as Signalling;
    this.out = [];
    this.inn = [];
    for (let c = 0; c < init.cores; c++) {
      if (c === init.core) {
        this.out.push(null);
        this.inn.push(null);
        continue;
      }
      this.out.push({ writer: new RingWriter(init.rings[init.core * init.cores + c]!), backlog: [], dirty: false, sentFns: new Set(), unpublished: 0 });
      this.inn.push({
        reader: new RingReader(init.rings[c * init.cores + init.core]!),
        frags: null,
        parked: [],
        sabs: new Map(),
        discard: new Set(),
        fns: new Map(),
        running: new Map(),
      });
      const port = init.ports[c];
      if (port) {
        port.on('message', (m: { b: number; s: SharedArrayBuffer[] }) => this.onPortMessage(c, m));
        port.unref();
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  /** Starts polling; sets up the eventfd doorbell when the backend offers one. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.pinned = Atomics.load(this.ctl, this.base + PIN_CPU) >= 0;
    const b = this.signaller;
    // The eventfd doorbell is used on the native Linux backends (epoll, io_uring). An io_uring ring
    // created with DEFER_TASKRUN (opt-in there) stops signalling on this kernel while such a read
    // waits, so that backend's eventfd() refuses in that mode and the Atomics.waitAsync doorbell is
    // used instead (the catch below); see packages/backend-iouring/README.md.
    const forced = process.env.MINISS_MULTICORE_DOORBELL;
    const name = this.runtime.backend.name;
    const eventfdOk =
      forced === 'atomics' ? false : forced === 'eventfd' || process.env.MINISS_MULTICORE_EVENTFD === '1' || name === 'epoll' || name === 'io_uring';
    if (eventfdOk && typeof b.eventfd === 'function' && typeof b.signalFd === 'function') {
      try {
        this.bellFd = b.eventfd();
        this.bellAbort = new AbortController();
        Atomics.store(this.ctl, this.base + FD, this.bellFd);
      } catch {
        this.bellFd = -1;
      }
    }
    this.activity = true;
    this.scheduleTick();
  }

  /** True once the core refuses new tasks (shutdown began here). */
  get refusing(): boolean {
    return this.refuseTasks;
  }

  /** New incoming tasks are answered with `RUNTIME_SHUTDOWN` from now on. */
  refuse(): void {
    this.refuseTasks = true;
  }

  /**
   * Stops using the eventfd doorbell (before the backend that owns it closes): from here on the
   * core sleeps on `Atomics.waitAsync`, which needs no backend.
   */
  detachBackend(): void {
    if (this.bellFd < 0) return;
    Atomics.store(this.ctl, this.base + FD, -1);
    this.bellFd = -1;
    this.bellAbort?.abort();
    this.bellAbort = null;
    if (this.sleeping) {
      // The read that would have woken us is gone: wake up and sleep again the other way.
      this.sleeping = false;
      Atomics.store(this.ctl, this.base + SLEEPING, 0);
      this.activity = true;
      this.scheduleTick();
    }
  }

  /** Tasks this core placed and has not seen settle. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Messages read from the rings and parked until their SharedArrayBuffers arrive on the port
   * (posted before the message was published, they come in on a later turn of the event loop).
   */
  get parkedCount(): number {
    let n = 0;
    for (const i of this.inn) if (i) n += i.parked.length;
    return n;
  }

  /** Messages still queued locally behind full rings. */
  get backlogged(): number {
    return this.backlogCount;
  }

  /** Tasks from other cores running here. */
  get runningRemote(): number {
    let n = 0;
    for (const i of this.inn) if (i) n += i.running.size;
    return n;
  }

  /**
   * Waits until every queued message has been written into its ring (or its destination is gone),
   * at most `timeoutMs`. Used at shutdown so that results reach their cores.
   */
  async drainOutgoing(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.flushBacklogs();
      this.flush();
      let left = 0;
      for (let c = 0; c < this.cores; c++) {
        const o = this.out[c];
        if (o === null || o.backlog.length === 0) continue;
        if (this.isGone(c)) this.dropBacklog(c);
        else left += o.backlog.length;
      }
      if (left === 0) return true;
      if (performance.now() > deadline) return false;
      await new Promise<void>((r) => setTimeout(r, 1));
    }
  }

  /**
   * Stops the loop for good: settles every handle still pending with `err`, releases the
   * doorbell wait, closes the ports. Idempotent.
   */
  stop(err: Error): void {
    if (this.stopped) return;
    this.detachBackend();
    this.flush();
    this.stopped = true;
    Atomics.store(this.ctl, this.base + SLEEPING, 0);
    if (this.sleeping) {
      this.sleeping = false;
      this.waitGen++;
      Atomics.add(this.ctl, this.base + BELL, 1);
      Atomics.notify(this.ctl, this.base + BELL);
    }
    for (const h of this.pending.values()) {
      if (h._local !== null) h._local.cancel('the core shut down');
      h._settle(false, err);
    }
    this.pending.clear();
    for (const port of this.ports) {
      if (port) {
        port.removeAllListeners('message');
        port.close();
      }
    }
    this.warnUnobserved();
  }

  /**
   * Remembers a handle that failed while nobody awaited it. Like core's Runtime, at most
   * {@link MAX_UNOBSERVED} are kept (and warned about at stop); unlike it, one awaited after it
   * failed and before the shutdown is not reported, and makes room for another.
   */
  private noteFailure(h: CoreTaskHandle<unknown>): void {
    if (!h._failedUnobserved) return;
    const list = this.unobserved;
    if (list.length >= MAX_UNOBSERVED) {
      let k = 0;
      for (const x of list) if (x._failedUnobserved) list[k++] = x;
      list.length = k;
      if (k >= MAX_UNOBSERVED) return;
    }
    list.push(h);
  }

  /**
   * A failed task whose handle nobody awaited would otherwise vanish without a trace: at shutdown
   * each one is reported as a `MinissUnobservedTaskError` warning, as core's Runtime does for its
   * own tasks. Cancelled tasks, and tasks lost to a crash (`MinissCoreCrash` says so) or to the
   * shutdown itself, are not reported.
   */
  private warnUnobserved(): void {
    const list = this.unobserved.splice(0);
    for (const h of list) {
      if (!h._failedUnobserved) continue;
      process.emitWarning(`a miniss task failed and nobody awaited it (task ${h.id} on core ${h.core}): ${stackOf(h._failure)}`, {
        type: 'MinissUnobservedTaskError',
      });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Placing tasks

  private isGone(c: number): boolean {
    const s = Atomics.load(this.ctl, coreBase(c) + STATE);
    return s === CoreState.Exited || s === CoreState.Crashed;
  }

  private checkOpen(): void {
    if (this.stopped || this.refuseTasks || Atomics.load(this.ctl, GLOBAL_SHUTDOWN) !== 0) {
      throw new RuntimeError('RUNTIME_SHUTDOWN', 'the multicore runtime is shutting down: no new tasks can be spawned');
    }
  }

  /**
   * The least-loaded live core. Load = tasks this core sent there and has not seen settle
   * (counted here, so it includes messages still in the ring or in the backlog) + tasks other
   * cores have running there (their count in shared memory, minus this core's own share). Ties
   * go round-robin.
   */
  pickCore(): number {
    const n = this.cores;
    const ctl = this.ctl;
    let best = -1;
    let bestScore = Infinity;
    const start = this.rr;
    for (let k = 0; k < n; k++) {
      const c = start + k < n ? start + k : start + k - n;
      const b = coreBase(c);
      const st = Atomics.load(ctl, b + STATE);
      if (st !== CoreState.Running && st !== CoreState.Starting) continue;
      const score = this.inflight[c]! + Atomics.load(ctl, b + ACTIVE) - Atomics.load(ctl, activeByIndex(n, c, this.core));
      if (score < bestScore) {
        bestScore = score;
        best = c;
        if (score <= 0) break;
      }
    }
    if (best < 0) {
      throw new RuntimeError('CORE_CRASHED', 'no core is running: every core has crashed or exited');
    }
    this.rr = best + 1 === n ? 0 : best + 1;
    return best;
  }

  spawn<T>(fn: (...args: any[]) => T | PromiseLike<T>, args: unknown[]): CoreTaskHandle<Awaited<T>> {
    this.checkOpen();
    return this.spawnOn(this.pickCore(), fn, args);
  }

  spawnOn<T>(core: number, fn: (...args: any[]) => T | PromiseLike<T>, args: unknown[]): CoreTaskHandle<Awaited<T>> {
    this.checkOpen();
    if (typeof core !== 'number' || !Number.isInteger(core) || core < 0 || core >= this.cores) {
      throw new RuntimeError('INVALID_ARGUMENT', `core must be an integer in 0..${this.cores - 1}, got ${describeValue(core)}`);
    }
    // Misuse of the call itself throws, as Runtime.spawn does for a non-function; what concerns
    // shipping the task (its source, its arguments) rejects the handle.
    if (typeof fn !== 'function') {
      throw new RuntimeError('INVALID_ARGUMENT', `a task must be a function, got ${fn === null ? 'null' : typeof fn}`);
    }
    // A sleeping destination takes tens of microseconds to wake: ring its doorbell first, so the
    // wake-up overlaps the work of writing the task (cold, that work takes as long). The core then
    // finds the task within its spin window; had it given up already, publishing rings again.
    if (core !== this.core && Atomics.load(this.ctl, coreBase(core) + SLEEPING) === 1) this.wake(core);
    const id = this.newId();
    const h = new CoreTaskHandle<Awaited<T>>(id, core, this.cancelBound as (h: CoreTaskHandle<Awaited<T>>) => void);
    let entry: FnEntry;
    let encoded: Encoded;
    try {
      entry = this.fnEntry(fn);
      encoded = encodeArgs(args);
    } catch (err) {
      h._settle(false, err);
      this.noteFailure(h as CoreTaskHandle<unknown>);
      return h;
    }
    if (core !== this.core && this.isGone(core)) {
      h._settle(false, coreGoneError(core, Atomics.load(this.ctl, coreBase(core) + STATE)));
      return h;
    }
    this.inflight[core]!++;
    if (core !== this.core) this.remoteInflight++;
    if (core === this.core) {
      this.pending.set(h as CoreTaskHandle<unknown>);
      this.runLocal(id, entry, encoded);
      return h;
    }
    this.pending.set(h as CoreTaskHandle<unknown>);
    const o = this.out[core]!;
    let flags = 0;
    let head = 0;
    let src: Uint8Array | null = null;
    if (!o.sentFns.has(entry.id)) {
      src = encoder.encode(entry.src);
      flags |= F_SRC;
      head += 4 + src.length;
      o.sentFns.add(entry.id);
    }
    if (encoded.sabs !== null) {
      flags |= F_SABS;
      head += 4;
    }
    let body = encoded.bytes;
    if (head > 0) {
      body = new Uint8Array(head + encoded.bytes.length);
      const dv = new DataView(body.buffer);
      let p = 0;
      if (src !== null) {
        dv.setUint32(0, src.length, true);
        body.set(src, 4);
        p = 4 + src.length;
      }
      if (encoded.sabs !== null) {
        const batch = this.newBatch();
        dv.setUint32(p, batch, true);
        p += 4;
        this.ports[core]!.postMessage({ b: batch, s: encoded.sabs });
      }
      body.set(encoded.bytes, p);
    }
    this.emit(core, MsgType.Task, flags, encoded.kind, id, entry.id, body);
    return h;
  }

  /**
   * A task id: it travels as the ring header's 32-bit id word, so it is a u32, and never 0. Ids
   * count up and wrap after 2^32 - 1 to 1; once they have wrapped, an id still pending here (a
   * task older than 2^32 spawns) is skipped, so two pending tasks of this core never share an id.
   * (Not covered: the late result of a task cancelled here whose id came round again, 2^32 spawns
   * later, before that result arrived.)
   */
  private newId(): number {
    for (;;) {
      const id = this.nextId;
      if (id >= 0xffffffff) {
        this.nextId = 1;
        this.idsWrapped = true;
      } else this.nextId = id + 1;
      if (!this.idsWrapped || this.pending.get(id) === undefined) return id;
    }
  }

  /** A SharedArrayBuffer batch id (a u32 in the message body, never 0; wraps like task ids). */
  private newBatch(): number {
    const b = this.nextBatch;
    this.nextBatch = b >= 0xffffffff ? 1 : b + 1;
    return b;
  }

  /** Runs `fn` once on every core. Returns a promise, so every failure (shutdown included) rejects it. */
  broadcast<T>(fn: (...args: any[]) => T | PromiseLike<T>, args: unknown[]): Promise<Array<Awaited<T>>> {
    const hs: Array<CoreTaskHandle<Awaited<T>>> = [];
    try {
      this.checkOpen();
      for (let c = 0; c < this.cores; c++) hs.push(this.spawnOn(c, fn, args));
    } catch (err) {
      return Promise.reject(err);
    }
    return Promise.all(hs);
  }

  private fnEntry(fn: unknown): FnEntry {
    if (typeof fn === 'function') {
      if (fn === this.lastFn) return this.lastEntry!;
      const e = this.fnByObj.get(fn);
      if (e !== undefined) {
        this.lastFn = fn;
        this.lastEntry = e;
        return e;
      }
      // A fresh closure of a source seen before (an arrow written inline in a loop): found by
      // its text, without the checks and without growing the WeakMap.
      const known = this.fnBySrc.get(Function.prototype.toString.call(fn));
      if (known !== undefined) return known;
    }
    const src = sourceOf(fn);
    let e = this.fnBySrc.get(src);
    if (e === undefined) {
      e = { id: this.nextFnId++, src };
      this.fnBySrc.set(src, e);
    }
    this.fnByObj.set(fn as object, e);
    this.lastFn = fn;
    this.lastEntry = e;
    return e;
  }

  private readonly cancelBound = (h: CoreTaskHandle<unknown>) => this.onHandleCancel(h);

  private onHandleCancel(h: CoreTaskHandle<unknown>): void {
    const p = this.pending.get(h.id);
    if (p === undefined) return;
    this.pending.delete(h.id);
    this.inflight[h.core]!--;
    if (h.core !== this.core) this.remoteInflight--;
    if (h.core === this.core) {
      p._local?.cancel(`task ${h.id} was cancelled`);
      return;
    }
    if (!this.isGone(h.core)) this.emit(h.core, MsgType.Cancel, 0, 0, h.id, 0, EMPTY);
  }

  /** Core-local placement: compiled from source and cloned like everywhere else, no ring. */
  private runLocal(id: number, entry: FnEntry, encoded: Encoded): void {
    let shipped: ShippedFn;
    let args: unknown[];
    try {
      shipped = compile(entry.src);
      args = decodeArgs(encoded.kind, encoded.bytes, encoded.sabs);
    } catch (err) {
      this.settleLocal(id, false, err, entry.src);
      return;
    }
    this.taskAccepted(this.core);
    let jh: JoinHandle<unknown>;
    try {
      jh = this.runtime.spawn(taskThunk(shipped, args, noReport));
    } catch (err) {
      this.taskFinished(this.core);
      this.settleLocal(id, false, err, entry.src);
      return;
    }
    const p = this.pending.get(id);
    if (p !== undefined) p._local = jh;
    // Observe the task from a microtask: `then` on a queued JoinHandle starts it at once, and a
    // task must not run synchronously inside spawnOn (the caller may still cancel it).
    void RESOLVED.then(() => {
      jh.then(
        (v) => {
          this.taskFinished(this.core);
          this.settleLocal(id, true, v, entry.src);
        },
        (e) => {
          this.taskFinished(this.core);
          this.settleLocal(id, false, e, entry.src);
        },
      );
    });
  }

  private settleLocal(id: number, ok: boolean, value: unknown, src: string): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    this.inflight[this.core]!--;
    if (ok) {
      let v: unknown;
      try {
        const e = encodeValue(value);
        v = decodeValue(e.kind, e.bytes, e.sabs);
      } catch (err) {
        p._settle(false, resultNotCloneable(err));
        this.noteFailure(p);
        return;
      }
      p._settle(true, v);
    } else {
      let reason: unknown;
      try {
        reason = explainNotShippable(value, src, this.core);
      } catch {
        reason = value; // explaining it threw (a message getter or Proxy trap): hand it over as thrown
      }
      p._settle(false, reason);
      this.noteFailure(p);
    }
  }

  // Load counters: this core is the only writer of its ACTIVE/COMPLETED words and of its row of
  // per-sender counts, so it counts locally and publishes them with plain atomic stores once per
  // poll or flush (not one locked read-modify-write per task).
  private taskAccepted(from: number): void {
    this.activeLocal++;
    this.activeBy[from]!++;
    this.countersChanged();
  }

  private taskFinished(from: number): void {
    this.activeLocal--;
    this.activeBy[from]!--;
    this.completedLocal++;
    this.countersChanged();
  }

  private countersChanged(): void {
    this.countersDirty = true;
    if (!this.inPoll && !this.flushScheduled) {
      this.flushScheduled = true;
      RESOLVED.then(this.flushBound);
    }
  }

  private publishCounters(): void {
    this.countersDirty = false;
    const ctl = this.ctl;
    Atomics.store(ctl, this.base + ACTIVE, this.activeLocal);
    Atomics.store(ctl, this.base + COMPLETED, this.completedLocal);
    for (let s = 0; s < this.cores; s++) Atomics.store(ctl, activeByIndex(this.cores, this.core, s), this.activeBy[s]!);
  }

  // -------------------------------------------------------------------------------------------
  // Control messages (core 0 only)

  /** Asks core `c` to shut down, giving its tasks `graceMs` (0..MAX_TIMER_MS, checked by the caller). */
  sendShutdown(c: number, graceMs: number): void {
    if (c === this.core || this.isGone(c)) return;
    this.emit(c, MsgType.Shutdown, 0, 0, 0, Math.min(MAX_TIMER_MS, Math.max(0, Math.round(graceMs))), EMPTY);
  }

  /** Tells core `c` that core `lost` is gone. */
  sendCoreLost(c: number, lost: number): void {
    if (c === this.core || this.isGone(c)) return;
    this.emit(c, MsgType.CoreLost, 0, 0, 0, lost, EMPTY);
  }

  /**
   * Core `c` crashed or exited: settle what this core waits for from it, drop what it would have
   * sent there, cancel what `c` had running here (nobody can receive the results).
   */
  coreLost(c: number, err: Error): void {
    if (c === this.core) return;
    for (const h of this.pending.values()) {
      if (h.core !== c) continue;
      this.pending.delete(h.id);
      h._settle(false, err);
    }
    this.remoteInflight -= this.inflight[c]!;
    this.inflight[c] = 0;
    this.dropBacklog(c);
    const i = this.inn[c]!;
    for (const h of [...i.running.values()]) h.cancel(`core ${c}, which sent this task, is gone`);
    i.parked.length = 0;
    i.sabs.clear();
    i.discard.clear();
  }

  private dropBacklog(c: number): void {
    const o = this.out[c]!;
    if (o.backlog.length === 0) return;
    this.backlogCount -= o.backlog.length;
    o.backlog.length = 0;
    o.writer.setWaiting(false);
    Atomics.store(this.ctl, this.base + BACKLOG, this.backlogCount);
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  private emit(to: number, type: number, flags: number, kind: number, id: number, aux: number, body: Uint8Array): void {
    const o = this.out[to]!;
    const w = o.writer;
    let off = -1;
    // Fast path: nothing queued before it and it fits in one record: write it in place.
    if (o.backlog.length === 0 && body.length + RECORD_HEADER <= w.maxRecord) {
      off = w.begin(type, flags, kind, id, aux, body.length);
      if (off >= 0 && body.length > 0) w.u8.set(body, off);
    }
    if (off < 0) {
      // The message waits in the backlog: it must own its bytes (an encoded number is a scratch view).
      if (body.buffer === SCRATCH) body = body.slice();
      const m: OutMsg = { type, flags, kind, id, aux, body, sent: 0 };
      if (o.backlog.length > 0 || !this.write(w, m)) {
        o.backlog.push(m);
        this.backlogCount++;
        Atomics.store(this.ctl, this.base + BACKLOG, this.backlogCount);
        w.setWaiting(true);
      }
    }
    if (!o.dirty) {
      // The first message to this core in this turn (or poll) is published at once, and rings
      // the destination's doorbell if it sleeps: a lone request or reply should not wait for the
      // rest of the turn's code (cold, that is tens of microseconds). Later messages of the same
      // turn are published together at its end, one store for the batch. (Publishing before
      // wake() reads the SLEEPING flag keeps the Dekker order the doorbell relies on.)
      o.dirty = true;
      this.dirtyList.push(to);
      if (off >= 0) {
        w.publish();
        this.wake(to);
        this.sentImmediately++;
        o.unpublished = 0;
      }
    } else if (off >= 0 && ++o.unpublished >= PUBLISH_EVERY) {
      // A long batch (a poll answering hundreds of tasks): publish every PUBLISH_EVERY messages so
      // the other core starts on them while this one is still producing.
      w.publish();
      this.wake(to);
      this.sentImmediately++;
      o.unpublished = 0;
    }
    // Inside a poll the tick publishes at its end; elsewhere one microtask per turn does.
    if (!this.flushScheduled && !this.inPoll) {
      this.flushScheduled = true;
      RESOLVED.then(this.flushBound);
    }
    this.kick();
  }

  /** Writes `m` (from `m.sent`), fragmenting as needed. True when all of it is in the ring. */
  private write(w: RingWriter, m: OutMsg): boolean {
    const total = m.body.length;
    const maxBody = (w.maxRecord - 16) & ~7;
    do {
      const chunk = Math.min(maxBody, total - m.sent);
      const more = m.sent + chunk < total;
      const off = w.begin(m.type, m.flags | (more ? F_MORE : 0), m.kind, m.id, m.aux, chunk);
      if (off < 0) return false;
      if (chunk > 0) w.u8.set(chunk === total ? m.body : m.body.subarray(m.sent, m.sent + chunk), off);
      m.sent += chunk;
      if (!more) return true;
    } while (true);
  }

  /** Publishes every ring written this turn and wakes the cores that sleep. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.countersDirty) this.publishCounters();
    const list = this.dirtyList;
    if (list.length === 0) return;
    let sent = 0;
    for (let i = 0; i < list.length; i++) {
      const to = list[i]!;
      const o = this.out[to]!;
      o.dirty = false;
      o.unpublished = 0;
      if (o.writer.publish()) {
        sent++;
        this.wake(to);
      }
    }
    list.length = 0;
    Atomics.add(this.ctl, this.base + MSGS_OUT, sent + this.sentImmediately);
    this.sentImmediately = 0;
  }

  private flushBacklogs(): number {
    if (this.backlogCount === 0) return 0;
    let moved = 0;
    for (let c = 0; c < this.cores; c++) {
      const o = this.out[c];
      if (o === null || o.backlog.length === 0) continue;
      if (this.isGone(c)) {
        this.dropBacklog(c);
        continue;
      }
      let k = 0;
      while (k < o.backlog.length && this.write(o.writer, o.backlog[k]!)) k++;
      if (k > 0) {
        o.backlog.splice(0, k);
        moved += k;
        this.backlogCount -= k;
      }
      // Fragments of a message that did not fit completely are in the ring too: publish them, or
      // the consumer never frees the space the rest of the message needs (a deadlock).
      if (k > 0 || o.writer.dirty) {
        if (k === 0) moved++;
        if (!o.dirty) {
          o.dirty = true;
          this.dirtyList.push(c);
        }
      }
      if (o.backlog.length === 0) o.writer.setWaiting(false);
    }
    if (moved > 0) {
      Atomics.store(this.ctl, this.base + BACKLOG, this.backlogCount);
      this.flush();
    }
    return moved;
  }

  /** Rings core `to`'s doorbell if it sleeps (one atomic load when it does not). */
  private wake(to: number): void {
    const b = coreBase(to);
    const ctl = this.ctl;
    if (Atomics.load(ctl, b + SLEEPING) !== 1) return;
    if (Atomics.compareExchange(ctl, b + SLEEPING, 1, 0) !== 1) return;
    Atomics.add(ctl, this.base + WAKEUPS, 1);
    const fd = Atomics.load(ctl, b + FD);
    if (fd >= 0) {
      try {
        if (typeof this.signaller.signalFd === 'function') this.signaller.signalFd(fd);
        else writeSync(fd, EIGHT);
        return;
      } catch {
        // The eventfd went away (its core is shutting down): fall through to the atomics bell.
      }
    }
    Atomics.add(ctl, b + BELL, 1);
    Atomics.notify(ctl, b + BELL);
  }

  // -------------------------------------------------------------------------------------------
  // The loop

  /** Something happened on this core: keep (or start) polling. */
  private kick(): void {
    this.activity = true;
    if (this.sleeping) this.wakeSelf();
  }

  private wakeSelf(): void {
    this.sleeping = false;
    Atomics.store(this.ctl, this.base + SLEEPING, 0);
    if (this.bellFd < 0) {
      // Release the pending waitAsync so it does not linger; its callback sees a stale generation.
      this.waitGen++;
      Atomics.add(this.ctl, this.base + BELL, 1);
      Atomics.notify(this.ctl, this.base + BELL);
    }
    this.scheduleTick();
  }

  private scheduleTick(): void {
    if (this.tickScheduled || this.stopped || !this.started) return;
    this.tickScheduled = true;
    setImmediate(this.tickBound);
  }

  private tick(): void {
    this.tickScheduled = false;
    if (this.stopped || this.sleeping) return;
    const start = performance.now();
    let now = start;
    let window = this.spinMs;
    for (;;) {
      this.settledInPoll = 0;
      const n = this.poll() + this.flushBacklogs();
      now = performance.now();
      if (n > 0 || this.activity) {
        this.activity = false;
        this.lastActive = now;
      }
      window = this.remoteInflight > 0 && this.pinned ? this.awaitSpinMs : this.spinMs;
      // Handles settled: return to the event loop so their continuations (which may send the
      // next tasks) run now. Otherwise keep serving while messages keep coming, bounded.
      if (this.settledInPoll > 0 || this.stopped || this.sleeping) break;
      if (now - this.lastActive >= window || now - start >= TICK_BUDGET_MS) break;
      // Bounded synchronous spin on the tail words (one atomic load per ring per round).
      const until = Math.min(now + SYNC_SPIN_MS, this.lastActive + window, start + TICK_BUDGET_MS);
      let more = false;
      while (now < until) {
        if (this.anyIncoming()) {
          more = true;
          break;
        }
        now = performance.now();
      }
      if (!more) break;
    }
    if (this.stopped || this.sleeping) return;
    if (this.onPublish !== undefined && now - this.lastPublish >= 20) {
      this.lastPublish = now;
      this.onPublish();
    }
    if (now - this.lastActive < window) {
      this.scheduleTick();
      // Handles were settled: their continuations run as microtasks once this tick returns, and
      // typically send the next task at once. Keep polling between those microtasks for a short
      // while, so the reply is seen microseconds later instead of one event-loop turn later.
      if (this.settledInPoll > 0 && !this.microSpinning) {
        this.microSpinning = true;
        this.microStart = now;
        this.microIdle = 0;
        RESOLVED.then(this.microSpinBound);
      }
    } else this.sleep();
  }

  /**
   * One round of the microtask spin: poll if something was published, then queue itself again
   * behind whatever microtasks are pending. Gives up after MICRO_SPIN_IDLE empty rounds in a row
   * or TICK_BUDGET_MS in all (the setImmediate tick scheduled meanwhile takes over).
   */
  private microSpin(): void {
    if (this.stopped || this.sleeping) {
      this.microSpinning = false;
      return;
    }
    if (this.anyIncoming()) {
      this.poll();
      this.lastActive = performance.now();
      this.microIdle = 0;
      if (this.lastActive - this.microStart > TICK_BUDGET_MS) {
        this.microSpinning = false;
        return;
      }
    } else if (++this.microIdle > MICRO_SPIN_IDLE) {
      this.microSpinning = false;
      return;
    }
    RESOLVED.then(this.microSpinBound);
  }

  private anyIncoming(): boolean {
    for (let c = 0; c < this.cores; c++) {
      const i = this.inn[c];
      if (i !== null && i.reader.hasData()) return true;
    }
    return false;
  }

  private backlogWritable(): boolean {
    if (this.backlogCount === 0) return false;
    for (let c = 0; c < this.cores; c++) {
      const o = this.out[c];
      if (o === null || o.backlog.length === 0) continue;
      const m = o.backlog[0]!;
      const need = Math.min(m.body.length - m.sent, o.writer.maxRecord) + 32;
      if (o.writer.size - o.writer.used >= need) return true;
    }
    return false;
  }

  private sleep(): void {
    if (this.onPublish !== undefined) {
      this.lastPublish = performance.now();
      this.onPublish();
    }
    const ctl = this.ctl;
    const b = this.base;
    const v = Atomics.load(ctl, b + BELL);
    Atomics.store(ctl, b + SLEEPING, 1);
    if (this.anyIncoming() || this.backlogWritable()) {
      if (Atomics.compareExchange(ctl, b + SLEEPING, 1, 0) === 1) {
        this.activity = true;
        this.scheduleTick();
        return;
      }
      // A sender already took the flag and rang (or is ringing): wait for that ring below.
    }
    this.sleeping = true;
    Atomics.add(ctl, b + SLEEPS, 1);
    if (this.bellFd >= 0) {
      if (!this.bellArmed) this.armBell();
      return;
    }
    const gen = ++this.waitGen;
    const r = Atomics.waitAsync(ctl, b + BELL, v);
    if (!r.async) this.onBell(gen);
    else void r.value.then(() => this.onBell(gen));
  }

  private armBell(): void {
    this.bellArmed = true;
    this.runtime
      .io({ op: 'read', fd: this.bellFd, buffer: this.bellBuf, offset: -1, len: 8 }, this.bellAbort!.signal)
      .then(
        () => {
          this.bellArmed = false;
          this.onBell(this.waitGen);
        },
        () => {
          this.bellArmed = false;
          // The eventfd read failed or was aborted (backend closing): use the atomics doorbell.
          if (!this.stopped && this.bellFd >= 0) this.detachBackend();
        },
      );
  }

  private onBell(gen: number): void {
    if (gen !== this.waitGen || this.stopped) return;
    if (!this.sleeping) return;
    this.sleeping = false;
    Atomics.store(this.ctl, this.base + SLEEPING, 0);
    this.activity = true;
    // Poll right here (we run from the doorbell's promise reaction): a loop turn saved per wake-up.
    if (!this.tickScheduled) this.tick();
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  /** Runs every published record of every incoming ring. Returns how many. */
  poll(): number {
    this.inPoll = true;
    let total = 0;
    try {
      total = this.pollRings();
    } finally {
      this.inPoll = false;
    }
    // Replies written by tasks that finished inside the poll: one publication per ring.
    if (this.dirtyList.length > 0 || this.countersDirty) this.flush();
    return total;
  }

  private pollRings(): number {
    let total = 0;
    for (let c = 0; c < this.cores; c++) {
      const i = this.inn[c];
      if (i === null) continue;
      const r = i.reader;
      let n = 0;
      while (n < POLL_BUDGET && r.next()) {
        n++;
        if (r.flags & F_MORE) {
          (i.frags ??= []).push(r.u8.slice(r.bodyOffset, r.bodyOffset + r.bodyLen));
          continue;
        }
        if ((r.flags & (F_SRC | F_SABS | F_ERR)) === 0 && i.frags === null && i.parked.length === 0 && this.fastRecord(c, i, r)) continue;
        let body: Uint8Array;
        if (i.frags !== null) {
          i.frags.push(r.u8.subarray(r.bodyOffset, r.bodyOffset + r.bodyLen));
          body = concat(i.frags);
          i.frags = null;
        } else {
          body = r.u8.subarray(r.bodyOffset, r.bodyOffset + r.bodyLen);
        }
        const m: InMsg = { type: r.type, flags: r.flags, kind: r.kind, id: r.id, aux: r.aux, body };
        if (i.parked.length > 0) {
          m.body = m.body.slice();
          i.parked.push(m);
        } else this.dispatch(c, i, m);
      }
      if (n > 0) {
        total += n;
        if (r.release()) this.wake(c);
      }
    }
    if (total > 0) Atomics.add(this.ctl, this.base + MSGS_IN, total);
    return total;
  }

  private onPortMessage(from: number, m: { b: number; s: SharedArrayBuffer[] }): void {
    const i = this.inn[from]!;
    if (i.discard.size > 0 && i.discard.delete(m.b)) return;
    i.sabs.set(m.b, m.s);
    while (i.parked.length > 0) {
      const head = i.parked[0]!;
      if ((head.flags & F_SABS) !== 0 && !i.sabs.has(sabBatchOf(head))) break;
      i.parked.shift();
      this.dispatch(from, i, head);
    }
    if (i.parked.length === 0) this.ports[from]?.unref();
  }

  private dispatch(from: number, i: In, m: InMsg): void {
    switch (m.type) {
      case MsgType.Task:
        this.onTask(from, i, m);
        return;
      case MsgType.Result:
        this.onResult(from, m);
        return;
      case MsgType.Cancel:
        i.running.get(m.id)?.cancel(`cancelled by core ${from}`);
        return;
      case MsgType.Shutdown:
        this.onShutdownRequest?.(m.aux);
        return;
      case MsgType.CoreLost:
        this.coreLost(m.aux, coreGoneError(m.aux, Atomics.load(this.ctl, coreBase(m.aux) + STATE)));
        return;
      default:
        return;
    }
  }

  private onTask(from: number, i: In, m: InMsg): void {
    const dv = (m.flags & (F_SRC | F_SABS)) !== 0 ? new DataView(m.body.buffer, m.body.byteOffset, m.body.byteLength) : null;
    let p = 0;
    if (m.flags & F_SRC) {
      const len = dv!.getUint32(0, true);
      const src = decoder.decode(m.body.subarray(4, 4 + len));
      p = 4 + len;
      let shipped: ShippedFn | Error;
      try {
        shipped = compile(src);
      } catch (err) {
        shipped = err as Error;
      }
      i.fns.set(m.aux, shipped);
    }
    let sabs: SharedArrayBuffer[] | null = null;
    if (m.flags & F_SABS) {
      const batch = dv!.getUint32(p, true);
      const got = i.sabs.get(batch);
      if (got === undefined) {
        // The SharedArrayBuffers are still in transit on the port: wait for them, keeping order.
        m.body = m.body.slice();
        i.parked.push(m);
        this.ports[from]?.ref();
        return;
      }
      i.sabs.delete(batch);
      sabs = got;
      p += 4;
    }
    const shipped = this.shippedFor(from, i, m.id, m.aux);
    if (shipped === null) return;
    let args: unknown[];
    try {
      args = decodeArgs(m.kind, m.body.subarray(p), sabs);
    } catch (err) {
      this.reply(from, m.id, false, err, '');
      return;
    }
    this.startTask(from, i, m.id, shipped, args);
  }

  /** The compiled function `fnId` from core `from`, or null after answering the task with why not. */
  private shippedFor(from: number, i: In, id: number, fnId: number): ShippedFn | null {
    const shipped = i.fns.get(fnId);
    if (shipped === undefined) {
      this.reply(from, id, false, new RuntimeError('PROTOCOL_ERROR', `core ${this.core} has no function #${fnId} from core ${from}`), '');
      return null;
    }
    if (shipped instanceof Error) {
      this.reply(from, id, false, shipped, '');
      return null;
    }
    if (this.refuseTasks) {
      this.reply(from, id, false, new RuntimeError('RUNTIME_SHUTDOWN', `core ${this.core} is shutting down: the task was not started`), '');
      return null;
    }
    return shipped;
  }

  /**
   * Fast path of a record read straight from the ring (no copy, no message object): a task whose
   * function is known and whose arguments are none or one number, or a result that is a number,
   * undefined, null or a boolean. Returns false for anything else (the general path handles it).
   */
  private fastRecord(from: number, i: In, r: RingReader): boolean {
    if (r.type === MsgType.Result) {
      let v: unknown;
      switch (r.kind) {
        case Kind.F64:
          v = r.f64[r.bodyOffset >>> 3];
          break;
        case Kind.Undefined:
          v = undefined;
          break;
        case Kind.Null:
          v = null;
          break;
        case Kind.True:
          v = true;
          break;
        case Kind.False:
          v = false;
          break;
        default:
          return false;
      }
      const h = this.pending.get(r.id);
      if (h === undefined) return true; // cancelled here already
      this.pending.delete(r.id);
      this.inflight[from]!--;
      this.remoteInflight--;
      this.settledInPoll++;
      h._settle(true, v);
      return true;
    }
    if (r.type === MsgType.Task && (r.kind === Kind.NoArgs || r.kind === Kind.OneF64)) {
      const args = r.kind === Kind.NoArgs ? [] : [r.f64[r.bodyOffset >>> 3]];
      const shipped = this.shippedFor(from, i, r.id, r.aux);
      if (shipped !== null) this.startTask(from, i, r.id, shipped, args);
      return true;
    }
    return false;
  }

  private startTask(from: number, i: In, id: number, shipped: ShippedFn, args: unknown[]): void {
    this.taskAccepted(from);
    // The task reports its own outcome when `fn` returns a plain value or throws: the reply is
    // then written inside this poll (and published at its end) instead of one promise reaction
    // later. A promise result is reported when it settles, through the runtime's handle.
    let reported = false;
    const report = (ok: boolean, v: unknown): void => {
      if (reported) return;
      reported = true;
      i.running.delete(id);
      this.taskFinished(from);
      this.reply(from, id, ok, v, shipped.src);
    };
    let jh: JoinHandle<unknown>;
    try {
      jh = this.runtime.spawn(taskThunk(shipped, args, report));
    } catch (err) {
      report(false, err);
      return;
    }
    // Awaiting a fresh handle starts the task right here (no trip through the run queue).
    jh.then(
      (v) => report(true, v),
      (e) => report(false, e),
    );
    if (!reported) i.running.set(id, jh);
  }

  private reply(to: number, id: number, ok: boolean, value: unknown, src: string): void {
    if (this.stopped || this.isGone(to)) return;
    let e: Encoded;
    let flags = 0;
    try {
      if (ok) {
        try {
          e = encodeValue(value);
        } catch (err) {
          e = encodeError(resultNotCloneable(err));
          flags = F_ERR;
        }
      } else {
        e = encodeError(explainNotShippable(value, src, this.core));
        flags = F_ERR;
      }
    } catch {
      // Nothing about the outcome could be encoded (encodeError itself does not throw, but what
      // it is handed is computed from the value). The handle on the other core must still settle:
      // a throw here would leave it pending, or crash this core from a promise reaction.
      e = encodeError(unreportable(ok));
      flags = F_ERR;
    }
    let body = e.bytes;
    if (e.sabs !== null) {
      flags |= F_SABS;
      const batch = this.newBatch();
      body = new Uint8Array(4 + e.bytes.length);
      new DataView(body.buffer).setUint32(0, batch, true);
      body.set(e.bytes, 4);
      this.ports[to]!.postMessage({ b: batch, s: e.sabs });
    }
    this.emit(to, MsgType.Result, flags, e.kind, id, 0, body);
  }

  private onResult(from: number, m: InMsg): void {
    const p = this.pending.get(m.id);
    if (p === undefined) {
      // Cancelled here already: nobody takes its SharedArrayBuffers, so let go of them (now, or
      // when they arrive).
      if (m.flags & F_SABS) {
        const i = this.inn[from]!;
        const batch = sabBatchOf(m);
        if (!i.sabs.delete(batch)) i.discard.add(batch);
      }
      return;
    }
    let sabs: SharedArrayBuffer[] | null = null;
    let bytes = m.body;
    if (m.flags & F_SABS) {
      const i = this.inn[from]!;
      const batch = sabBatchOf(m);
      const got = i.sabs.get(batch);
      if (got === undefined) {
        m.body = m.body.slice();
        i.parked.push(m);
        this.ports[from]?.ref();
        return;
      }
      i.sabs.delete(batch);
      sabs = got;
      bytes = bytes.subarray(4);
    }
    this.pending.delete(m.id);
    this.inflight[from]!--;
    this.remoteInflight--;
    this.settledInPoll++;
    let ok = (m.flags & F_ERR) === 0;
    let value: unknown;
    try {
      value = ok ? decodeValue(m.kind, bytes, sabs) : decodeError(bytes, from, sabs);
    } catch (err) {
      ok = false;
      value = err;
    }
    p._settle(ok, value);
    if (!ok) this.noteFailure(p);
  }
}

function sabBatchOf(m: InMsg): number {
  const dv = new DataView(m.body.buffer, m.body.byteOffset, m.body.byteLength);
  let p = 0;
  if (m.type === MsgType.Task && (m.flags & F_SRC) !== 0) p = 4 + dv.getUint32(0, true);
  return dv.getUint32(p, true);
}

/**
 * The function the core's runtime runs: `fn(...args, signal)`. A synchronous outcome (a value
 * that is not a thenable, or a throw) is handed to `report` at once.
 */
function taskThunk(shipped: ShippedFn, args: unknown[], report: (ok: boolean, v: unknown) => void): (signal: AbortSignal) => unknown {
  const fn = shipped.fn;
  const call = (signal: AbortSignal | undefined): unknown => {
    let r: unknown;
    try {
      r = signal === undefined ? fn(...args) : fn(...args, signal);
    } catch (err) {
      report(false, err);
      throw err;
    }
    if (r === null || (typeof r !== 'object' && typeof r !== 'function') || typeof (r as PromiseLike<unknown>).then !== 'function') {
      report(true, r);
    }
    return r;
  };
  // The README's convention is fn(...args, signal). Creating the signal costs an AbortController
  // per task, so it is left out only when the function cannot see it: it declares no more
  // parameters than the call gives (no default or rest parameter hides one from fn.length) and
  // does not read `arguments`.
  if (shipped.alwaysSignal || shipped.declared > args.length) {
    return (signal: AbortSignal) => call(signal);
  }
  // Declaring no parameter tells the runtime not to create an AbortController (measured: a
  // pipelined task to another core took ~0.37 us without one, ~2.6-2.8 us with one).
  return (() => call(undefined)) as (signal: AbortSignal) => unknown;
}

function noReport(): void {}

export function coreGoneError(core: number, state: number): RuntimeError {
  if (state === CoreState.Crashed) {
    return new RuntimeError('CORE_CRASHED', `core ${core} crashed: its tasks are lost (see mc.stats().perCore[${core}].crash for why)`);
  }
  return new RuntimeError('RUNTIME_SHUTDOWN', `core ${core} has shut down`);
}

function resultNotCloneable(err: unknown): RuntimeError {
  return new RuntimeError('RESULT_NOT_CLONEABLE', `the task's result cannot be sent back to its core: ${messageOf(err)}`, { cause: err });
}

/** The fixed error a task's handle gets when nothing about its outcome could be encoded. */
function unreportable(ok: boolean): RuntimeError {
  return new RuntimeError(
    'RESULT_NOT_CLONEABLE',
    ok
      ? "the task's result cannot be sent back to its core, and neither can the reason"
      : 'the task failed, and what it threw cannot be sent back to its core',
  );
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const EMPTY = new Uint8Array(0);
/** `RESOLVED.then(f)` queues a microtask for a fraction of `queueMicrotask`'s cost (no AsyncResource). */
const RESOLVED = Promise.resolve();
const encoder = new TextEncoder();
const decoder = new TextDecoder();

