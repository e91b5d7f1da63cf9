import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  InvalidArgumentError,
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
import type { NativeEpollAddon, NativeEpollBackend } from './native.js';

/**
 * `@miniss/backend-epoll`: the readiness-model backend for Linux.
 *
 * Operations are queued in JS by {@link EpollBackend.submit}, written as fixed-size descriptors
 * into one `ArrayBuffer` shared with the addon (created once), and started by
 * {@link EpollBackend.flush} with one call into native code per batch; the buffers of the batch
 * travel as one JS array in that call. Native code tries each socket operation right away with a
 * non-blocking system call and waits for epoll readiness only on EAGAIN; file operations that
 * could block go to a small native thread pool (see native/epoll.h and the README). Finished
 * operations are written as (id, result) pairs into a second shared buffer by one `reap` call.
 */

// Keep in sync with enum OpCode in native/op.h.
const OPCODES = {
  nop: 0,
  timeout: 1,
  read: 2,
  write: 3,
  readv: 4,
  writev: 5,
  fsync: 6,
  open: 7,
  close: 8,
  socket: 9,
  listen: 10,
  accept: 11,
  connect: 12,
  recv: 13,
  send: 14,
  shutdown: 15,
} as const satisfies Record<IoOperation['op'], number>;

/** Words per descriptor; mirrored in native/binding.cc. */
const SQ_INTS = 8;
const SQ_DOUBLES = 2;
/** read(2)/write(2) never move more than this in one call on Linux; larger lengths are clamped (a short result). */
const MAX_IO = 0x7ffff000;
const ECANCELED = osConstants.errno.ECANCELED;

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
}

/** Options of {@link createBackend}: the shared {@link BackendOptions} plus the thread pool size. */
export interface EpollBackendOptions extends BackendOptions {
  /** Threads of the native pool that runs blocking file operations (started on first use). Default 2. */
  poolThreads?: number;
}

// -------------------------------------------------------------------------------------------------
// Loading the addon

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const ADDON = 'miniss_epoll.node';
let loaded: { addon: NativeEpollAddon } | { error: string } | undefined;

