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
  type IoBackend,
  type IoBackendFeatures,
  type IoCompletion,
  type IoHandleId,
  type IoOperation,
  type SocketAddress,
} from '@miniss/core';
import type { NativeEpollAddon, NativeEpollBackend } from './native.js';

/**
 * `@miniss/backend-epoll`: the readiness-model backend for Linux.
 *
 * Operations are queued in JS by {@link EpollBackend.submit}, written as fixed-size descriptors
 * into one `ArrayBuffer` shared with the addon (created once), and started by
 * {@link EpollBackend.flush} with one call into native code per batch; the buffers of the batch
 * travel as arguments of that call (see flush()). Native code tries each socket operation right away with a
 * non-blocking system call and waits for epoll readiness only on EAGAIN; file operations that
 * could block go to a small native thread pool (see native/epoll.h and the README). Finished
 * operations are written as (id, result) pairs into a second shared buffer by one `reap` call.
 */

// The numbering native code reads (enum OpCode in native code; see NATIVE_OP_CODES in @miniss/core).
const OPCODES = NATIVE_OP_CODES;

/** Words per descriptor; mirrored in native/binding.cc. */
const SQ_INTS = 8;
const SQ_DOUBLES = 2;
/** read(2)/write(2) never move more than this in one call on Linux; larger lengths are clamped (a short result). */
const MAX_IO = 0x7ffff000;
/** The most buffers/strings of one batch passed to the addon as call arguments (see flush()). */
const MAX_SPREAD = 1024;
const ECANCELED = osConstants.errno.ECANCELED;
const EFAULT = osConstants.errno.EFAULT;
const EINVAL = osConstants.errno.EINVAL;

/** Counters of one backend instance, for tests and benchmarks. */
export interface EpollStats {
  /** Operations handed to native code. */
  submitted: number;
  /** Finished by the first system call, without waiting (includes errors such as EBADF). */
  immediate: number;
  /** Had to wait for epoll readiness (EAGAIN / EINPROGRESS first). */
  waited: number;
  /** Ran on the native thread pool (file writes, fsync, open, close, page-cache misses). */
  pool: number;
  /** File reads served from the page cache by preadv2(RWF_NOWAIT) on the loop thread. */
  nowaitReads: number;
  /** epoll_ctl calls: about one per connection, not one per operation. */
  epollCtl: number;
  /** epoll_wait calls. */
  epollWait: number;
  /**
   * recv/accept operations queued without a system call because the socket said EAGAIN before
   * and no readiness event has arrived since (included in `waited`).
   */
  skipped: number;
  /**
   * Registrations found to be for a file that was closed behind the backend's back (its number
   * now another file's): that file's waiting operations completed with EBADF.
   */
  stale: number;
}

/** Options of {@link createBackend}: the shared {@link BackendOptions} plus the thread pool size. */
export interface EpollBackendOptions extends BackendOptions {
  /** Threads of the native pool that runs blocking file operations (started on first use). Default 2. */
  poolThreads?: number;
}

// -------------------------------------------------------------------------------------------------
// Loading the addon

const ADDON = 'miniss_epoll.node';
let loaded: { addon: NativeEpollAddon } | { error: string } | undefined;

function loadAddon(): { addon: NativeEpollAddon } | { error: string } {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    loaded = { error: `epoll is a Linux API and this is ${process.platform}; use the kqueue backend (macOS/BSD) or 'node'` };
    return loaded;
  }
  const r = requireNativeAddon<NativeEpollAddon>(import.meta.url, ADDON);
  if ('addon' in r) {
    loaded = r;
    return loaded;
  }
  loaded = {
    error:
      `the epoll addon is not built or failed to load; tried ${r.tried.join('; ')}. ` +
      `Build it with: npm run build -w @miniss/backend-epoll (needs python3, make and a C++ compiler)`,
  };
  return loaded;
}

/** Whether this OS and build can run the epoll backend, and why not. Creates nothing that outlives the call. */
export function isSupported(): { ok: boolean; reason?: string } {
  const r = loadAddon();
  if ('error' in r) return { ok: false, reason: r.error };
  const probe = r.addon.probe();
  if (probe < 0) {
    return { ok: false, reason: `epoll_create1 failed here: ${ioErrorFromErrno(probe, 'epoll_create1').code}` };
  }
  return { ok: true };
}

