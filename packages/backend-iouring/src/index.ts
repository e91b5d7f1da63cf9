import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import {
  FlushObjects,
  InvalidArgumentError,
  NATIVE_OP_CODES,
  OP_SLOT_MASK,
  OpSlots,
  bufferHandleOf,
  positiveIntOption,
  requireNativeAddon,
  checkAllocateBuffer,
  int32OrBad,
  ioErrorForOperation,
  nativeSocketAddress,
  NO_COMPLETIONS,
  RuntimeError,
  bytesOf,
  ioErrorFromErrno,
  validateOperation,
  type BackendModule,
  type BackendOptions,
  type BufferHandle,
  type IoBackend,
  type IoBackendFeatures,
  type IoCompletion,
  type IoHandleId,
  type IoOperation,
  type SocketAddress,
} from '@miniss/core';
import type { NativeIoUringAddon, NativeIoUringBackend } from './native.js';

/**
 * `@miniss/backend-iouring`: the completion-model backend for Linux.
 *
 * Operations are queued in JS by {@link IoUringBackend.submit}, written as fixed-size
 * descriptors into one `ArrayBuffer` shared with the addon (created once) and turned into SQEs
 * by {@link IoUringBackend.flush} with one call into native code per batch; the buffers of the
 * batch travel as arguments of that call (see #flushBatch) and stay pinned in native code until
 * their completion is reaped. Submission itself is one `io_uring_enter` per batch (deferred to the
 * end of the ready callback when the flush happens inside it). Completions are read from the CQ
 * ring into a second shared buffer, by the addon just before it calls the ready callback or by
 * one `reap` call, and dispatched here.
 *
 * The ring is created with SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG when the kernel accepts it,
 * else COOP_TASKRUN. Without one of those the kernel interrupts the thread for every completion
 * (~40% more CPU). DEFER_TASKRUN is opt-in only (`taskRun: 'defer'`): it loses eventfd-driven
 * wake-ups on this kernel (see README).
 */

// The numbering native code reads (enum OpCode in native code; see NATIVE_OP_CODES in @miniss/core).
const OPCODES = NATIVE_OP_CODES;
const OP_CANCEL = 16;

/** Words per descriptor; mirrored in native/binding.cc. */
const SQ_INTS = 8;
const SQ_DOUBLES = 3;
const CQ_DOUBLES = 3;
/** The most buffers/strings of one batch passed to the addon as call arguments (see flush()). */
const MAX_SPREAD = 1024;
const IORING_CQE_F_MORE = 2;
const IORING_SETUP_SQPOLL = 2;
const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
const MAX_IO = 0x7ffff000;
const ECANCELED = osConstants.errno.ECANCELED;
const ETIMEDOUT = osConstants.errno.ETIMEDOUT;
const EINVAL = osConstants.errno.EINVAL;
/**
 * SQ ring sizes `entries` may ask for. At least 2: a `close` (a cancel-by-fd hard-linked to the
 * close) and a `connect` with `timeoutMs` (the connect linked to its timeout) take two SQEs that
 * must enter the ring together; a one-entry ring could never take them.
 */
const MIN_ENTRIES = 2;
const MAX_ENTRIES = 32768;

/**
 * A `connect` may carry `timeoutMs` (core's contract; `features.linkedTimeouts` is true here): the
 * backend links an IORING_OP_LINK_TIMEOUT to the connect, and the connect fails with `ETIMEDOUT`
 * when it is not done in time. `TcpStream.connect(addr, { timeoutMs })` passes it through.
 */
export type IoUringConnectOperation = Extract<IoOperation, { op: 'connect' }> & { timeoutMs?: number };

/** Counters of one backend instance, for tests and benchmarks. */
export interface IoUringStats {
  /** io_uring_enter calls. */
  enters: number;
  /** SQEs the kernel consumed. */
  sqesSubmitted: number;
  /** CQEs reaped. */
  cqesReaped: number;
  /** Requests the kernel still holds (including internal cancels). */
  inFlight: number;
  /** IORING_SETUP_* flags the ring was created with. */
  setupFlags: number;
  /** IORING_FEAT_* flags the kernel reported. */
  kernelFeatures: number;
  sqEntries: number;
  cqEntries: number;
  /** Connections a multishot accept took that no accept operation has asked for yet. */
  queuedAccepts: number;
  /**
   * io_uring_enter names the ring by its index in this thread's registered ring fds
   * (IORING_REGISTER_RING_FDS, Linux 5.18+), which spares the kernel a lookup and reference
   * count of the ring file per call; false on kernels that refuse the registration.
   */
  ringFdRegistered: boolean;
}

