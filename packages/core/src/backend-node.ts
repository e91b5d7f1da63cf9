import * as fs from 'node:fs';
import * as net from 'node:net';
import {
  MAX_TIMER_MS,
  NO_COMPLETIONS,
  type BufferHandle,
  type IoBackend,
  type IoBackendFeatures,
  type IoBuffer,
  type IoCompletion,
  type IoHandleId,
  type IoOperation,
  type IoOpName,
  type SocketAddress,
} from './backend.js';
import { IoError, RuntimeError, ioErrorFromCode, ioErrorFromErrno, toIoError, type IoErrorDetails } from './errors.js';
import { bytesOf, validateOperation } from './io-operation.js';

/**
 * Sockets of this backend live in their own fd space, starting here (2^30). `node:net` has no
 * portable way to hand out or adopt a kernel fd, so `socket`/`accept` return a virtual number
 * mapped to a `net.Socket`/`net.Server` inside the backend. Such numbers are only meaningful to
 * the backend instance that made them; passed to `node:fs` they are simply `EBADF`. Files use
 * real kernel fds (from `fs.open`).
 */
export const NODE_VIRTUAL_FD_BASE = 0x40000000;

/** Bytes a stream may buffer with no `recv` waiting before the socket is paused (back-pressure). */
const RECV_HIGH_WATER = 256 * 1024;

/** Default for `listen` when backlog is 0: the same as Node's. */
const DEFAULT_BACKLOG = 511;


/**
 * `reusePort` reached `net.Server#listen` in Node 22.12 / 23.1. Older versions ignore the option,
 * so on them a second listener on the same port fails with `EADDRINUSE`; the error then says why.
 */
const NODE_HAS_REUSEPORT = (() => {
  const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
})();

function noop(): void {}

/** One submitted operation. A single shape for every kind keeps property access monomorphic. */
class Op {
  done = false;
  cancelRequested = false;
  /** Undoes a wait (socket and timer ops) and completes with ECANCELED; null when the work cannot be stopped. */
  cancel: (() => void) | null = null;
  /** recv: where the bytes go. */
  bytes: Uint8Array | null = null;
  len = 0;
  timer: ReturnType<typeof setTimeout> | ReturnType<typeof setImmediate> | null = null;
  constructor(
    readonly id: IoHandleId,
    readonly kind: IoOpName,
    readonly fd: number,
    readonly handle: BufferHandle | undefined,
  ) {}
}

type SockState = 'new' | 'listening' | 'connecting' | 'stream' | 'failed';

/** A virtual socket fd: nothing yet, a listening `net.Server`, or a connected `net.Socket`. */
class SockRec {
  state: SockState = 'new';
  server: net.Server | null = null;
  socket: net.Socket | null = null;
  /** Operations waiting on this socket; the Node handle is referenced only while this is > 0. */
  waiting = 0;
  local: SocketAddress | null = null;
  peer: SocketAddress | null = null;
  // listener
  backlog = DEFAULT_BACKLOG;
  acceptWaiters: Op[] = [];
  incoming: SockRec[] = [];
  // stream
  chunks: Buffer[] = [];
  queued = 0;
  paused = true;
  /** Nothing more will be read: the peer's FIN, an error, or the socket was destroyed. */
  eof = false;
  readShut = false;
  /** `shutdown` how 0 is collecting what the kernel had already received (see `_shutRead`). */
  readSettling = false;
  /**
   * The socket's pending error, not reported yet: like the kernel's `SO_ERROR`, it goes to the
   * first recv or send that looks, once; later recvs return 0 and later sends `EPIPE`.
   */
  error: IoError | null = null;
  /** The last error a send's write callback reported (Node emits the same object as 'error' after it). */
  reported: Error | null = null;
  recvWaiters: Op[] = [];
  sends: Set<Op> | null = null;
  /** A write handed to Node whose callback has not come yet (at most one at a time, see `_send`). */
  writing = false;
  /** Sends (and a write-side shutdown) waiting for `writing` to end, oldest first. */
  writeQ: Array<{ op: Op; start: () => void }> | null = null;
  /** The last operation touching this socket that can be in flight (connect/listen/shutdown). */
  other: Op | null = null;
  constructor(
    public fd: number,
    readonly family: 4 | 6,
  ) {}
}

function familyOf(f: unknown): 4 | 6 {
  return f === 'IPv6' || f === 6 ? 6 : 4;
}

/**
 * Turns what `node:fs`/`node:net` throw or emit into an `IoError`. Node's own stream errors
 * (`ERR_STREAM_DESTROYED`, `ERR_STREAM_WRITE_AFTER_END`, ...) have no errno; they map to
 * `fallback` (EPIPE for writes, EBADF for a bad fd argument).
 */
function sysError(err: unknown, syscall: string, details: IoErrorDetails, fallback: string): IoError {
  const out = toIoError(err, syscall, details);
  if (out instanceof IoError) return out;
  const e = ioErrorFromCode(fallback, syscall, details);
  (e as { cause?: unknown }).cause = err;
  return e;
}

/**
 * {@link sysError} named after the operation that failed, not the call Node made for it: a
 * failed `send` is `syscall: 'send'` (Node says `'write'`), as the native backends report it.
 */
function opError(err: unknown, syscall: string, details: IoErrorDetails, fallback: string): IoError {
  const e = sysError(err, syscall, details, fallback);
  if (e.syscall === syscall) return e;
  const out = e.errno !== 0 ? ioErrorFromErrno(e.errno, syscall, details) : ioErrorFromCode(e.code, syscall, details);
  (out as { cause?: unknown }).cause = err;
  return out;
}