/** Creates one epoll backend for the calling thread. Throws `BACKEND_UNAVAILABLE` with the reason when unsupported. */
export function createBackend(options: EpollBackendOptions = {}): EpollBackend {
  return new EpollBackend(options);
}

// -------------------------------------------------------------------------------------------------

/** The epoll {@link IoBackend}. One per thread (per runtime); see the module comment. */
export class EpollBackend implements IoBackend {
  readonly name = 'epoll' as const;
  readonly features: IoBackendFeatures = Object.freeze({ directIo: true, batchSubmit: true, vectoredIo: true, sqpoll: false });
  readonly maxBatchSize: number;

  readonly #addon: NativeEpollAddon;
  readonly #native: NativeEpollBackend;
  readonly #sqI: Int32Array;
  readonly #sqF: Float64Array;
  readonly #cq: Float64Array;
  readonly #cqCap: number;

  /** Ids submitted, not yet flushed: the first #qLen entries (the array is reused, not reallocated). */
  #qIds: number[] = [];
  #qLen = 0;
  /** The other queue array, swapped in while a flush runs (null while one is running). */
  #qSpare: number[] | null = [];
  /**
   * Every operation submitted and not yet returned by poll, by id (`generation * 2^20 + slot`,
   * core's OpSlots, so a stale id is recognised; native code treats ids as opaque numbers).
   */
  readonly #slots = new OpSlots<IoOperation>('epoll');
  /**
   * True right after a poll() whose native reap returned some completions and fewer than the
   * completion buffer holds (so everything that was ready): the next poll(0) answers "nothing"
   * without crossing into native code (and one more epoll_wait). Cleared by that poll, by
   * flush, cancel, and whenever the addon dispatches events (onEvent) or the setImmediate wake-up
   * runs, so it only ever skips the second poll of one "poll until empty" loop. Anything that
   * becomes ready later makes the epoll fd readable and Node's loop calls onReady again.
   */
  #drained = false;
  /** Completions made in JS (cancelled before they were flushed, or refused at flush). */
  #local: IoCompletion[] = [];
  /**
   * By slot (`id & OP_SLOT_MASK`): the byte length of each buffer of a readv/writev when it was
   * submitted (set by submit, consumed by the flush that encodes it). A readv/writev names no
   * length, so without this a buffer detached or shrunk (a resizable ArrayBuffer) between submit
   * and flush would silently take part with fewer bytes; read/write carry `len` for that check.
   */
  readonly #vecLens: (number[] | undefined)[] = [];
  /** Buffers and strings of the batch being flushed (cleared after each native flush). */
  readonly #objs = new FlushObjects();
  #cb: (() => void) | null = null;
  #fireScheduled = false;
  #closed = false;