/** Options of {@link createBackend}. */
export interface IoUringBackendOptions extends BackendOptions {
  /**
   * Ring flags: 'best' (default) tries SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG, then
   * COOP_TASKRUN|TASKRUN_FLAG, then none; 'coop' is the same ladder; 'plain' uses no task-run
   * flag (for comparison only); 'defer' tries SINGLE_ISSUER|DEFER_TASKRUN first. 'defer' is
   * opt-in because on this kernel (6.18) a DEFER_TASKRUN ring with a registered eventfd loses
   * wake-ups for requests completed from another eventfd's write (a doorbell read never
   * completes; see README "Ring flags and why"). Do not use it with eventfd reads.
   */
  taskRun?: 'best' | 'coop' | 'plain' | 'defer';
  /** With `sqpoll`: how long the kernel SQ thread spins idle before sleeping. Default 50 ms. */
  sqIdleMs?: number;
}

// -------------------------------------------------------------------------------------------------
// Loading the addon

const ADDON = 'miniss_iouring.node';
let loaded: { addon: NativeIoUringAddon } | { error: string } | undefined;

function loadAddon(): { addon: NativeIoUringAddon } | { error: string } {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    loaded = { error: `io_uring is a Linux API and this is ${process.platform}; use the kqueue backend (macOS/BSD) or 'node'` };
    return loaded;
  }
  const r = requireNativeAddon<NativeIoUringAddon>(import.meta.url, ADDON);
  if ('addon' in r) {
    loaded = r;
    return loaded;
  }
  loaded = {
    error:
      `the io_uring addon is not built or failed to load; tried ${r.tried.join('; ')}. ` +
      `Build it with: npm run build -w @miniss/backend-iouring (needs python3, make and a C++ compiler)`,
  };
  return loaded;
}

/**
 * Test hook: `MINISS_IOURING_SIMULATE_ERRNO=EPERM` (or `ENOSYS`) makes the probe report that
 * refusal as if the kernel had said so, so fallback to the next backend can be tested on a
 * kernel that has io_uring. Not for production use.
 */
function simulatedRefusal(): { errno: number; reason: string } | null {
  const v = process.env['MINISS_IOURING_SIMULATE_ERRNO'];
  if (v === undefined || v === '') return null;
  if (v === 'EPERM') {
    return {
      errno: -osConstants.errno.EPERM,
      reason: 'io_uring_setup failed with EPERM (simulated by MINISS_IOURING_SIMULATE_ERRNO=EPERM): blocked by seccomp, io_uring_disabled or an LSM',
    };
  }
  if (v === 'ENOSYS') {
    return {
      errno: -osConstants.errno.ENOSYS,
      reason: 'io_uring_setup failed with ENOSYS (simulated by MINISS_IOURING_SIMULATE_ERRNO=ENOSYS): this kernel was built without io_uring',
    };
  }
  return { errno: -osConstants.errno.EINVAL, reason: `MINISS_IOURING_SIMULATE_ERRNO must be EPERM or ENOSYS, got ${JSON.stringify(v)}` };
}

/** Whether this OS, kernel and build can run the io_uring backend, and why not. Creates nothing that outlives the call. */
export function isSupported(): { ok: boolean; reason?: string } {
  const r = loadAddon();
  if ('error' in r) return { ok: false, reason: r.error };
  const sim = simulatedRefusal();
  if (sim !== null) return { ok: false, reason: sim.reason };
  const [code, detail] = r.addon.probe();
  if (code < 0) return { ok: false, reason: detail !== '' ? detail : `io_uring probe failed: ${ioErrorFromErrno(code, 'io_uring_setup').code}` };
  return { ok: true };
}

/** Creates one io_uring backend for the calling thread. Throws `BACKEND_UNAVAILABLE` with the reason when unsupported. */
export function createBackend(options: IoUringBackendOptions = {}): IoUringBackend {
  return new IoUringBackend(options);
}

// -------------------------------------------------------------------------------------------------

/** The io_uring {@link IoBackend}. One per thread (per runtime); see the module comment. */
export class IoUringBackend implements IoBackend {
  readonly name = 'io_uring' as const;
  readonly features: IoBackendFeatures;
  readonly maxBatchSize: number;

  readonly #addon: NativeIoUringAddon;
  readonly #native: NativeIoUringBackend;
  readonly #sqI: Int32Array;
  readonly #sqF: Float64Array;
  readonly #cq: Float64Array;