/**
 * The portable backend: the {@link IoBackend} contract on top of `node:fs` and `node:net`, so a
 * runtime works on every OS Node runs on. It is the baseline the native backends are measured
 * against, not a fast path.
 *
 * How it maps the contract:
 * - `submit` starts the operation at once (there is no kernel queue to batch into), so `flush`
 *   returns 0. Results go to a ready list; one `onReady` call per burst of completions is
 *   scheduled with `queueMicrotask` from the Node callback that produced them, never from inside
 *   `submit`.
 * - `poll(timeoutMs)` returns and clears the ready list. It cannot block: completions arrive
 *   through Node's event loop, which cannot run while `poll` holds the thread, so a positive
 *   timeout behaves like 0.
 * - Files use real fds and the callback API of `node:fs` (libuv's threadpool); `readv`/`writev`
 *   are `fs.readv`/`fs.writev`, one vectored system call each (`readv` of no buffers gives 0, as
 *   `preadv(2)` does; libuv would refuse it). A `close` of a file fd with
 *   operations still running on it waits for them: closing the number while the threadpool still
 *   uses it could make them hit a file opened later under the same number.
 * - `timeout` is a `setTimeout`; one longer than 2^31-1 ms is armed in steps (Node would fire it
 *   after 1 ms), so it never completes early.
 * - Sockets have virtual fds (see {@link NODE_VIRTUAL_FD_BASE}). `recv` copies from the chunks
 *   Node reads (one copy; `node:net` offers no read-into-my-buffer for accepted sockets); bytes no
 *   `recv` asked for stay queued for the next one, and the socket is paused once
 *   256 KiB are queued so a peer cannot make us buffer without bound. `send` completes when Node's
 *   write callback says the bytes reached the kernel, so the result is always the full length.
 *   `shutdown` how 1 is `socket.end()`; how 0 ends the read side locally as Linux's `SHUT_RD`
 *   does: bytes already received (also those still in the kernel, see `_shutRead`) are returned,
 *   then recv gives 0 at once.
 * - Socket errors follow the kernel's: an error (a reset) is reported once, to the first recv or
 *   send that looks (`ECONNRESET`), after which recv returns 0 and send fails with `EPIPE`; a
 *   failed send does not make recv fail. Errors name the operation (`syscall: 'send'`), not the
 *   call Node made (`'write'`).
 * - Memory: this backend cannot pin a caller's buffer as the native ones do. A recv whose buffer
 *   was detached (transferred) or shrunk while it waited completes with `EFAULT` and leaves the
 *   bytes queued for the next recv. A send's bytes are copied before Node gets them (it may keep
 *   them in its stream buffer, and a cancelled send must leave the caller's buffer alone).
 * - `reusePort` is passed to `net.Server#listen`, which honours it from Node 22.12/23.1 on. On
 *   older Node (20.x) it is ignored by Node: the first listener works, a second one on the same
 *   port fails with `EADDRINUSE` whose message says so. Use the io_uring or epoll backend for
 *   one listener per core.
 * - Incoming connections are accepted by libuv as they arrive and queued (paused, unreferenced)
 *   until `accept` takes them; past `backlog` queued connections, new ones are reset.
 *
 * Cancellation: waits (`accept`, `recv`, `connect`, `timeout`, `nop`) are withdrawn and complete
 * with `ECANCELED`. A `send` whose bytes were handed to the socket cannot be taken back: it
 * completes with `ECANCELED` at once, but the bytes already queued (a copy: the caller's buffer
 * is free from then on) still go out in order (nothing is reordered or lost, only the count is
 * unknown). One write is in Node at a time per socket; sends behind it wait in this backend,
 * where a cancel drops them, so aborted retries cannot pile copies up in Node's buffer. File operations cannot be stopped once
 * started (libuv runs them on its threadpool and Node exposes no `uv_cancel`): `cancel` returns
 * true and the operation completes with its real result when the system call returns, keeping
 * its buffer until then.
 *
 * Liveness: a pending fs request, timer or immediate holds the loop by itself; a socket or server
 * is referenced only while an operation waits on it, so an idle listener or an idle connection
 * does not keep the process alive.
 *
 * `close()` destroys every socket and server this backend created, closes the files it opened,
 * withdraws waiting operations and drops completions nobody polled (`inFlight` counts only file
 * requests still running in the threadpool), and is idempotent. File operations still running
 * complete when they finish; their fds are closed then.
 */
export class NodeBackend implements IoBackend {
  readonly name = 'node' as const;
  readonly features: IoBackendFeatures = Object.freeze({ directIo: false, batchSubmit: false, vectoredIo: true, sqpoll: false });
  readonly maxBatchSize: number;

  private _nextId = 1;
  private _nextVfd = NODE_VIRTUAL_FD_BASE;
  private _inFlight = 0;
  private _closed = false;
  private readonly _ops = new Map<IoHandleId, Op>();
  private _ready: IoCompletion[] = [];
  private _onReady: (() => void) | null = null;
  private _notifyScheduled = false;
  private readonly _notifyBound = () => this._notify();
  private readonly _socks = new Map<number, SockRec>();
  /** File fds opened through this backend and not closed yet. */
  private readonly _files = new Set<number>();
  /** File fds with fs requests running on them, and how many. */
  private readonly _fsBusy = new Map<number, number>();
  /** `close` operations waiting for their fd's fs requests to finish. */
  private readonly _closeWhenIdle = new Map<number, Op | null>();