  constructor(options: EpollBackendOptions = {}) {
    const loadedAddon = loadAddon();
    if ('error' in loadedAddon) throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'epoll' is unavailable: ${loadedAddon.error}`);
    this.#addon = loadedAddon.addon;
    const entries = positiveIntOption(options.entries, 'entries', 256, 65536);
    this.maxBatchSize = positiveIntOption(options.maxBatchSize, 'maxBatchSize', 128, 65536);
    const poolThreads = positiveIntOption(options.poolThreads, 'poolThreads', 2, 64);
    const sqCap = this.maxBatchSize;
    this.#cqCap = Math.max(entries, this.maxBatchSize);
    const sq = new ArrayBuffer(sqCap * (SQ_INTS * 4 + SQ_DOUBLES * 8));
    const cq = new ArrayBuffer(this.#cqCap * 16);
    this.#sqI = new Int32Array(sq, 0, sqCap * SQ_INTS);
    this.#sqF = new Float64Array(sq, sqCap * SQ_INTS * 4, sqCap * SQ_DOUBLES);
    this.#cq = new Float64Array(cq);
    // What keeps a backend alive (as on io_uring): the addon keeps onEvent in an internal field of
    // the native object (#native), not in a GC root, and holds that object strongly only while
    // operations are in flight (addon.h, Instance::UpdateRef). So a backend with operations in
    // flight stays alive however it is referenced (often only from its own onReady callback,
    // through the runtime and the promises waiting on it) and its completions arrive; an idle one
    // dropped without close() is collected, and the native object's destructor closes its fds
    // and pool threads. onEvent holds `this` strongly: a WeakRef here let a busy backend be
    // collected with its operations never completing.
    const onEvent = (): void => this.#onEvent();
    try {
      this.#native = new this.#addon.EpollBackend(sq, cq, sqCap, this.#cqCap, entries, poolThreads, onEvent);
    } catch (err) {
      const e = err as { errno?: number; syscall?: string; message?: string };
      throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'epoll' could not start: ${e?.message ?? String(err)}`, { cause: err });
    }
  }

  #onEvent(): void {
    // The addon just dispatched events: completions may be ready that no poll has seen.
    this.#drained = false;
    if (!this.#closed && this.#cb !== null) this.#cb();
  }

  get inFlight(): number {
    return this.#slots.live;
  }

  submit(op: IoOperation): IoHandleId {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the epoll backend is closed: no more operations can be submitted');
    validateOperation(op);
    const id = this.#slots.add(op);
    if (op.op === 'readv' || op.op === 'writev') this.#vecLens[id & OP_SLOT_MASK] = op.buffers.map(byteLengthOf);
    this.#qIds[this.#qLen++] = id;
    return id;
  }

  /** The live operation with this id, or undefined (unknown, stale or finished id). */
  #opOf(id: number): IoOperation | undefined {
    return this.#slots.get(id);
  }

  flush(): number {
    if (this.#closed) return 0;
    const total = this.#qLen;
    if (total === 0) return 0;
    this.#drained = false;
    // Take the queue first (swap in the spare array): encoding reads the operations again, and
    // an operation is user data (a getter could submit, or throw: see the catch below).
    const ids = this.#qIds;
    this.#qIds = this.#qSpare ?? [];
    this.#qSpare = null;
    this.#qLen = 0;
    const slotOp = this.#slots.ops;
    let done = 0;
    let ready = 0;
    while (done < total) {
      const n = Math.min(this.maxBatchSize, total - done);
      const objs = this.#objs;
      objs.clear(); // nothing left over from a batch whose encoding threw
      // k: descriptors written (an operation refused by #encode takes none).
      let k = 0;
      for (let i = 0; i < n; i++) {
        const id = ids[done + i]!;
        const before = objs.count;
        try {
          if (this.#encode(k, id, slotOp[id & OP_SLOT_MASK]!)) k++;
        } catch {
          // The operation changed after submit so that it no longer encodes (submit validated
          // it, flush reads it again: a getter that throws, a buffer that is no longer one). It
          // alone fails, with EINVAL; the rest of the batch goes on. Before, the exception left
          // flush with the whole batch taken out of the queue and never completed.
          dropObjectsFrom(objs, before);
          this.#vecLens[id & OP_SLOT_MASK] = undefined;
          this.#fail(id, -EINVAL);
        }
      }
      // The objects travel as arguments: reading an argument in C++ is much cheaper than an
      // element lookup on an array (a generic property access through the V8 API), and the usual
      // one or two go without a spread. Only a huge vectored batch goes as the array.
      const len = objs.count;
      try {
        if (len === 0) ready = k === 0 ? 0 : this.#native.flush(k, null);
        else if (len === 1) ready = this.#native.flush(k, null, objs.list[0]);
        else if (len === 2) ready = this.#native.flush(k, null, objs.list[0], objs.list[1]);
        else ready = len <= MAX_SPREAD ? this.#native.flush(k, null, ...objs.exact()) : this.#native.flush(k, objs.exact());
      } finally {
        objs.clear(); // the addon pinned what it needs
      }
      done += n;
    }
    if (this.#qSpare === null) this.#qSpare = ids;
    if (ready > 0) this.#scheduleFire();
    return total;
  }

  /** Writes descriptor `slot` for `op`; false when `op` was refused instead (completed locally, no descriptor). */
  #encode(slot: number, id: number, op: IoOperation): boolean {
    const I = this.#sqI;
    const F = this.#sqF;
    const b = slot * SQ_INTS;
    // The opcode is set per case: OPCODES[op.op] is a keyed load with many different keys
    // (megamorphic), a switch on interned strings compares pointers.
    I[b + 1] = -1;
    I[b + 2] = 0;
    I[b + 3] = 0;
    I[b + 4] = 0;
    I[b + 5] = -1;
    I[b + 6] = 0;
    F[slot * SQ_DOUBLES] = id;
    F[slot * SQ_DOUBLES + 1] = -1;
    switch (op.op) {
      case 'nop':
        I[b] = OPCODES.nop;
        break;
      case 'timeout':
        I[b] = OPCODES.timeout;
        F[slot * SQ_DOUBLES + 1] = op.ms;
        break;
      case 'read':
      case 'write':
        I[b] = op.op === 'read' ? OPCODES.read : OPCODES.write;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = this.#objs.push(bytesOf(op.buffer));
        F[slot * SQ_DOUBLES + 1] = op.offset;
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
        const lens = this.#vecLens[id & OP_SLOT_MASK];
        this.#vecLens[id & OP_SLOT_MASK] = undefined;
        if (lens === undefined || !sameOrLonger(op.buffers, lens)) {
          // A buffer was detached or shrunk since submit: EFAULT, like read/write whose buffer
          // is shorter than `len` (native code also refuses a detached one, but cannot tell a
          // shrunk one from a short one).
          this.#fail(id, -EFAULT);
          return false;
        }
        I[b] = op.op === 'readv' ? OPCODES.readv : OPCODES.writev;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 5] = this.#objs.count;
        I[b + 6] = op.buffers.length;
        for (const buf of op.buffers) this.#objs.push(buf);
        F[slot * SQ_DOUBLES + 1] = op.offset;
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
      case 'accept':
        I[b] = op.op === 'close' ? OPCODES.close : OPCODES.accept;
        I[b + 1] = int32OrBad(op.fd);
        break;
      case 'socket':
        I[b] = OPCODES.socket;
        I[b + 2] = op.family;
        break;
      case 'listen':
        I[b] = OPCODES.listen;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.backlog, 0x7fffffff);
        I[b + 3] = op.addr.port;
        I[b + 4] = op.reusePort ? 1 : 0;
        I[b + 5] = this.#objs.push(op.addr.host);
        break;
      case 'connect':
        I[b] = OPCODES.connect;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 3] = op.addr.port;
        I[b + 5] = this.#objs.push(op.addr.host);
        break;
      case 'shutdown':
        I[b] = OPCODES.shutdown;
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.how;
        break;
      default:
        I[b] = -1; // unreachable: submit validated the operation
    }
    return true;
  }

  cancel(id: IoHandleId): boolean {
    if (this.#closed) return false;
    const op = this.#opOf(id);
    if (op === undefined) return false;
    const q = this.#qIds;
    let queued = -1;
    for (let i = 0; i < this.#qLen; i++) {
      if (q[i] === id) {
        queued = i;
        break;
      }
    }
    if (queued >= 0) {
      // Not flushed yet: it never reaches the kernel.
      q.copyWithin(queued, queued + 1, this.#qLen);
      this.#qLen--;
      this.#vecLens[id & OP_SLOT_MASK] = undefined;
      this.#drained = false;
      this.#fail(id, -ECANCELED);
      return true;
    }
    if (this.#local.some((c) => c.handle === id)) return false;
    const r = this.#native.cancel(id);
    if (r) {
      this.#drained = false;
      this.#scheduleFire();
    }
    return r;
  }

  poll(timeoutMs = 0): IoCompletion[] {
    if (this.#closed) return NO_COMPLETIONS;
    if (timeoutMs > 0 && this.#qIds.length > 0) this.flush();
    let out: IoCompletion[] | null = null;
    if (this.#local.length > 0) {
      out = this.#local;
      this.#local = [];
      for (const c of out) this.#slots.release(c.handle);
    }
    const wait = out === null && timeoutMs > 0 ? timeoutMs : 0;
    if (wait === 0 && this.#drained) {
      // The previous poll took everything that was ready and nothing was flushed since.
      this.#drained = false;
      return out ?? NO_COMPLETIONS;
    }
    const n = this.#native.reap(wait);
    this.#drained = n > 0 && n < this.#cqCap;
    if (n === 0) return out ?? NO_COMPLETIONS;
    const cq = this.#cq;
    let k = 0;
    if (out === null) out = new Array<IoCompletion>(n);
    else k = out.length;
    for (let i = 0; i < n; i++) {
      const id = cq[2 * i]! | 0;
      const r = cq[2 * i + 1]!;
      const op = this.#slots.release(id);
      if (op === undefined) continue; // cannot happen
      // The slot is released and the completion buffer will be overwritten: nothing may throw
      // between here and the return, or every completion of this reap is lost (an operation's
      // own fields can: a getter, see ioErrorForOperation in @miniss/core).
      out[k++] = { handle: id, result: r >= 0 ? r : ioErrorForOperation(op, r), buffer: bufferHandleOf(op) };
    }
    if (k < out.length) out.length = k;
    return out;
  }

  /** Completes operation `id` (not handed to native code) with `errno` in JS, at the next poll. */
  #fail(id: number, errno: number): void {
    const op = this.#opOf(id);
    if (op === undefined) return;
    this.#local.push({ handle: id, result: ioErrorForOperation(op, errno), buffer: bufferHandleOf(op) });
    this.#scheduleFire();
  }

  onReady(cb: (() => void) | null): void {
    this.#cb = cb;
  }

  #scheduleFire(): void {
    // Completions that exist right after flush()/cancel() (a send that went through at once, a
    // cancellation) wake the runtime from setImmediate, never synchronously: a peer that always
    // has data must not let I/O starve timers by running in one endless microtask chain.
    if (this.#fireScheduled) return;
    this.#fireScheduled = true;
    setImmediate(this.#fire);
  }

  readonly #fire = (): void => {
    this.#fireScheduled = false;
    this.#drained = false;
    if (!this.#closed && this.#cb !== null) this.#cb();
  };

  address(fd: number, which: 'local' | 'peer'): SocketAddress {
    return nativeSocketAddress((f, peer) => this.#addon.address(f, peer), fd, which);
  }

  /** Counters since creation (all zero after close). */
  stats(): EpollStats {
    const s = this.#closed ? [] : this.#native.stats();
    return {
      submitted: s[0] ?? 0,
      immediate: s[1] ?? 0,
      waited: s[2] ?? 0,
      pool: s[3] ?? 0,
      nowaitReads: s[4] ?? 0,
      epollCtl: s[5] ?? 0,
      epollWait: s[6] ?? 0,
      skipped: s[7] ?? 0,
      stale: s[8] ?? 0,
    };
  }

  allocateBuffer(capacity: number, alignment: number): Uint8Array {
    checkAllocateBuffer(capacity, alignment);
    return this.#addon.allocateBuffer(capacity, alignment);
  }

  eventfd(): number {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the epoll backend is closed');
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
    // Native close cancels what is in flight, abandons pool jobs stuck in a system call (an open,
    // close or fsync at once, a read or write after a grace period of waiting: see
    // native/epoll.h), closes the fds of finished opens/accepts nobody will reap, and closes its
    // own fds. It never waits for a system call that does not return.
    this.#native.close();
    this.#qLen = 0;
    this.#local = [];
    this.#vecLens.length = 0;
    this.#slots.clear();
  }
}

/** Drops the objects a failed encoding pushed: the batch's objects are the first `from` again. */
function dropObjectsFrom(objs: FlushObjects, from: number): void {
  for (let i = from; i < objs.count; i++) objs.list[i] = undefined;
  objs.count = from;
}

function byteLengthOf(b: Uint8Array): number {
  return b.byteLength;
}

/** Whether every buffer is still at least as long as it was at submit (a detached one is 0 long). */
function sameOrLonger(buffers: Uint8Array[], lens: number[]): boolean {
  if (buffers.length !== lens.length) return false;
  for (let i = 0; i < lens.length; i++) {
    if (buffers[i]!.byteLength < lens[i]!) return false;
  }
  return true;
}

/** This package as a {@link BackendModule} (what core's loader checks for). */
export const backendModule: BackendModule = { createBackend, isSupported };