function loadAddon(): { addon: NativeEpollAddon } | { error: string } {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    loaded = { error: `epoll is a Linux API and this is ${process.platform}; use the kqueue backend (macOS/BSD) or 'node'` };
    return loaded;
  }
  const tried: string[] = [];
  for (const p of [join(packageRoot, 'build', 'Release', ADDON), join(packageRoot, 'build', 'Debug', ADDON)]) {
    if (!existsSync(p)) {
      tried.push(`${p} (not found)`);
      continue;
    }
    try {
      loaded = { addon: require(p) as NativeEpollAddon };
      return loaded;
    } catch (err) {
      tried.push(`${p} (${(err as Error)?.message ?? String(err)})`);
    }
  }
  loaded = {
    error:
      `the epoll addon is not built or failed to load; tried ${tried.join('; ')}. ` +
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

function positiveInt(v: unknown, name: string, dflt: number, max: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer between 1 and ${max}, got ${String(v)}`);
  }
  return v;
}

function int32OrBad(fd: number): number {
  // An fd that does not fit in 32 bits is no fd at all: -1 makes the kernel say EBADF.
  return (fd | 0) === fd ? fd : -1;
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

  /** Submitted, not yet flushed (parallel arrays). */
  #qIds: number[] = [];
  #qOps: IoOperation[] = [];
  /** Every operation submitted and not yet returned by poll. */
  readonly #live = new Map<IoHandleId, IoOperation>();
  /** Completions made in JS (cancelled before they were flushed). */
  #local: IoCompletion[] = [];
  /** Buffers and strings of the batch being flushed. */
  readonly #objs: unknown[] = [];
  #nextId = 1;
  #cb: (() => void) | null = null;
  #fireScheduled = false;
  #closed = false;

  constructor(options: EpollBackendOptions = {}) {
    const loadedAddon = loadAddon();
    if ('error' in loadedAddon) throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'epoll' is unavailable: ${loadedAddon.error}`);
    this.#addon = loadedAddon.addon;
    const entries = positiveInt(options.entries, 'entries', 256, 65536);
    this.maxBatchSize = positiveInt(options.maxBatchSize, 'maxBatchSize', 128, 65536);
    const poolThreads = positiveInt(options.poolThreads, 'poolThreads', 2, 64);
    const sqCap = this.maxBatchSize;
    this.#cqCap = Math.max(entries, this.maxBatchSize);
    const sq = new ArrayBuffer(sqCap * (SQ_INTS * 4 + SQ_DOUBLES * 8));
    const cq = new ArrayBuffer(this.#cqCap * 16);
    this.#sqI = new Int32Array(sq, 0, sqCap * SQ_INTS);
    this.#sqF = new Float64Array(sq, sqCap * SQ_INTS * 4, sqCap * SQ_DOUBLES);
    this.#cq = new Float64Array(cq);
    const onEvent = (): void => {
      if (!this.#closed && this.#cb !== null) this.#cb();
    };
    try {
      this.#native = new this.#addon.EpollBackend(sq, cq, sqCap, this.#cqCap, entries, poolThreads, onEvent);
    } catch (err) {
      const e = err as { errno?: number; syscall?: string; message?: string };
      throw new RuntimeError('BACKEND_UNAVAILABLE', `backend 'epoll' could not start: ${e?.message ?? String(err)}`, { cause: err });
    }
  }

  get inFlight(): number {
    return this.#live.size;
  }

  submit(op: IoOperation): IoHandleId {
    if (this.#closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the epoll backend is closed: no more operations can be submitted');
    validateOperation(op);
    const id = this.#nextId++;
    this.#live.set(id, op);
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
    // Take the queue first: nothing below calls back into user code, but keep it re-entrant.
    this.#qIds = [];
    this.#qOps = [];
    let done = 0;
    let ready = 0;
    while (done < total) {
      const n = Math.min(this.maxBatchSize, total - done);
      const objs = this.#objs;
      objs.length = 0;
      for (let i = 0; i < n; i++) this.#encode(i, ids[done + i]!, ops[done + i]!);
      ready = this.#native.flush(n, objs);
      objs.length = 0; // the addon pinned what it needs
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
        I[b + 5] = objs.push(bytesOf(op.buffer)) - 1;
        F[slot * SQ_DOUBLES + 1] = op.offset;
        break;
      case 'recv':
      case 'send':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = Math.min(op.len, MAX_IO);
        I[b + 5] = objs.push(bytesOf(op.buffer)) - 1;
        break;
      case 'readv':
      case 'writev':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 5] = objs.length;
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
        I[b + 5] = objs.push(op.path) - 1;
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
        I[b + 5] = objs.push(op.addr.host) - 1;
        break;
      case 'connect':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 3] = op.addr.port;
        I[b + 5] = objs.push(op.addr.host) - 1;
        break;
      case 'shutdown':
        I[b + 1] = int32OrBad(op.fd);
        I[b + 2] = op.how;
        break;
    }
  }

  cancel(id: IoHandleId): boolean {
    if (this.#closed) return false;
    const op = this.#live.get(id);
    if (op === undefined) return false;
    const queued = this.#qIds.indexOf(id);
    if (queued >= 0) {
      // Not flushed yet: it never reaches the kernel.
      this.#qIds.splice(queued, 1);
      this.#qOps.splice(queued, 1);
      this.#local.push({ handle: id, result: this.#error(op, -ECANCELED), buffer: handleOf(op) });
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
      for (const c of out) this.#live.delete(c.handle);
    }
    const wait = out === null && timeoutMs > 0 ? timeoutMs : 0;
    const n = this.#native.reap(wait);
    if (n === 0) return out ?? NO_COMPLETIONS;
    out ??= [];
    const cq = this.#cq;
    for (let i = 0; i < n; i++) {
      const id = cq[2 * i]!;
      const r = cq[2 * i + 1]!;
      const op = this.#live.get(id);
      if (op === undefined) continue; // cannot happen: ids are unique per instance
      this.#live.delete(id);
      out.push({ handle: id, result: r >= 0 ? r : this.#error(op, r), buffer: handleOf(op) });
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

  #error(op: IoOperation, errno: number): Error {
    switch (op.op) {
      case 'open':
        return ioErrorFromErrno(errno, 'open', { path: op.path });
      case 'listen':
      case 'connect':
        return ioErrorFromErrno(errno, op.op, { address: op.addr.host, port: op.addr.port });
      case 'nop':
      case 'timeout':
      case 'socket':
        return ioErrorFromErrno(errno, op.op);
      default:
        return ioErrorFromErrno(errno, op.op, { fd: op.fd });
    }
  }

  address(fd: number, which: 'local' | 'peer'): SocketAddress {
    if (which !== 'local' && which !== 'peer') throw new InvalidArgumentError(`address: which must be 'local' or 'peer', got ${String(which)}`);
    if (!Number.isInteger(fd)) throw new InvalidArgumentError(`address: fd must be an integer, got ${String(fd)}`);
    const r = this.#addon.address(int32OrBad(fd), which === 'peer');
    if (typeof r === 'number') throw ioErrorFromErrno(r, which === 'peer' ? 'getpeername' : 'getsockname', { fd });
    return { family: r[0], port: r[1], host: r[2] };
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
    };
  }

  allocateBuffer(capacity: number, alignment: number): Uint8Array {
    if (!Number.isInteger(capacity) || capacity < 0 || capacity > 2 ** 30) {
      throw new InvalidArgumentError(`allocateBuffer: capacity must be an integer between 0 and 1 GiB, got ${String(capacity)}`);
    }
    if (!Number.isInteger(alignment) || alignment < 1 || alignment > 2 ** 20 || (alignment & (alignment - 1)) !== 0) {
      throw new InvalidArgumentError(`allocateBuffer: alignment must be a power of two up to 1 MiB, got ${String(alignment)}`);
    }
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
    // Native close cancels what is in flight, waits for pool threads inside a system call,
    // closes the fds of finished opens/accepts nobody will reap, and closes its own fds.
    this.#native.close();
    this.#qIds = [];
    this.#qOps = [];
    this.#local = [];
    this.#live.clear();
  }
}

function handleOf(op: IoOperation): BufferHandle | undefined {
  if ('buffer' in op && !(op.buffer instanceof Uint8Array)) return op.buffer;
  return undefined;
}

/** This package as a {@link BackendModule} (what core's loader checks for). */
export const backendModule: BackendModule = { createBackend, isSupported };