  /**
   * Submitted, not yet handed to the ring: the first #qLen entries (the array is reused, never
   * reallocated). An entry is an operation id, or `-id` for a request to cancel operation `id`.
   */
  readonly #q: number[] = [];
  #qLen = 0;
  /**
   * Live operations by id (`generation * 2^20 + slot`; native code finds the slot from the low
   * bits, kSlotMask in native/io_uring.h): core's OpSlots, as in the epoll backend.
   */
  readonly #slots = new OpSlots<IoOperation>('io_uring');
  /** Per slot: whether its operation's cancellation was requested (one cancel SQE each). */
  readonly #slotCancelled: boolean[] = [];
  /**
   * Per slot of a readv/writev: the byte length of each buffer at submit. A buffer of a resizable
   * ArrayBuffer shrunk before the flush is bound as it is now, shorter, and the kernel would then
   * fill the next buffers with the data meant for the missing bytes: #encode fails the operation
   * with EFAULT instead, as a read/write whose buffer is shorter than `len` (native code cannot tell
   * a shrunk view from one that was always that short). The epoll backend checks the same way.
   */
  readonly #vecLens: (number[] | undefined)[] = [];
  /** Completions made in JS (cancelled before they were flushed). */
  #local: IoCompletion[] = [];
  /** Buffers and strings of the batch being flushed (cleared after each native flush). */
  readonly #objs = new FlushObjects();
  #cb: (() => void) | null = null;
  /**
   * Completions the addon reaped into the completion buffer before calling onReady, not yet
   * handed out (drain() hands them to its sink, #keepPre() moves them to #local). While non-zero,
   * no native reap may run (it would overwrite them).
   */
  #pre = 0;
  /** The addon took everything the CQ ring held for this onReady call: no need to ask again. */
  #preAll = false;
  /** A drain() is handing completions to its sink (the completion buffer is in use). */
  #reaping = false;
  /** How many completions of the completion buffer that drain() is handing over. */
  #reapingCount = 0;
  /** The kept completions (once #local) a drain() is handing over, while it does. */
  #drainingLocal: IoCompletion[] | null = null;
  #fireScheduled = false;
  #closed = false;