  constructor(options: { maxBatchSize?: number } = {}) {
    const m = options.maxBatchSize ?? 128;
    if (!Number.isInteger(m) || m <= 0) throw new RuntimeError('INVALID_CONFIG', `maxBatchSize must be a positive integer, got ${String(m)}`);
    this.maxBatchSize = m;
  }

  get inFlight(): number {
    return this._inFlight;
  }

  /** Sockets and servers currently open in this backend (for tests and `miniss doctor`). */
  get openSockets(): number {
    return this._socks.size;
  }

  onReady(cb: (() => void) | null): void {
    this._onReady = cb;
    if (cb !== null && this._ready.length > 0) this._schedule();
  }

  flush(): number {
    return 0;
  }

  poll(_timeoutMs = 0): IoCompletion[] {
    const r = this._ready;
    if (r.length === 0) return NO_COMPLETIONS;
    this._ready = [];
    this._inFlight -= r.length;
    return r;
  }

  cancel(id: IoHandleId): boolean {
    const op = this._ops.get(id);
    if (op === undefined || op.done || op.cancelRequested) return false;
    op.cancelRequested = true;
    if (op.cancel !== null) op.cancel();
    return true;
  }

  submit(op: IoOperation): IoHandleId {
    if (this._closed) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the node backend is closed: no more operations');
    validateOperation(op);
    const id = this._nextId++;
    const fd = 'fd' in op ? op.fd : -1;
    const buffer: IoBuffer | undefined = 'buffer' in op ? op.buffer : undefined;
    const rec = new Op(id, op.op, fd, buffer !== undefined && !(buffer instanceof Uint8Array) ? buffer : undefined);
    this._ops.set(id, rec);
    this._inFlight++;
    switch (op.op) {
      case 'nop':
        rec.timer = setImmediate(() => this._complete(rec, 0));
        rec.cancel = () => {
          clearImmediate(rec.timer as ReturnType<typeof setImmediate>);
          this._cancelled(rec, 'nop');
        };
        break;
      case 'timeout':
        if (op.ms <= MAX_TIMER_MS) rec.timer = setTimeout(() => this._complete(rec, 0), op.ms);
        else this._longTimeout(rec, op.ms);
        rec.cancel = () => {
          clearTimeout(rec.timer as ReturnType<typeof setTimeout>);
          this._cancelled(rec, 'timeout');
        };
        break;
      case 'read':
      case 'write':
      case 'readv':
      case 'writev':
      case 'fsync':
        this._fsOp(rec, op);
        break;
      case 'open':
        this._open(rec, op.path, op.flags, op.mode);
        break;
      case 'close':
        this._close(rec, op.fd);
        break;
      case 'socket': {
        const vfd = this._nextVfd++;
        this._socks.set(vfd, new SockRec(vfd, op.family));
        this._complete(rec, vfd);
        break;
      }
      case 'listen':
        this._listen(rec, op.fd, op.addr, op.backlog, op.reusePort);
        break;
      case 'accept':
        this._accept(rec, op.fd);
        break;
      case 'connect':
        this._connect(rec, op.fd, op.addr);
        break;
      case 'recv':
        this._recv(rec, op.fd, bytesOf(op.buffer), op.len);
        break;
      case 'send':
        this._send(rec, op.fd, bytesOf(op.buffer), op.len);
        break;
      case 'shutdown':
        this._shutdown(rec, op.fd, op.how);
        break;
    }
    return id;
  }

  address(fd: number, which: 'local' | 'peer'): SocketAddress {
    const s = this._socks.get(fd);
    const syscall = which === 'local' ? 'getsockname' : 'getpeername';
    if (s === undefined) {
      throw ioErrorFromCode(this._files.has(fd) ? 'ENOTSOCK' : 'EBADF', syscall, { fd });
    }
    if (which === 'local') {
      if (s.local !== null) return { ...s.local };
      // An unbound socket's name is the wildcard address with port 0, as getsockname(2) says.
      return { host: s.family === 6 ? '::' : '0.0.0.0', port: 0, family: s.family };
    }
    if (s.peer === null) throw ioErrorFromCode('ENOTCONN', syscall, { fd });
    return { ...s.peer };
  }

  close(): void {
    if (this._closed) return;
    this._closed = true;
    for (const s of [...this._socks.values()]) this._closeSocket(s);
    this._socks.clear();
    for (const op of [...this._ops.values()]) {
      // Timers and immediates: withdraw. File requests keep running and complete on their own.
      if (op.cancel !== null) op.cancel();
    }
    this._inFlight -= this._ready.length;
    this._ready = [];
    for (const fd of this._files) {
      if (this._fsBusy.has(fd)) {
        if (!this._closeWhenIdle.has(fd)) this._closeWhenIdle.set(fd, null);
      } else {
        try {
          fs.closeSync(fd);
        } catch {
          /* already gone: nothing to release */
        }
      }
    }
    this._files.clear();
  }

  // ---------------------------------------------------------------------------------------------
  // Completion plumbing

  private _complete(op: Op, result: number | Error): void {
    if (op.done) return;
    op.done = true;
    op.bytes = null;
    this._ops.delete(op.id);
    if (this._closed) {
      // Nobody polls a closed backend: the operation is over, its completion is dropped.
      this._inFlight--;
      return;
    }
    const c: IoCompletion = { handle: op.id, result };
    if (op.handle !== undefined) c.buffer = op.handle;
    this._ready.push(c);
    this._schedule();
  }

