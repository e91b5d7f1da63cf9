import { constants as osConstants } from 'node:os';
import {
  FlushObjects,
  NATIVE_OP_CODES,
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
import type { NativeKqueueAddon, NativeKqueueBackend } from './native.js';

/**
 * `@miniss/backend-kqueue`: the readiness-model backend for macOS, FreeBSD, OpenBSD and NetBSD
 * (kqueue(2)/kevent(2)). The same JS driver as `@miniss/backend-epoll`, over a kevent reactor.
 *
 * Operations are queued in JS by {@link KqueueBackend.submit}, written as fixed-size descriptors
 * into one `ArrayBuffer` shared with the addon (created once), and started by
 * {@link KqueueBackend.flush} with one call into native code per batch; the buffers of the batch
 * travel as one JS array in that call. Native code tries each socket operation right away with a
 * non-blocking system call and waits for EVFILT_READ/EVFILT_WRITE readiness only on EAGAIN; every
 * regular-file operation goes to a small native thread pool, whose completions wake the kqueue
 * through an EVFILT_USER event (see native/kqueue.h and the README). Finished operations are
 * written as (id, result) pairs into a second shared buffer by one `reap` call.
 *
 * Where this has run: see README.md ("What has been run"). On Linux it loads only when the addon
 * was built against a kqueue emulation library (MINISS_KQUEUE_INCLUDE_DIR/MINISS_KQUEUE_LIB_DIR).
 */

// The numbering native code reads (enum OpCode in native code; see NATIVE_OP_CODES in @miniss/core).
const OPCODES = NATIVE_OP_CODES;

/** Words per descriptor; mirrored in native/binding.cc. */
const SQ_INTS = 8;
const SQ_DOUBLES = 2;
/**
 * Larger lengths are clamped (a short result, which callers loop on): read(2)/write(2) take at
 * most INT_MAX bytes on macOS (EINVAL above it) and 0x7ffff000 on Linux.
 */
const MAX_IO = 0x7ffff000;
const ECANCELED = osConstants.errno.ECANCELED;
const EINVAL = osConstants.errno.EINVAL;

/** Counters of one backend instance, for tests and benchmarks. */
export interface KqueueStats {
  /** Operations handed to native code. */
  submitted: number;
  /** Finished by the first system call, without waiting (includes errors such as EBADF). */
  immediate: number;
  /** Had to wait for kqueue readiness (EAGAIN / EINPROGRESS first). */
  waited: number;
  /** Ran on the native thread pool (every regular-file read/write, fsync, open, non-socket close). */
  pool: number;
  /** kevent() calls that changed the set (filter adds, timer arming): about one per connection and side. */
  keventChanges: number;
  /** kevent() calls that collected events. */
  keventWait: number;
}

/** Options of {@link createBackend}: the shared {@link BackendOptions} plus the thread pool size. */
export interface KqueueBackendOptions extends BackendOptions {
  /** Threads of the native pool that runs blocking file operations (started on first use). Default 2. */
  poolThreads?: number;
}

// -------------------------------------------------------------------------------------------------
// Loading the addon

const ADDON = 'miniss_kqueue.node';
/** Where kqueue is the kernel's own API. */
const KQUEUE_PLATFORMS: readonly string[] = ['darwin', 'freebsd', 'openbsd', 'netbsd'];
let loaded: { addon: NativeKqueueAddon } | { error: string } | undefined;

function loadAddon(): { addon: NativeKqueueAddon } | { error: string } {
  if (loaded !== undefined) return loaded;
  const platform = process.platform;
  const nativeKqueue = KQUEUE_PLATFORMS.includes(platform);
  const r = nativeKqueue || platform === 'linux' ? requireNativeAddon<NativeKqueueAddon>(import.meta.url, ADDON) : { tried: [] };
  if ('addon' in r) {
    loaded = r;
    return loaded;
  }
  if (!nativeKqueue && r.tried.every((t) => t.endsWith(' (not found)'))) {
    // Plain Linux (and every other OS): the install compiled nothing, on purpose.
    loaded = {
      error:
        `kqueue is a BSD/macOS API (kqueue(2)/kevent(2)) and this is ${platform}; use the 'epoll' or 'io_uring' backend here. ` +
        'To exercise the kqueue code on Linux, build it against a kqueue emulation library (libkqueue): ' +
        'MINISS_KQUEUE_INCLUDE_DIR=<dir with sys/event.h> MINISS_KQUEUE_LIB_DIR=<dir with libkqueue.so> npm rebuild @miniss/backend-kqueue',
    };
    return loaded;
  }
  loaded = {
    error:
      `the kqueue addon is not built or failed to load; tried ${r.tried.join('; ')}. ` +
      (nativeKqueue
        ? 'Build it with: npm rebuild @miniss/backend-kqueue (needs python3, make and a C++ compiler)'
        : 'It was built against a kqueue emulation library that no longer loads; rebuild with MINISS_KQUEUE_INCLUDE_DIR/MINISS_KQUEUE_LIB_DIR set, or delete its build/ directory'),
  };
  return loaded;
}

/** Whether this OS and build can run the kqueue backend, and why not. Creates nothing that outlives the call. */
export function isSupported(): { ok: boolean; reason?: string } {
  const r = loadAddon();
  if ('error' in r) return { ok: false, reason: r.error };
  const probe = r.addon.probe();
  if (probe < 0) {
    return { ok: false, reason: `kqueue() failed here: ${ioErrorFromErrno(probe, 'kqueue').code}` };
  }
  return { ok: true };
}

/** Creates one kqueue backend for the calling thread. Throws `BACKEND_UNAVAILABLE` with the reason when unsupported. */
export function createBackend(options: KqueueBackendOptions = {}): KqueueBackend {
  return new KqueueBackend(options);
}

// -------------------------------------------------------------------------------------------------

/**
 * The kqueue {@link IoBackend}. One per thread (per runtime); see the module comment.
 *
 * `directIo` is false: macOS has no `O_DIRECT` (its `F_NOCACHE` is not wired up) and O_DIRECT on
 * the BSDs has never been exercised by this package. `allocateBuffer` still gives aligned native
 * memory to the runtime's buffer pool.
 */
export class KqueueBackend implements IoBackend {
  readonly name = 'kqueue' as const;
  readonly features: IoBackendFeatures = Object.freeze({ directIo: false, batchSubmit: true, vectoredIo: true, sqpoll: false });
  readonly maxBatchSize: number;

  readonly #addon: NativeKqueueAddon;
  readonly #native: NativeKqueueBackend;
  readonly #sqI: Int32Array;
  readonly #sqF: Float64Array;
  readonly #cq: Float64Array;
  readonly #cqCap: number;

  /** Submitted, not yet flushed (parallel arrays). */
  #qIds: number[] = [];
  #qOps: IoOperation[] = [];
  /** Every operation submitted and not yet returned by poll, by id (core's OpSlots, as on epoll and io_uring). */
  readonly #slots = new OpSlots<IoOperation>('kqueue');
  /** Completions made in JS (cancelled before they were flushed). */
  #local: IoCompletion[] = [];
  /** Buffers and strings of the batch being flushed. */
  readonly #objs = new FlushObjects();
  #cb: (() => void) | null = null;
  #fireScheduled = false;
  #closed = false;

  constructor(options: KqueueBackendOptions = {}) {
    const loadedAddon = loadAddon();
    if ('error' in loadedAddon) throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'kqueue' is unavailable: ${loadedAddon.error}`);
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
    // The addon keeps onEvent in an internal field of the native object (#native), not in a GC
    // root, and holds that object strongly only while operations are in flight (native-common's
    // addon.h, Instance::UpdateRef): a backend with operations in flight stays alive however it
    // is referenced, an idle one dropped without close() is collected and its destructor closes
    // the kqueue and the pool threads.
    const onEvent = (): void => {
      if (!this.#closed && this.#cb !== null) this.#cb();
    };
    try {
      this.#native = new this.#addon.KqueueBackend(sq, cq, sqCap, this.#cqCap, entries, poolThreads, onEvent);
    } catch (err) {
      const e = err as { errno?: number; syscall?: string; message?: string };
      throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'kqueue' could not start: ${e?.message ?? String(err)}`, { cause: err });
    }
  }

  get inFlight(): number {
    return this.#slots.live;
  }

  submit(op: IoOperation): IoHandleId {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the kqueue backend is closed: no more operations can be submitted');
    validateOperation(op);
    const id = this.#slots.add(op);
    this.#qIds.push(id);
    this.#qOps.push(op);
    return id;
  }

  flush(): number {
    if (this.#closed) return 0;
    const ids = this.#qIds;
    const ops = this.#qOps;
    const total = ids.length;
    if (total === 0) return 0;
    // Take the queue first: encoding reads the operations again, and an operation is user data
    // (a getter could submit, or throw: see the catch below).
    this.#qIds = [];
    this.#qOps = [];
    let done = 0;
    let ready = 0;
    while (done < total) {
      const n = Math.min(this.maxBatchSize, total - done);
      const objs = this.#objs;
      objs.clear();
      // k: descriptors written (an operation that fails to encode takes none).
      let k = 0;
      for (let i = 0; i < n; i++) {
        const id = ids[done + i]!;
        const before = objs.count;
        try {
          this.#encode(k, id, ops[done + i]!);
          k++;
        } catch {
          // The operation changed after submit so that it no longer encodes (a getter that
          // throws, a buffer that is no longer one): it alone fails, with EINVAL; the rest of the
          // batch goes on. Before, the whole batch was dropped, never to complete.
          for (let j = before; j < objs.count; j++) objs.list[j] = undefined;
          objs.count = before;
          this.#local.push({ handle: id, result: ioErrorForOperation(ops[done + i]!, -EINVAL), buffer: bufferHandleOf(ops[done + i]!) });
          this.#scheduleFire();
        }
      }
      try {
        if (k > 0) ready = this.#native.flush(k, objs.exact());
      } finally {
        objs.clear(); // the addon pinned what it needs
      }
      done += n;
    }
    if (ready > 0) this.#scheduleFire();
    return total;
  }

  #encode(slot: number, id: number, op: IoOperation): void {
    const I = this.#sqI;
    const F = this.#sqF;
    const objs = this.#objs;
    const b = slot * SQ_INTS;
    I[b] = OPCODES[op.op];
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
        break;
      case 'timeout':
        F[slot * SQ_DOUBLES + 1] = op.ms;
        break;
      case 'read':
      case 'write':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = objs.push(bytesOf(op.buffer));
        F[slot * SQ_DOUBLES + 1] = op.offset;
        break;
      case 'recv':
      case 'send':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = objs.push(bytesOf(op.buffer));
        break;
      case 'readv':
      case 'writev':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 5] = objs.count;
        I[b + 6] = op.buffers.length;
        for (const buf of op.buffers) objs.push(buf);
        F[slot * SQ_DOUBLES + 1] = op.offset;
        break;
      case 'fsync':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.datasync === true ? 1 : 0;
        break;
      case 'open':
        I[b + 2] = op.flags | 0;
        I[b + 3] = op.mode | 0;
        I[b + 5] = objs.push(op.path);
        break;
      case 'close':
      case 'accept':
        I[b + 1] = int32OrBad(op.fd);
        break;
      case 'socket':
        I[b + 2] = op.family;
        break;
      case 'listen':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.backlog, 0x7fffffff);
        I[b + 3] = op.addr.port;
        I[b + 4] = op.reusePort ? 1 : 0;
        I[b + 5] = objs.push(op.addr.host);
        break;
      case 'connect':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 3] = op.addr.port;
        I[b + 5] = objs.push(op.addr.host);
        break;
      case 'shutdown':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.how;
        break;
    }
  }

  cancel(id: IoHandleId): boolean {
    if (this.#closed) return false;
    const op = this.#slots.get(id);
    if (op === undefined) return false;
    const queued = this.#qIds.indexOf(id);
    if (queued >= 0) {
      // Not flushed yet: it never reaches the kernel.
      this.#qIds.splice(queued, 1);
      this.#qOps.splice(queued, 1);
      this.#local.push({ handle: id, result: ioErrorForOperation(op, -ECANCELED), buffer: bufferHandleOf(op) });
      this.#scheduleFire();
      return true;
    }
    if (this.#local.some((c) => c.handle === id)) return false;
    const r = this.#native.cancel(id);
    if (r) this.#scheduleFire();
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
    const n = this.#native.reap(wait);
    if (n === 0) return out ?? NO_COMPLETIONS;
    out ??= [];
    const cq = this.#cq;
    for (let i = 0; i < n; i++) {
      const id = cq[2 * i]! | 0;
      const r = cq[2 * i + 1]!;
      const op = this.#slots.release(id);
      if (op === undefined) continue; // cannot happen: a completion's id is live
      // The slot is released: nothing may throw before the return, or every completion of this
      // reap is lost (an operation's own fields can: a getter, see ioErrorForOperation in @miniss/core).
      out.push({ handle: id, result: r >= 0 ? r : ioErrorForOperation(op, r), buffer: bufferHandleOf(op) });
    }
    return out;
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
    if (!this.#closed && this.#cb !== null) this.#cb();
  };

  address(fd: number, which: 'local' | 'peer'): SocketAddress {
    return nativeSocketAddress((f, peer) => this.#addon.address(f, peer), fd, which);
  }

  /** Counters since creation (all zero after close). */
  stats(): KqueueStats {
    const s = this.#closed ? [] : this.#native.stats();
    return {
      submitted: s[0] ?? 0,
      immediate: s[1] ?? 0,
      waited: s[2] ?? 0,
      pool: s[3] ?? 0,
      keventChanges: s[4] ?? 0,
      keventWait: s[5] ?? 0,
    };
  }

  allocateBuffer(capacity: number, alignment: number): Uint8Array {
    checkAllocateBuffer(capacity, alignment);
    return this.#addon.allocateBuffer(capacity, alignment);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cb = null;
    // Native close cancels what is in flight, waits for pool threads inside a system call,
    // closes the fds of finished opens/accepts nobody will reap, and closes its own fds.
    this.#native.close();
    this.#qIds = [];
    this.#qOps = [];
    this.#local = [];
    this.#slots.clear();
  }
}

/** This package as a {@link BackendModule} (what core's loader checks for). */
export const backendModule: BackendModule = { createBackend, isSupported };