  constructor(options: IoUringBackendOptions = {}) {
    const loadedAddon = loadAddon();
    if ('error' in loadedAddon) throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'io_uring' is unavailable: ${loadedAddon.error}`);
    const sim = simulatedRefusal();
    if (sim !== null) throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'io_uring' is unavailable: ${sim.reason}`);
    this.#addon = loadedAddon.addon;
    const entries: unknown = options.entries === undefined ? 256 : options.entries;
    if (typeof entries !== 'number' || !Number.isInteger(entries) || entries < MIN_ENTRIES || entries > MAX_ENTRIES) {
      throw new InvalidArgumentError(
        `entries must be an integer between ${MIN_ENTRIES} and ${MAX_ENTRIES}, got ${String(entries)} (a close takes two linked submission queue entries)`,
      );
    }
    this.maxBatchSize = positiveIntOption(options.maxBatchSize, 'maxBatchSize', 128, 65536);
    const sqIdleMs = positiveIntOption(options.sqIdleMs, 'sqIdleMs', 50, 60000);
    const taskRun = options.taskRun ?? 'best';
    if (taskRun !== 'best' && taskRun !== 'coop' && taskRun !== 'plain' && taskRun !== 'defer') {
      throw new InvalidArgumentError(`taskRun must be 'best', 'coop', 'plain' or 'defer', got ${String(taskRun)}`);
    }
    const mode = taskRun === 'best' ? 0 : taskRun === 'coop' ? 1 : taskRun === 'plain' ? 2 : 3;
    const sqCap = this.maxBatchSize;
    const cqCap = Math.max(entries * 2, this.maxBatchSize);
    const sq = new ArrayBuffer(sqCap * (SQ_INTS * 4 + SQ_DOUBLES * 8));
    const cq = new ArrayBuffer(cqCap * CQ_DOUBLES * 8);
    this.#sqI = new Int32Array(sq, 0, sqCap * SQ_INTS);
    this.#sqF = new Float64Array(sq, sqCap * SQ_INTS * 4, sqCap * SQ_DOUBLES);
    this.#cq = new Float64Array(cq);
    // The addon reaps before it calls: `reaped` completions wait in the completion buffer.
    // It keeps this callback in an internal field of the native object (#native), not in a
    // persistent handle: the callback reaches `this`, and `this` reaches #native, so a GC root
    // on it kept a backend dropped without close() alive forever (see kOnReadyField in
    // native/binding.cc).
    const onReady = (reaped: number): void => {
      this.#pre = reaped;
      this.#preAll = reaped < cqCap;
      try {
        if (!this.#closed && this.#cb !== null) this.#cb();
      } finally {
        // Not taken (the consumer stopped early or threw): keep them for the next poll or drain
        // before anything can overwrite the completion buffer.
        if (this.#pre > 0) this.#keepPre();
        this.#preAll = false;
      }
    };
    try {
      this.#native = new this.#addon.IoUringBackend(sq, cq, sqCap, cqCap, entries, mode, options.sqpoll === true, sqIdleMs, onReady);
    } catch (err) {
      const e = err as { message?: string };
      throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'io_uring' could not start: ${e?.message ?? String(err)}`, { cause: err });
    }
    const flags = this.#native.stats()[4] ?? 0;
    this.features = Object.freeze({ directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: (flags & IORING_SETUP_SQPOLL) !== 0, linkedTimeouts: true });
  }

  get inFlight(): number {
    return this.#slots.live;
  }

  /** The operation of a live id, or undefined (unknown, stale or finished). */
  #opOf(id: number): IoOperation | undefined {
    return this.#slots.get(id);
  }

  /** Frees the slot of a live id. */
  #release(id: number): void {
    if (this.#slots.release(id) !== undefined) {
      this.#slotCancelled[id & OP_SLOT_MASK] = false;
      this.#vecLens[id & OP_SLOT_MASK] = undefined;
    }
  }

  submit(op: IoOperation): IoHandleId {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the io_uring backend is closed: no more operations can be submitted');
    validateOperation(op); // (a connect's timeoutMs included: above 0, at most 2^31 - 1)
    const id = this.#slots.add(op);
    this.#slotCancelled[id & OP_SLOT_MASK] = false;
    if (op.op === 'readv' || op.op === 'writev') this.#vecLens[id & OP_SLOT_MASK] = op.buffers.map(byteLengthOf);
    this.#q[this.#qLen++] = id;
    return id;
  }

  flush(): number {
    if (this.#closed) return 0;
    let total = this.#qLen;
    if (total === 0) return 0;
    const q = this.#q;
    let done = 0;
    while (done < total) {
      let n = Math.min(this.maxBatchSize, total - done);
      this.#objs.clear(); // nothing left over from a batch whose encoding threw
      try {
        for (let i = 0; i < n; i++) this.#encode(i, q[done + i]!);
      } catch {
        // An operation changed after submit so that it no longer encodes (submit validated it,
        // flush reads it again): it alone fails, the rest of the batch goes on. Without this the
        // queue kept it and every later flush, poll and drain threw the same error.
        const kept = this.#encodeOrFail(done, n, total);
        total -= n - kept;
        n = kept;
        if (n === 0) continue;
      }
      const hold = done + n < total;
      const taken = this.#flushBatch(n, hold);
      done += taken;
      if (taken < n) break; // SQ ring full even after submitting: the rest waits for completions
    }
    if (done === total) {
      this.#qLen = 0;
    } else {
      q.copyWithin(0, done, total);
      this.#qLen = total - done;
      // Keep the loop alive and come back next turn to hand over the rest.
      this.#native.wake(true);
    }
    return done;
  }

  /**
   * Hands the `n` encoded descriptors and the batch's objects to the addon; returns how many it
   * took. The objects travel as arguments: reading an argument in C++ is much cheaper than an
   * element lookup on an array through the V8 API, and the usual batch (one buffer, or none) is
   * passed without a spread. Only a huge vectored batch goes as the array.
   */
  #flushBatch(n: number, hold: boolean): number {
    const objs = this.#objs;
    const len = objs.count;
    const nat = this.#native;
    try {
      if (len === 0) return nat.flush(n, hold, null);
      if (len === 1) return nat.flush(n, hold, null, objs.list[0]);
      if (len === 2) return nat.flush(n, hold, null, objs.list[0], objs.list[1]);
      return len <= MAX_SPREAD ? nat.flush(n, hold, null, ...objs.exact()) : nat.flush(n, hold, objs.exact());
    } finally {
      objs.clear();
    }
  }

  /**
   * The slow path of a batch whose encoding threw: encodes queue entries `from..from+n-1` one by
   * one as descriptors 0, 1, ..., completes each one that throws with EINVAL (through #local) and
   * takes it out of the queue (entries up to `total` move down). Returns how many were encoded.
   */
  #encodeOrFail(from: number, n: number, total: number): number {
    const q = this.#q;
    this.#objs.clear();
    let kept = 0;
    for (let r = from; r < from + n; r++) {
      const entry = q[r]!;
      try {
        this.#encode(kept, entry);
      } catch {
        this.#failQueued(entry, -EINVAL);
        continue;
      }
      q[from + kept++] = entry;
    }
    if (kept < n) q.copyWithin(from + kept, from + n, total);
    return kept;
  }

  /** Completes queued operation `id` (never handed to the ring) with `errno` in JS. */
  #failQueued(id: number, errno: number): void {
    const op = this.#opOf(id);
    if (op === undefined) return;
    // The operation is malformed by now: its own fields may throw again.
    this.#local.push({ handle: id, result: ioErrorForOperation(op, errno), buffer: bufferHandleOf(op) });
    this.#scheduleFire();
  }

  /** Writes queue entry `entry` (an id, or -id for a cancel request) as descriptor `i`. */
  #encode(i: number, entry: number): void {
    const I = this.#sqI;
    const F = this.#sqF;
    const b = i * SQ_INTS;
    const f = i * SQ_DOUBLES;
    I[b + 1] = -1;
    I[b + 2] = 0;
    I[b + 3] = 0;
    I[b + 4] = 0;
    I[b + 5] = -1;
    I[b + 6] = 0;
    F[f + 1] = -1;
    F[f + 2] = 0;
    if (entry < 0) {
      // A cancel request for the operation `-entry`.
      I[b] = OP_CANCEL;
      F[f] = 0;
      F[f + 2] = -entry;
      return;
    }
    F[f] = entry;
    const op = this.#slots.ops[entry & OP_SLOT_MASK]!;
    // The opcode is set per case: OPCODES[op.op] is a keyed load with many different keys
    // (megamorphic); a switch on interned strings compares pointers.
    switch (op.op) {
      case 'nop':
        I[b] = OPCODES.nop;
        break;
      case 'timeout':
        I[b] = OPCODES.timeout;
        F[f + 2] = op.ms;
        break;
      case 'read':
      case 'write':
        I[b] = op.op === 'read' ? OPCODES.read : OPCODES.write;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = this.#objs.push(bytesOf(op.buffer));
        F[f + 1] = op.offset;
        break;
      case 'recv':
      case 'send':
        I[b] = op.op === 'recv' ? OPCODES.recv : OPCODES.send;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = this.#objs.push(bytesOf(op.buffer));
        break;
      case 'readv':
      case 'writev': {
        I[b] = op.op === 'readv' ? OPCODES.readv : OPCODES.writev;
        I[b + 1] = int32OrBad(op.fd);
        const bufs = op.buffers;
        if (!sameOrLonger(bufs, this.#vecLens[entry & OP_SLOT_MASK])) {
          // A buffer shrunk (or detached) since submit: no objects, and the addon fails the
          // operation with EFAULT (see #vecLens), in order with the rest of the batch.
          I[b + 5] = -1;
          break;
        }
        // More than the native limit (1024 iovecs): the addon fails the operation with EFAULT.
        I[b + 5] = this.#objs.count;
        I[b + 6] = bufs.length;
        if (bufs.length <= 1024) for (let j = 0; j < bufs.length; j++) this.#objs.push(bufs[j]);
        F[f + 1] = op.offset;
        break;
      }
      case 'fsync':
        I[b] = OPCODES.fsync;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.datasync === true ? 1 : 0;
        break;
      case 'open':
        I[b] = OPCODES.open;
        I[b + 2] = op.flags | 0;
        I[b + 3] = op.mode | 0;
        I[b + 5] = this.#objs.push(op.path);
        break;
      case 'close':
        I[b] = OPCODES.close;
        I[b + 1] = int32OrBad(op.fd);
        break;
      case 'accept':
        I[b] = OPCODES.accept;
        I[b + 1] = int32OrBad(op.fd);
        break;
      case 'socket':
        I[b] = OPCODES.socket;
        I[b + 2] = op.family;
        break;
      case 'listen':
        I[b] = OPCODES.listen;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.addr.port;
        I[b + 3] = Math.min(op.backlog, 0x7fffffff);
        I[b + 4] = op.reusePort ? 1 : 0;
        I[b + 5] = this.#objs.push(op.addr.host);
        break;
      case 'connect': {
        I[b] = OPCODES.connect;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.addr.port;
        I[b + 5] = this.#objs.push(op.addr.host);
        const t = (op as IoUringConnectOperation).timeoutMs;
        if (t !== undefined) F[f + 2] = t;
        break;
      }
      case 'shutdown':
        I[b] = OPCODES.shutdown;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.how;
        break;
      default:
        I[b] = -1; // unreachable: submit validated the operation (the addon answers EINVAL)
    }
  }

  cancel(id: IoHandleId): boolean {
    if (this.#closed) return false;
    if (typeof id !== 'number') return false;
    const op = this.#opOf(id);
    const slot = id & OP_SLOT_MASK;
    if (op === undefined || this.#slotCancelled[slot] === true) return false;
    // Finished already, its completion kept in JS until the next poll or drain.
    if (this.#local.length > 0 && this.#local.some((c) => c.handle === id)) return false;
    const q = this.#q;
    let queued = -1;
    for (let i = 0; i < this.#qLen; i++) {
      if (q[i] === id) {
        queued = i;
        break;
      }
    }
    if (queued >= 0) {
      // Not handed to the ring yet: it never reaches the kernel.
      q.copyWithin(queued, queued + 1, this.#qLen);
      this.#qLen--;
      this.#slotCancelled[slot] = true;
      // The operation is out of the queue now: its completion must not be lost to a field that
      // throws (an operation changed since submit).
      this.#local.push({ handle: id, result: ioErrorForOperation(op, -ECANCELED), buffer: bufferHandleOf(op) });
      this.#scheduleFire();
      return true;
    }
    // In the kernel: IORING_OP_ASYNC_CANCEL by user_data, flushed with the next batch. The
    // operation then completes with ECANCELED (or with its result if it finished first).
    this.#slotCancelled[slot] = true;
    this.#q[this.#qLen++] = -id;
    this.#scheduleFire();
    return true;
  }

  poll(timeoutMs = 0): IoCompletion[] {
    if (this.#closed || this.#reaping) return NO_COMPLETIONS;
    if (this.#qLen > 0) this.flush();
    // Completions onReady brought and nobody took yet join the ones made in JS.
    if (this.#pre > 0) this.#keepPre();
    let out: IoCompletion[] | null = null;
    if (this.#local.length > 0) {
      out = this.#local;
      this.#local = [];
      for (const c of out) this.#release(c.handle);
    }
    const wait = out === null && timeoutMs > 0 ? timeoutMs : 0;
    if (this.#preAll && wait === 0) {
      this.#preAll = false;
      return out ?? NO_COMPLETIONS;
    }
    const n = this.#native.reap(wait, this.#qLen > 0);
    if (n === 0) return out ?? NO_COMPLETIONS;
    let k = 0;
    // The result array is allocated at its final size (trimmed below if an id was stale).
    if (out === null) out = new Array<IoCompletion>(n);
    else k = out.length;
    const cq = this.#cq;
    for (let i = 0; i < n; i++) {
      const id = cq[CQ_DOUBLES * i]! | 0;
      const op = this.#opOf(id);
      if (op === undefined) continue;
      const res = this.#resultOf(id, op, cq[CQ_DOUBLES * i + 1]!, cq[CQ_DOUBLES * i + 2]!);
      // bufferHandleOf: a throwing field of one operation (changed since submit) must not lose the
      // completions after it, taken from the ring already.
      out[k++] = { handle: id, result: res, buffer: bufferHandleOf(op) };
    }
    if (k < out.length) out.length = k;
    return out;
  }

  /**
   * Like {@link poll}, without allocating: hands every finished operation to `sink(handle,
   * result)` (in the order `poll` would return them) instead of building completion objects and
   * an array, and returns how many it handed over (0: nothing was ready; callers loop until 0,
   * as with `poll`). A backend-specific extension a runtime may use in place of `poll(0)`
   * (`result` is the same number or `Error` as `IoCompletion.result`; the `BufferHandle` is not
   * passed: the caller gave it, and it is unpinned all the same). `sink` must not call `poll`
   * or `drain` (they return nothing while a drain runs); it may submit and cancel.
   */
  drain(sink: (handle: IoHandleId, result: number | Error) => void, timeoutMs = 0): number {
    if (this.#closed || this.#reaping) return 0;
    if (this.#qLen > 0) this.flush();
    let count = 0;
    if (this.#local.length > 0) {
      // Completions kept in JS (rare): each one's slot is released as it is handed over, so the
      // ones a throwing sink leaves stay counted in inFlight (and close() still knows their ops).
      const local = this.#local;
      this.#local = [];
      this.#drainingLocal = local;
      let j = 0;
      try {
        // A sink that closed the backend gets nothing more (close() closed the fds among the rest).
        for (; j < local.length && !this.#closed; j++) {
          const c = local[j]!;
          this.#release(c.handle);
          count++;
          sink(c.handle, c.result);
        }
      } finally {
        this.#drainingLocal = null;
        // The sink threw: the rest is handed over by the next poll or drain.
        if (j < local.length - 1 && !this.#closed) {
          this.#local = local.slice(j + 1).concat(this.#local);
          this.#scheduleFire();
        }
      }
      return count;
    }
    let n = this.#pre;
    if (n > 0) {
      this.#pre = 0;
    } else if (this.#preAll && !(timeoutMs > 0)) {
      // This onReady call's completions are all handed out already.
      this.#preAll = false;
      return 0;
    } else {
      n = this.#native.reap(timeoutMs > 0 ? timeoutMs : 0, this.#qLen > 0);
      if (n === 0) return 0;
    }
    const cq = this.#cq;
    let i = 0;
    this.#reaping = true;
    this.#reapingCount = n;
    try {
      for (; i < n; i++) {
        const id = cq[CQ_DOUBLES * i]! | 0;
        const op = this.#opOf(id);
        if (op === undefined) continue;
        const res = this.#resultOf(id, op, cq[CQ_DOUBLES * i + 1]!, cq[CQ_DOUBLES * i + 2]!);
        count++;
        sink(id, res);
      }
    } finally {
      this.#reaping = false;
      if (i < n - 1) {
        // The sink threw: completions already taken from the ring are not lost; the next
        // poll or drain hands them over.
        this.#keepCq(i + 1, n);
        this.#scheduleFire();
      }
    }
    return count;
  }

  /** Moves the completions onReady brought (#pre) out of the completion buffer into #local. */
  #keepPre(): void {
    const n = this.#pre;
    this.#pre = 0;
    this.#keepCq(0, n);
    if (this.#local.length > 0) this.#scheduleFire();
  }

  /**
   * Moves entries `from..to-1` of the completion buffer into #local, as completions of their live
   * operations. Their slots stay taken until poll or drain hands them over (user operations never
   * carry IORING_CQE_F_MORE, so each is final): inFlight keeps counting them, as the IoBackend
   * contract says, and close() still finds the fds of the opens, accepts and sockets among them.
   */
  #keepCq(from: number, to: number): void {
    const cq = this.#cq;
    for (let i = from; i < to; i++) {
      const id = cq[CQ_DOUBLES * i]! | 0;
      const op = this.#opOf(id);
      if (op === undefined) continue;
      this.#local.push({ handle: id, result: this.#resultValue(id, op, cq[CQ_DOUBLES * i + 1]!), buffer: bufferHandleOf(op) });
    }
  }

  /** The result of a reaped CQE of live operation `id` (releasing its slot unless more CQEs follow). */
  #resultOf(id: number, op: IoOperation, r: number, flags: number): number | Error {
    const res = this.#resultValue(id, op, r);
    if ((flags & IORING_CQE_F_MORE) === 0) this.#release(id);
    return res;
  }

  /** What a CQE result `r` of live operation `id` means to the caller (its slot is left as it is). */
  #resultValue(id: number, op: IoOperation, r: number): number | Error {
    let res = r;
    // The operation's fields are read again here; one changed since submit so that they throw
    // must not take the other completions of the reap down with it (see ioErrorForOperation in @miniss/core).
    try {
      // A connect whose linked timeout fired completes with ECANCELED: report ETIMEDOUT unless
      // the caller cancelled it.
      if (r === -ECANCELED && op.op === 'connect' && (op as IoUringConnectOperation).timeoutMs !== undefined && this.#slotCancelled[id & OP_SLOT_MASK] !== true) {
        res = -ETIMEDOUT;
      }
    } catch {
      res = r;
    }
    return res >= 0 ? res : ioErrorForOperation(op, res);
  }

  /**
   * Closes the fds that finished `open`, `accept` and `socket` operations returned to completions
   * nobody will be handed any more (close() is running): the ones kept in JS and the first
   * `inBuffer` of the completion buffer, as far as their operations are still live (a completion
   * handed over has its slot released already).
   */
  #closeUnclaimedFds(inBuffer: number): void {
    const cq = this.#cq;
    for (let i = 0; i < inBuffer; i++) {
      const id = cq[CQ_DOUBLES * i]! | 0;
      const op = this.#opOf(id);
      if (op !== undefined) this.#closeResultFd(op, cq[CQ_DOUBLES * i + 1]!);
    }
    for (const kept of [this.#local, this.#drainingLocal ?? []]) {
      for (const c of kept) {
        const op = this.#opOf(c.handle);
        if (op !== undefined) this.#closeResultFd(op, c.result);
      }
    }
  }

  #closeResultFd(op: IoOperation, result: number | Error): void {
    if (typeof result !== 'number' || result < 0 || (op.op !== 'open' && op.op !== 'accept' && op.op !== 'socket')) return;
    try {
      closeSync(result);
    } catch {
      // Already gone (EBADF): nothing to release.
    }
  }

  onReady(cb: (() => void) | null): void {
    this.#cb = cb;
    // With a consumer the addon hands completions over with the ready call itself; without one
    // they stay in the ring (close() then still finds the fds accepts and opens returned).
    if (!this.#closed) this.#native.preReap(cb !== null);
  }

  #scheduleFire(): void {
    // Work made in JS (a cancellation, a queued cancel request) wakes the runtime from
    // setImmediate, never synchronously.
    if (this.#fireScheduled) return;
    this.#fireScheduled = true;
    setImmediate(this.#fire);
  }

  readonly #fire = (): void => {
    this.#fireScheduled = false;
    if (this.#closed) return;
    if (this.#qLen > 0) this.flush();
    if (this.#cb !== null) this.#cb();
  };

  address(fd: number, which: 'local' | 'peer'): SocketAddress {
    return nativeSocketAddress((f, peer) => this.#addon.address(f, peer), fd, which);
  }

  /** Counters since creation (all zero after close). */
  stats(): IoUringStats {
    const s = this.#closed ? [] : this.#native.stats();
    return {
      enters: s[0] ?? 0,
      sqesSubmitted: s[1] ?? 0,
      cqesReaped: s[2] ?? 0,
      inFlight: s[3] ?? 0,
      setupFlags: s[4] ?? 0,
      kernelFeatures: s[5] ?? 0,
      sqEntries: s[6] ?? 0,
      cqEntries: s[7] ?? 0,
      queuedAccepts: s[8] ?? 0,
      ringFdRegistered: s[9] === 1,
    };
  }

  allocateBuffer(capacity: number, alignment: number): Uint8Array {
    checkAllocateBuffer(capacity, alignment);
    return this.#addon.allocateBuffer(capacity, alignment);
  }

  eventfd(): number {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the io_uring backend is closed');
    if ((this.#native.stats()[4] ?? 0) & IORING_SETUP_DEFER_TASKRUN) {
      // An eventfd exists to have reads of it completed by another thread's write, exactly the
      // wake-up a DEFER_TASKRUN ring loses on this kernel (see README): refuse rather than hang.
      throw new RuntimeError(
        'FEATURE_UNAVAILABLE',
        "eventfd() is not available on an io_uring backend created with taskRun: 'defer' (reads of it would never complete on this kernel); use the default taskRun",
      );
    }
    const r = this.#native.eventfd();
    if (r < 0) throw ioErrorFromErrno(r, 'eventfd');
    return r;
  }

  signalFd(fd: number): void {
    if (!Number.isInteger(fd)) throw new InvalidArgumentError(`signalFd: fd must be an integer, got ${String(fd)}`);
    const r = this.#addon.signalFd(int32OrBad(fd));
    if (r < 0) throw ioErrorFromErrno(r, 'write', { fd });
  }

  setAffinity(cpu: number): void {
    if (!Number.isInteger(cpu) || cpu < 0) throw new InvalidArgumentError(`setAffinity: cpu must be a non-negative integer, got ${String(cpu)}`);
    const r = this.#addon.setAffinity(int32OrBad(cpu));
    if (r < 0) throw ioErrorFromErrno(r, 'sched_setaffinity');
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cb = null;
    // Completions taken from the ring but not handed over (kept in #local, waiting in the
    // completion buffer for this ready call, or in a drain whose sink called close()) are
    // nobody's now: the fds among them would leak. (Native close closes the ones still in the
    // ring.)
    const inBuffer = this.#pre > 0 ? this.#pre : this.#reaping ? this.#reapingCount : 0;
    if (inBuffer > 0 || this.#local.length > 0 || this.#drainingLocal !== null) this.#closeUnclaimedFds(inBuffer);
    this.#pre = 0;
    // Native close cancels what is in flight, waits for the kernel to give every buffer back
    // (buffers it still holds after that are leaked on purpose, never freed under it) and
    // closes the ring and its eventfds.
    this.#native.close();
    this.#qLen = 0;
    this.#q.length = 0;
    this.#local = [];
    this.#slots.clear();
    this.#slotCancelled.length = 0;
    this.#vecLens.length = 0;
  }
}

function byteLengthOf(b: Uint8Array): number {
  return b.byteLength;
}

/**
 * Whether every buffer is still at least as long as at submit (a detached one is 0 long). False for
 * an array of another length, or no lengths recorded.
 */
function sameOrLonger(buffers: Uint8Array[], lens: number[] | undefined): boolean {
  if (lens === undefined || buffers.length !== lens.length) return false;
  for (let i = 0; i < lens.length; i++) {
    if (buffers[i]!.byteLength < lens[i]!) return false;
  }
  return true;
}

/** This package as a {@link BackendModule} (what core's loader checks for). */
export const backendModule: BackendModule = { createBackend, isSupported };