  private _fail(op: Op, code: string, syscall: string, details: IoErrorDetails = {}): void {
    this._complete(op, ioErrorFromCode(code, syscall, details));
  }

  private _cancelled(op: Op, syscall: string): void {
    this._fail(op, 'ECANCELED', syscall, op.fd >= 0 ? { fd: op.fd } : {});
  }

  private _schedule(): void {
    if (this._notifyScheduled || this._onReady === null) return;
    this._notifyScheduled = true;
    queueMicrotask(this._notifyBound);
  }

  private _notify(): void {
    this._notifyScheduled = false;
    if (this._ready.length > 0 && this._onReady !== null) this._onReady();
  }

  /**
   * A timeout longer than one timer can be (see {@link MAX_TIMER_MS}): armed in steps of at most
   * that, re-armed until the whole delay has passed, so it never completes early.
   */
  private _longTimeout(rec: Op, ms: number): void {
    let left = ms;
    const step = (): void => {
      if (left <= 0) {
        this._complete(rec, 0);
        return;
      }
      const d = Math.min(left, MAX_TIMER_MS);
      left -= d;
      rec.timer = setTimeout(step, d);
    };
    step();
  }

  // ---------------------------------------------------------------------------------------------
  // Files

  private _fsStart(fd: number): boolean {
    if (this._closeWhenIdle.has(fd)) return false;
    this._fsBusy.set(fd, (this._fsBusy.get(fd) ?? 0) + 1);
    return true;
  }

  private _fsEnd(fd: number): void {
    const n = (this._fsBusy.get(fd) ?? 1) - 1;
    if (n > 0) {
      this._fsBusy.set(fd, n);
      return;
    }
    this._fsBusy.delete(fd);
    if (this._closeWhenIdle.has(fd)) {
      const closeOp = this._closeWhenIdle.get(fd)!;
      this._closeWhenIdle.delete(fd);
      if (closeOp !== null) this._fsClose(closeOp, fd);
      else fs.close(fd, noop);
    }
  }

  private _fsOp(rec: Op, op: Extract<IoOperation, { op: 'read' | 'write' | 'readv' | 'writev' | 'fsync' }>): void {
    const fd = op.fd;
    const syscall = op.op;
    if (fd < 0 || fd > 0x7fffffff || this._socks.has(fd)) {
      // Node validates fds synchronously; the kernel's answer to these is EBADF (or, for a
      // socket, the operation would act on a stream: refuse as a bad file descriptor here).
      this._fail(rec, 'EBADF', syscall, { fd });
      return;
    }
    if (!this._fsStart(fd)) {
      // A close of this fd is waiting for the requests already running: refuse new work.
      this._fail(rec, 'EBADF', syscall, { fd });
      return;
    }
    const done = (err: NodeJS.ErrnoException | null, n?: number) => {
      this._fsEnd(fd);
      if (err) this._complete(rec, opError(err, syscall, { fd }, 'EIO'));
      else this._complete(rec, n ?? 0);
    };
    try {
      switch (op.op) {
        case 'read':
          fs.read(fd, bytesOf(op.buffer), 0, op.len, op.offset < 0 ? null : op.offset, done);
          break;
        case 'write':
          fs.write(fd, bytesOf(op.buffer), 0, op.len, op.offset < 0 ? null : op.offset, done);
          break;
        case 'readv':
          // preadv(2) with no buffers reads nothing and returns 0 (what the native backends
          // report), but libuv refuses it with EINVAL. The fstat only checks the fd, as the
          // kernel would first. (fs.writev passes an empty list through: it already gives 0.)
          if (op.buffers.length === 0) fs.fstat(fd, (err) => done(err, 0));
          else fs.readv(fd, op.buffers, op.offset < 0 ? null : op.offset, done);
          break;
        case 'writev':
          fs.writev(fd, op.buffers, op.offset < 0 ? null : op.offset, done);
          break;
        case 'fsync':
          if (op.datasync) fs.fdatasync(fd, (err) => done(err, 0));
          else fs.fsync(fd, (err) => done(err, 0));
          break;
      }
    } catch (err) {
      // Node's own argument checks (they mirror validateOperation, so this is a safety net).
      this._fsEnd(fd);
      this._complete(rec, opError(err, syscall, { fd }, 'EINVAL'));
    }
  }

  private _open(rec: Op, path: string, flags: number, mode: number): void {
    try {
      fs.open(path, flags, mode, (err, fd) => {
        if (err) {
          this._complete(rec, sysError(err, 'open', { path }, 'EINVAL'));
          return;
        }
        if (this._closed) {
          // The backend closed while the open ran: nobody can use or close this fd any more.
          fs.close(fd, noop);
          this._complete(rec, ioErrorFromCode('ECANCELED', 'open', { path }));
          return;
        }
        this._files.add(fd);
        this._complete(rec, fd);
      });
    } catch (err) {
      this._complete(rec, sysError(err, 'open', { path }, 'EINVAL'));
    }
  }

  private _close(rec: Op, fd: number): void {
    const s = this._socks.get(fd);
    if (s !== undefined) {
      this._socks.delete(fd);
      this._closeSocket(s);
      this._complete(rec, 0);
      return;
    }
    if (fd < 0 || fd > 0x7fffffff) {
      this._fail(rec, 'EBADF', 'close', { fd });
      return;
    }
    if (this._closeWhenIdle.has(fd)) {
      // A second close of the same number while the first waits: the first one owns it.
      this._fail(rec, 'EBADF', 'close', { fd });
      return;
    }
    this._files.delete(fd);
    if (this._fsBusy.has(fd)) {
      this._closeWhenIdle.set(fd, rec);
      return;
    }
    this._fsClose(rec, fd);
  }

  private _fsClose(rec: Op, fd: number): void {
    try {
      fs.close(fd, (err) => this._complete(rec, err ? sysError(err, 'close', { fd }, 'EBADF') : 0));
    } catch (err) {
      this._complete(rec, sysError(err, 'close', { fd }, 'EBADF'));
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Sockets

  private _sock(rec: Op, fd: number, syscall: string): SockRec | undefined {
    const s = this._socks.get(fd);
    if (s === undefined) {
      this._fail(rec, this._files.has(fd) ? 'ENOTSOCK' : 'EBADF', syscall, { fd });
      return undefined;
    }
    return s;
  }

  /** An operation starts waiting on `s`: hold the loop while anything waits. */
  private _hold(s: SockRec): void {
    if (s.waiting++ === 0) {
      s.socket?.ref();
      s.server?.ref();
    }
  }

  private _release(s: SockRec): void {
    if (s.waiting > 0 && --s.waiting === 0) {
      s.socket?.unref();
      s.server?.unref();
    }
  }

  private _listen(rec: Op, fd: number, addr: SocketAddress, backlog: number, reusePort: boolean): void {
    const s = this._sock(rec, fd, 'listen');
    if (s === undefined) return;
    const details = { address: addr.host, port: addr.port };
    if (s.state !== 'new') {
      this._fail(rec, 'EINVAL', 'listen', details);
      return;
    }
    const ipFamily = net.isIP(addr.host);
    if (ipFamily === 0) {
      this._fail(rec, 'EINVAL', 'bind', details);
      return;
    }
    if (ipFamily !== s.family) {
      this._fail(rec, 'EAFNOSUPPORT', 'bind', details);
      return;
    }
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    s.server = server;
    s.state = 'listening';
    s.backlog = backlog > 0 ? backlog : DEFAULT_BACKLOG;
    s.other = rec;
    this._hold(s);
    const onError = (err: Error) => {
      server.removeListener('listening', onListening);
      s.state = 'failed';
      s.server = null;
      s.other = null;
      this._release(s);
      const e = sysError(err, 'listen', details, 'EINVAL');
      if (e.code === 'EADDRINUSE' && reusePort && !NODE_HAS_REUSEPORT) {
        e.message += ` (reusePort needs Node >= 22.12 on the node backend; Node ${process.versions.node} ignores it: use the io_uring or epoll backend)`;
      }
      this._complete(rec, e);
    };
    const onListening = () => {
      server.removeListener('error', onError);
      s.other = null;
      const a = server.address();
      if (a !== null && typeof a === 'object') s.local = { host: a.address, port: a.port, family: familyOf(a.family) };
      server.on('error', (err) => this._serverError(s, err));
      server.on('connection', (sock: net.Socket) => this._incoming(s, sock));
      this._release(s);
      this._complete(rec, 0);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    rec.cancel = () => {
      server.removeListener('error', onError);
      server.removeListener('listening', onListening);
      server.close();
      s.server = null;
      s.state = 'failed';
      s.other = null;
      this._release(s);
      this._cancelled(rec, 'listen');
    };
    try {
      server.listen({ host: addr.host, port: addr.port, backlog: s.backlog, exclusive: true, ...(reusePort ? { reusePort: true } : {}) });
    } catch (err) {
      onError(err as Error);
    }
  }

  private _serverError(s: SockRec, err: Error): void {
    // An accept(2) failure (EMFILE, ENFILE): report it to one waiting accept; the server goes on.
    const op = s.acceptWaiters.shift();
    if (op === undefined) return;
    this._release(s);
    this._complete(op, sysError(err, 'accept', { fd: s.fd }, 'EIO'));
  }

  private _incoming(s: SockRec, sock: net.Socket): void {
    const c = new SockRec(-1, familyOf(sock.remoteFamily));
    c.state = 'stream';
    c.socket = sock;
    c.local = { host: sock.localAddress ?? '', port: sock.localPort ?? 0, family: c.family };
    c.peer = { host: sock.remoteAddress ?? '', port: sock.remotePort ?? 0, family: c.family };
    // Until someone reads, errors (a reset before accept) are recorded, not thrown.
    this._wireStream(c);
    sock.unref();
    const op = s.acceptWaiters.shift();
    if (op !== undefined) {
      this._release(s);
      this._acceptInto(op, c);
      return;
    }
    if (s.incoming.length >= s.backlog) {
      sock.resetAndDestroy();
      return;
    }
    s.incoming.push(c);
  }

  private _acceptInto(op: Op, c: SockRec): void {
    c.fd = this._nextVfd++;
    this._socks.set(c.fd, c);
    this._complete(op, c.fd);
  }

  private _accept(rec: Op, fd: number): void {
    const s = this._sock(rec, fd, 'accept');
    if (s === undefined) return;
    if (s.state !== 'listening' || s.server === null) {
      this._fail(rec, 'EINVAL', 'accept', { fd });
      return;
    }
    const c = s.incoming.shift();
    if (c !== undefined) {
      this._acceptInto(rec, c);
      return;
    }
    s.acceptWaiters.push(rec);
    this._hold(s);
    rec.cancel = () => {
      const i = s.acceptWaiters.indexOf(rec);
      if (i >= 0) {
        s.acceptWaiters.splice(i, 1);
        this._release(s);
      }
      this._cancelled(rec, 'accept');
    };
  }

  private _connect(rec: Op, fd: number, addr: SocketAddress): void {
    const s = this._sock(rec, fd, 'connect');
    if (s === undefined) return;
    const details = { address: addr.host, port: addr.port };
    if (s.state !== 'new') {
      this._fail(rec, s.state === 'connecting' ? 'EALREADY' : s.state === 'stream' ? 'EISCONN' : 'EINVAL', 'connect', details);
      return;
    }
    const ipFamily = net.isIP(addr.host);
    if (ipFamily === 0) {
      this._fail(rec, 'EINVAL', 'connect', details);
      return;
    }
    if (ipFamily !== s.family) {
      this._fail(rec, 'EAFNOSUPPORT', 'connect', details);
      return;
    }
    let sock: net.Socket;
    try {
      sock = net.connect({ host: addr.host, port: addr.port, family: s.family, allowHalfOpen: true, noDelay: true });
    } catch (err) {
      this._complete(rec, sysError(err, 'connect', details, 'EINVAL'));
      return;
    }
    s.state = 'connecting';
    s.socket = sock;
    s.other = rec;
    // net.connect returns a referenced socket: that is the hold for this connect.
    s.waiting++;
    const onError = (err: Error) => {
      sock.removeListener('connect', onConnect);
      s.state = 'failed';
      s.socket = null;
      s.other = null;
      s.waiting--;
      sock.destroy();
      this._complete(rec, sysError(err, 'connect', details, 'ECONNREFUSED'));
    };
    const onConnect = () => {
      sock.removeListener('error', onError);
      s.state = 'stream';
      s.other = null;
      s.local = { host: sock.localAddress ?? '', port: sock.localPort ?? 0, family: s.family };
      s.peer = { host: sock.remoteAddress ?? addr.host, port: sock.remotePort ?? addr.port, family: s.family };
      // Connected sockets start paused, like accepted ones, until someone calls recv.
      sock.pause();
      this._wireStream(s);
      this._release(s);
      this._complete(rec, 0);
    };
    sock.once('error', onError);
    sock.once('connect', onConnect);
    rec.cancel = () => {
      sock.removeListener('error', onError);
      sock.removeListener('connect', onConnect);
      sock.on('error', noop);
      sock.destroy();
      s.state = 'failed';
      s.socket = null;
      s.other = null;
      s.waiting--;
      this._cancelled(rec, 'connect');
    };
  }

  /** Listens to a connected socket's stream events. The socket stays paused until a recv. */
  private _wireStream(s: SockRec): void {
    const sock = s.socket!;
    s.paused = true;
    sock.on('data', (chunk: Buffer) => this._onData(s, chunk));
    sock.on('end', () => this._onEnd(s));
    sock.on('error', (err: Error) => this._onError(s, err));
    sock.on('close', () => this._onClose(s));
    // 'data' listeners switch a stream to flowing mode; pause again until a recv asks.
    sock.pause();
  }

  private _onData(s: SockRec, chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && s.recvWaiters.length > 0) {
      const op = s.recvWaiters.shift()!;
      this._release(s);
      const bytes = op.bytes!;
      if (bytes.byteLength < op.len) {
        // The caller transferred (detached) or shrank the buffer while the recv waited. Native
        // backends pin the memory and write into it wherever it moved; here the bytes would have
        // nowhere to go. Fail this recv with EFAULT (what io_uring reports for a buffer detached
        // before it reached the kernel) and keep the bytes for the next recv: nothing is lost.
        this._fail(op, 'EFAULT', 'recv', { fd: op.fd });
        continue;
      }
      const n = Math.min(op.len, chunk.length - off);
      bytes.set(off === 0 && n === chunk.length ? chunk : chunk.subarray(off, off + n));
      off += n;
      this._complete(op, n);
    }
    if (off < chunk.length) {
      s.chunks.push(off === 0 ? chunk : chunk.subarray(off));
      s.queued += chunk.length - off;
      if (s.queued >= RECV_HIGH_WATER && !s.paused) {
        s.paused = true;
        s.socket?.pause();
      }
    }
  }

  private _onEnd(s: SockRec): void {
    s.eof = true;
    this._drainWaitersAtEnd(s);
  }

  private _onError(s: SockRec, err: Error): void {
    // Node destroys a socket on any error: nothing more will be read after the queued bytes.
    s.eof = true;
    // A failed write was already reported to its send (Node calls the write callback first, then
    // emits the same error here). Anything else (a reset seen by a read) is the socket's pending
    // error, reported once like SO_ERROR: recv on Linux gives ECONNRESET once, then 0.
    if (err !== s.reported && s.error === null) s.error = opError(err, 'recv', { fd: s.fd }, 'ECONNRESET');
    this._drainWaitersAtEnd(s);
    this._failSends(s);
  }

  private _onClose(s: SockRec): void {
    // Destroyed without 'end' (a local destroy, or after an error): readers see EOF or the error.
    s.eof = true;
    this._drainWaitersAtEnd(s);
    this._failSends(s);
  }

  /** True when a recv with nothing queued must not wait: end of stream, or the read side shut. */
  private _readDone(s: SockRec): boolean {
    return s.eof || (s.readShut && !s.readSettling);
  }

  /**
   * With nothing queued and nothing more to come, readers waiting get 0 (EOF); the first one
   * gets the socket's pending error instead, if there is one.
   */
  private _drainWaitersAtEnd(s: SockRec): void {
    if (s.queued > 0 || !this._readDone(s)) return;
    while (s.recvWaiters.length > 0) {
      const op = s.recvWaiters.shift()!;
      this._release(s);
      this._complete(op, this._takeError(s, 'recv', op.fd) ?? 0);
    }
  }

  /** The socket's pending error as `syscall` reports it, consumed (see {@link SockRec.error}); or null. */
  private _takeError(s: SockRec, syscall: string, fd: number): IoError | null {
    const e = s.error;
    if (e === null) return null;
    s.error = null;
    const out = ioErrorFromCode(e.code, syscall, { fd });
    (out as { cause?: unknown }).cause = e;
    return out;
  }

  /** The socket is gone: sends still waiting get its pending error (the first one) or EPIPE. */
  private _failSends(s: SockRec): void {
    const queued = s.writeQ;
    s.writeQ = null;
    if (s.sends !== null) {
      for (const op of s.sends) {
        this._release(s);
        this._complete(op, this._takeError(s, 'send', op.fd) ?? ioErrorFromCode('EPIPE', 'send', { fd: op.fd }));
      }
      s.sends.clear();
    }
    // A write-side shutdown that waited behind those sends: end() the gone socket now, whose
    // callback completes it as it would have had it been called at once.
    if (queued !== null) for (const item of queued) if (item.op === s.other) item.start();
  }

  private _recv(rec: Op, fd: number, bytes: Uint8Array, len: number): void {
    const s = this._sock(rec, fd, 'recv');
    if (s === undefined) return;
    if (s.state !== 'stream') {
      this._fail(rec, s.state === 'listening' ? 'EINVAL' : 'ENOTCONN', 'recv', { fd });
      return;
    }
    if (len === 0) {
      this._complete(rec, 0);
      return;
    }
    if (s.queued > 0) {
      this._complete(rec, this._copyOut(s, bytes, len));
      return;
    }
    if (this._readDone(s)) {
      this._complete(rec, this._takeError(s, 'recv', fd) ?? 0);
      return;
    }
    rec.bytes = bytes;
    rec.len = len;
    s.recvWaiters.push(rec);
    this._hold(s);
    if (s.paused) {
      s.paused = false;
      s.socket!.resume();
    }
    rec.cancel = () => {
      const i = s.recvWaiters.indexOf(rec);
      if (i >= 0) {
        s.recvWaiters.splice(i, 1);
        this._release(s);
      }
      this._cancelled(rec, 'recv');
    };
  }

  /** Copies queued bytes into `bytes` (as many as fit, across chunks, like recv(2)). */
  private _copyOut(s: SockRec, bytes: Uint8Array, len: number): number {
    let n = 0;
    const chunks = s.chunks;
    while (n < len && chunks.length > 0) {
      const c = chunks[0]!;
      const take = Math.min(c.length, len - n);
      bytes.set(take === c.length ? c : c.subarray(0, take), n);
      n += take;
      if (take === c.length) chunks.shift();
      else chunks[0] = c.subarray(take);
    }
    s.queued -= n;
    if (s.queued < RECV_HIGH_WATER / 2 && s.paused && !s.eof && s.socket !== null && s.recvWaiters.length === 0) {
      // Keep reading ahead while the application keeps up; the high-water mark pauses again.
      s.paused = false;
      s.socket.resume();
    }
    return n;
  }

  private _send(rec: Op, fd: number, bytes: Uint8Array, len: number): void {
    const s = this._sock(rec, fd, 'send');
    if (s === undefined) return;
    if (s.state !== 'stream') {
      this._fail(rec, s.state === 'listening' || s.state === 'new' || s.state === 'connecting' ? 'ENOTCONN' : 'EPIPE', 'send', { fd });
      return;
    }
    const sock = s.socket!;
    if (sock.destroyed || sock.writableEnded) {
      // As send(2) after a reset or our own shutdown: the pending error once (ECONNRESET), then EPIPE.
      this._complete(rec, this._takeError(s, 'send', fd) ?? ioErrorFromCode('EPIPE', 'send', { fd }));
      return;
    }
    if (len === 0) {
      this._complete(rec, 0);
      return;
    }
    (s.sends ??= new Set()).add(rec);
    this._hold(s);
    // One write in Node at a time: a send waits here while the previous write (even one whose send
    // was cancelled) has not called back, so a cancel while it waits drops it for good, and a peer
    // that stops reading holds at most one send's bytes in Node's buffer, however often the
    // caller aborts and retries.
    // The bytes are copied, now: whatever Node cannot hand to the kernel at once it keeps in its
    // stream buffer, and a write cannot be taken back, so a view of the caller's memory would go
    // on being read after a cancel had completed this send with ECANCELED (the caller, told it
    // failed, reuses the buffer and its new bytes go out), or after a detach (transfer) emptied
    // it, also while it waits here. Native backends pin the memory until the kernel is done;
    // node:net offers no way to.
    const data = Buffer.from(len === bytes.byteLength ? bytes : bytes.subarray(0, len));
    if (s.writing || s.writeQ !== null) {
      const item = { op: rec, start: () => this._write(s, rec, data, fd) };
      (s.writeQ ??= []).push(item);
      rec.cancel = () => {
        this._unqueueWrite(s, item);
        if (s.sends?.delete(rec)) this._release(s);
        this._cancelled(rec, 'send');
      };
      return;
    }
    this._write(s, rec, data, fd);
  }

  /** Hands one send's bytes to Node (see `_send`); the next queued one starts at its callback. */
  private _write(s: SockRec, rec: Op, data: Buffer, fd: number): void {
    const sock = s.socket;
    if (sock === null || sock.destroyed || sock.writableEnded) {
      if (s.sends?.delete(rec)) this._release(s);
      this._complete(rec, this._takeError(s, 'send', fd) ?? ioErrorFromCode('EPIPE', 'send', { fd }));
      return;
    }
    rec.cancel = () => {
      if (s.sends?.delete(rec)) this._release(s);
      this._cancelled(rec, 'send');
    };
    s.writing = true;
    sock.write(data, (err) => {
      s.writing = false;
      if (err) s.reported = err;
      if (s.sends?.delete(rec)) {
        this._release(s);
        this._complete(rec, err ? opError(err, 'send', { fd }, 'EPIPE') : data.length);
      }
      this._nextWrite(s);
    });
  }

  /** Starts what waited for the write that just called back, in order, until one is in Node. */
  private _nextWrite(s: SockRec): void {
    while (!s.writing && s.writeQ !== null) {
      const item = s.writeQ.shift()!;
      if (s.writeQ.length === 0) s.writeQ = null;
      item.start();
    }
  }

  private _unqueueWrite(s: SockRec, item: { op: Op; start: () => void }): void {
    if (s.writeQ === null) return;
    const i = s.writeQ.indexOf(item);
    if (i >= 0) s.writeQ.splice(i, 1);
    if (s.writeQ.length === 0) s.writeQ = null;
  }

  private _shutdown(rec: Op, fd: number, how: 0 | 1 | 2): void {
    const s = this._sock(rec, fd, 'shutdown');
    if (s === undefined) return;
    if (s.state === 'listening') {
      // Linux wakes a listening socket's blocked accepts with EINVAL on shutdown; do the same.
      while (s.acceptWaiters.length > 0) {
        const op = s.acceptWaiters.shift()!;
        this._release(s);
        this._fail(op, 'EINVAL', 'accept', { fd });
      }
      this._complete(rec, 0);
      return;
    }
    if (s.state !== 'stream') {
      this._fail(rec, 'ENOTCONN', 'shutdown', { fd });
      return;
    }
    if (how === 0 || how === 2) this._shutRead(s);
    const sock = s.socket!;
    if (how === 0 || sock.writableEnded || sock.destroyed) {
      this._complete(rec, 0);
      return;
    }
    this._hold(s);
    s.other = rec;
    /** Lets go of the socket once, whichever of the cancel and the callback comes first. */
    const releaseOther = (): void => {
      if (s.other === rec) {
        s.other = null;
        this._release(s);
      }
    };
    const end = (): void => {
      rec.cancel = () => {
        releaseOther();
        this._cancelled(rec, 'shutdown');
      };
      sock.end(() => {
        releaseOther();
        this._complete(rec, 0);
      });
    };
    if (s.writeQ === null) {
      end(); // Node sends the FIN after a write still in progress
      return;
    }
    // Sends queued here (see _send) go out before the FIN.
    const item = { op: rec, start: end };
    s.writeQ.push(item);
    rec.cancel = () => {
      this._unqueueWrite(s, item);
      releaseOther();
      this._cancelled(rec, 'shutdown');
    };
  }

  /**
   * `shutdown(SHUT_RD)` as Linux does it for TCP: bytes already received are still returned, and
   * once none are queued recv returns 0 at once instead of waiting (Linux also keeps queueing what
   * arrives later, and so does this backend, up to the high-water mark).
   *
   * "Already received" includes bytes the kernel holds that Node has not read yet: a socket with
   * no recv so far is paused and libuv is not reading it. So the read side is resumed and recvs
   * keep waiting for two turns of the event loop: `resume()` starts libuv's read on the next tick,
   * and at least one poll phase (which reads whatever the kernel has) runs before the second
   * `setImmediate`, whichever phase this was called in. After that, with nothing queued, recv
   * gives 0 (or the socket's pending error, once).
   */
  private _shutRead(s: SockRec): void {
    if (s.readShut) return;
    s.readShut = true;
    if (s.eof || s.socket === null) {
      this._drainWaitersAtEnd(s);
      return;
    }
    s.readSettling = true;
    // (Paused at the high-water mark, it has bytes queued for the recvs already.)
    if (s.paused && s.queued < RECV_HIGH_WATER) {
      s.paused = false;
      s.socket.resume();
    }
    setImmediate(() =>
      setImmediate(() => {
        s.readSettling = false;
        this._drainWaitersAtEnd(s);
      }),
    );
  }

  /** Destroys what a socket fd holds and completes every operation waiting on it with ECANCELED. */
  private _closeSocket(s: SockRec): void {
    const waiting: Op[] = [...s.acceptWaiters, ...s.recvWaiters, ...(s.sends ?? [])];
    if (s.other !== null) waiting.push(s.other);
    s.acceptWaiters = [];
    s.recvWaiters = [];
    s.sends?.clear();
    s.writeQ = null;
    s.other = null;
    s.state = 'failed';
    s.chunks = [];
    s.queued = 0;
    if (s.server !== null) {
      s.server.close();
      s.server = null;
    }
    for (const c of s.incoming) c.socket?.destroy();
    s.incoming = [];
    if (s.socket !== null) {
      const sock = s.socket;
      s.socket = null;
      sock.removeAllListeners('data');
      sock.on('error', noop);
      sock.destroy();
    }
    s.waiting = 0;
    for (const op of waiting) {
      if (!op.done) this._cancelled(op, op.kind);
    }
  }
}
