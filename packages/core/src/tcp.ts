import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { IoOperation, SocketAddress } from './backend.js';
import { constants as osConstants } from 'node:os';
import { InvalidArgumentError, IoError, RuntimeError, closedError, ioErrorFromCode, ioErrorFromErrno } from './errors.js';
import type { IoCallOptions } from './file.js';
import { checkConnectTimeout, checkSignal } from './io-operation.js';
import { abortReason, currentRuntime, noop, type IoOwner, type PendingIo, type Runtime, type TrackedResource } from './runtime.js';

export interface TcpAddress {
  /** A numeric address or a host name (resolved with the system resolver). */
  host?: string;
  port: number;
}

export interface BindOptions {
  /** `SO_REUSEPORT`: several listeners (one per core) share the port and the kernel balances them. */
  reusePort?: boolean;
  /** Pending-connection queue length. Default 511 (Node's). */
  backlog?: number;
  signal?: AbortSignal;
}

export interface ConnectOptions extends IoCallOptions {
  /** Bounds the connect: past it the call rejects with `ETIMEDOUT` and the attempt is cancelled. */
  timeoutMs?: number;
}

/** errno of ETIMEDOUT, from the OS (110 on Linux, 60 on macOS and the BSDs). */
const ETIMEDOUT = osConstants.errno.ETIMEDOUT;

/**
 * The accept iterator's pause after `EMFILE`/`ENFILE`: the first one, and the cap it doubles up
 * to. Retrying at once would spin (the connection stays in the backlog, every accept fails at
 * once) until an fd is freed; a second is short next to how long fd exhaustion usually lasts.
 */
const ACCEPT_BACKOFF_MIN_MS = 10;
const ACCEPT_BACKOFF_MAX_MS = 1000;

/** Options objects may be omitted (`undefined`); anything else that is not an object is refused. */
function checkOptions<T extends object>(opts: T | undefined, fn: string): T | Record<string, never> {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object') {
    throw new InvalidArgumentError(`${fn}: options must be an object (or omitted), got ${opts === null ? 'null' : typeof opts}`);
  }
  return opts;
}

function checkPort(port: unknown, allowZero: boolean): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new InvalidArgumentError(`port must be an integer in ${allowZero ? 0 : 1}..65535, got ${String(port)}`);
  }
  return port;
}

/** Resolves `host` to a numeric address (no lookup when it already is one). */
async function resolveHost(host: string, syscall: string, port: number): Promise<{ host: string; family: 4 | 6 }> {
  if (typeof host !== 'string' || host.length === 0) throw new InvalidArgumentError(`host must be a non-empty string, got ${String(host)}`);
  const v = isIP(host);
  if (v !== 0) return { host, family: v as 4 | 6 };
  try {
    const r = await lookup(host);
    return { host: r.address, family: r.family === 6 ? 6 : 4 };
  } catch (err) {
    // Node's resolver errors carry the getaddrinfo code ('ENOTFOUND', 'EAI_AGAIN', ...) and
    // libuv's negative number for it (-3008 for ENOTFOUND); there is no OS errno to report.
    const { code, errno } = err as { code?: unknown; errno?: unknown };
    const e = new IoError(
      typeof code === 'string' ? code : 'ENOTFOUND',
      (typeof errno === 'number' && errno < 0 ? errno : undefined) as number,
      'getaddrinfo',
      `${syscall}: cannot resolve host '${host}'${typeof code === 'string' ? ` (${code})` : ''}`,
    );
    e.address = host;
    e.port = port;
    (e as { cause?: unknown }).cause = err;
    throw e;
  }
}

function checkBytes(buf: unknown, syscall: string): Uint8Array {
  if (!(buf instanceof Uint8Array)) throw new InvalidArgumentError(`${syscall}: buffer must be a Uint8Array`);
  return buf;
}

/**
 * A listening TCP socket. `accept()` resolves with each connection; `for await (const s of
 * listener)` accepts until the listener is closed (the loop then ends without an error).
 * Listeners stop accepting when their runtime begins to shut down, so an accept loop ends by
 * itself and the grace period drains the connections already accepted.
 */
export class TcpListener implements TrackedResource, IoOwner, AsyncIterable<TcpStream> {
  /** @internal Operations in flight (a list kept by the runtime, for close() to cancel them). */
  _ioHead: PendingIo | null = null;
  private _closed = false;
  private _closing: Promise<void> | null = null;
  private _address: SocketAddress;

  private constructor(
    private readonly _rt: Runtime,
    /** The backend's descriptor for this socket (a kernel fd on native backends). */
    readonly fd: number,
  ) {
    this._address = _rt.backend.address(fd, 'local');
    _rt._trackResource(this);
  }

  /** Binds and listens on `addr` (host default `0.0.0.0`; port 0 picks a free port, see `address`). */
  static async bind(addr: TcpAddress, options?: BindOptions): Promise<TcpListener> {
    const rt = currentRuntime();
    if (addr === null || typeof addr !== 'object') throw new InvalidArgumentError('addr must be an object { host?, port }');
    const opts: BindOptions = checkOptions(options, 'bind');
    const port = checkPort(addr.port, true);
    const backlog = opts.backlog ?? 511;
    if (!Number.isInteger(backlog) || backlog < 1) throw new InvalidArgumentError(`backlog must be a positive integer, got ${String(backlog)}`);
    const { host, family } = await resolveHost(addr.host ?? '0.0.0.0', 'bind', port);
    if (rt.isShuttingDown) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime is shutting down: no new listeners');
    const fd = await rt.io({ op: 'socket', family }, opts.signal);
    const pending = new PendingSocket(rt, fd);
    try {
      await rt.io({ op: 'listen', fd, addr: { host, port, family }, backlog, reusePort: opts.reusePort === true }, opts.signal, pending);
      pending.handOver('listen');
    } catch (err) {
      await pending.close();
      throw pending.failure(err, 'listen');
    }
    return new TcpListener(rt, fd);
  }

  /** The bound address: `{ host, port, family }` (the real port when bound to port 0). */
  get address(): SocketAddress {
    return { ...this._address };
  }

  get closed(): boolean {
    return this._closed;
  }

  /**
   * Waits for the next connection. Rejects with `EBADF` once the listener is closed (an accept
   * in flight when `close()` is called rejects with `ECANCELED`).
   */
  async accept(opts?: IoCallOptions): Promise<TcpStream> {
    if (this._closed) throw closedError('accept', { fd: this.fd });
    const fd = await this._rt.io({ op: 'accept', fd: this.fd }, opts?.signal, this);
    if (this._closed) {
      // Closed while the connection was being accepted: do not leak it.
      await this._rt.io({ op: 'close', fd }).catch(() => undefined);
      throw closedError('accept', { fd: this.fd });
    }
    return new TcpStream(this._rt, fd);
  }

  /**
   * Accepts until the listener is closed (the iteration then ends without an error) or the
   * iterator's `return()` is called (leaving a `for await` loop): either ends a wait in progress
   * at once. A connection the peer reset before it was accepted is skipped. Out of descriptors
   * (`EMFILE`/`ENFILE`) the iterator waits before trying again, 10 ms doubling up to 1 s and back
   * to 10 ms after the next success, instead of spinning on a connection it cannot take yet.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<TcpStream> {
    return new AcceptIterator(this);
  }

  /**
   * @internal The accept iterator's back-off: a `timeout` operation owned by this listener. Being
   * an operation, it holds the event loop exactly as the accept it stands in for would (so a
   * server whose only work is its accept loop does not exit during a back-off, and nothing is held
   * once the loop ends), and `close()` cancels it like any other operation of the listener.
   */
  _backoff(ms: number, signal: AbortSignal): Promise<number> {
    if (this._closed) return Promise.resolve(0);
    return this._rt.io({ op: 'timeout', ms }, signal, this);
  }

  /** Stops listening. Pending accepts reject; connections already accepted stay open. Idempotent. */
  close(): Promise<void> {
    if (this._closing !== null) return this._closing;
    this._closed = true;
    this._closing = this._rt._closeResource(this, this.fd);
    return this._closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal Shutdown began: stop accepting so accept loops end and the drain can start. */
  _onShutdownBegin(): void {
    void this.close().catch(() => undefined);
  }

  /** @internal */
  _forceClose(): Promise<void> {
    return this.close();
  }
}

/**
 * A connected TCP socket. `recv` resolves with the bytes read (0 when the peer closed its side),
 * `send` with the bytes the kernel took, `sendAll` when everything was taken. I/O after `close()`
 * rejects with `EBADF`. Streams left open are closed when their runtime shuts down.
 *
 * Order. Calls made without awaiting the previous one are served in call order: concurrent recvs
 * fill their buffers in the order they were called, and concurrent sends put their bytes on the
 * wire in call order. A `sendAll` keeps its bytes together: sends called while it runs go after
 * all of its bytes, never into the middle. `shutdown('write')` (and `'both'`) waits its turn
 * behind the sends called before it, so the FIN follows their bytes.
 *
 * How: each direction (recv; send, sendAll and shutdown of the write side) has at most one
 * operation in the backend at a time; later calls wait in a FIFO here and start when it
 * completes. The kernel does not order them for us: io_uring parks each recv or send waiting on
 * a socket as its own request and wakes them newest first, so two recvs in flight would fill in
 * reverse order and sends queued behind a full socket buffer would go out reversed. The call
 * with nothing ahead of it goes straight to the backend, as before: the lone recv or send of a
 * request-response loop pays for two field stores, no promise or allocation. While a call
 * waits in the FIFO, its signal withdraws it without it ever reaching the backend, and
 * `close()` rejects it with `ECANCELED` as it does the one in flight.
 *
 * Aborts never lose bytes. A recv or send in the backend whose signal aborts is cancelled and
 * settles when the backend reports how it ended: rejected with the signal's reason if the cancel
 * got there first, resolved with its byte count if the kernel had already taken or delivered the
 * bytes (io_uring may have; the completion was only waiting to be reaped), so those bytes are
 * never dropped or sent without the caller knowing.
 */
export class TcpStream implements TrackedResource, IoOwner, AsyncIterable<Uint8Array> {
  /** @internal Operations in flight (a list kept by the runtime, for close() to cancel them). */
  _ioHead: PendingIo | null = null;
  private _closed = false;
  private _closing: Promise<void> | null = null;
  // The operation each direction has in the backend (its record in `_ioHead`'s list, or null),
  // and its promise, which the FIFO waits on when a call queues behind it (see the class doc).
  private _recvIo: PendingIo | null = null;
  private _recvWait: Promise<number> | null = null;
  private _sendIo: PendingIo | null = null;
  private _sendWait: Promise<number> | null = null;
  /** Calls waiting for their direction; null when none (never an empty queue). */
  private _recvQ: CallQueue | null = null;
  private _sendQ: CallQueue | null = null;
  /** A sendAll owns the write side between its operations too; it starts the queue when done. */
  private _sendHeld = false;

  /** @internal Use `TcpStream.connect` or `TcpListener#accept`. */
  constructor(
    private readonly _rt: Runtime,
    /** The backend's descriptor for this socket (a kernel fd on native backends). */
    readonly fd: number,
  ) {
    _rt._trackResource(this);
  }

  /**
   * Connects to `addr` (a host name is resolved first). Rejects with `ECONNREFUSED` etc.
   * `timeoutMs` bounds the connect itself (not the name lookup): past it the attempt is cancelled
   * and the call rejects with an `IoError` code `ETIMEDOUT`. On a backend with
   * `features.linkedTimeouts` (io_uring) the kernel times it (a linked timeout); elsewhere a timer
   * cancels the operation.
   */
  static async connect(addr: TcpAddress, options?: ConnectOptions): Promise<TcpStream> {
    const rt = currentRuntime();
    if (addr === null || typeof addr !== 'object') throw new InvalidArgumentError('addr must be an object { host, port }');
    const opts: ConnectOptions = checkOptions(options, 'connect');
    const port = checkPort(addr.port, false);
    const timeoutMs = opts.timeoutMs;
    checkConnectTimeout(timeoutMs, '');
    const { host, family } = await resolveHost(addr.host ?? '127.0.0.1', 'connect', port);
    const fd = await rt.io({ op: 'socket', family }, opts.signal);
    // Until it is a TcpStream, the socket is closed by a shutdown like any resource (see PendingSocket).
    const pending = new PendingSocket(rt, fd);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (timeoutMs === undefined) {
        await rt.io({ op: 'connect', fd, addr: { host, port, family } }, opts.signal, pending);
      } else if (rt.backend.features.linkedTimeouts === true) {
        await rt.io({ op: 'connect', fd, addr: { host, port, family }, timeoutMs }, opts.signal, pending);
      } else {
        // No kernel-side timeout: a timer aborts the operation with ETIMEDOUT as its reason.
        const ac = new AbortController();
        timer = setTimeout(() => ac.abort(ioErrorFromErrno(-ETIMEDOUT, 'connect', { address: host, port })), timeoutMs);
        const signal = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
        await rt.io({ op: 'connect', fd, addr: { host, port, family } }, signal, pending);
      }
      pending.handOver('connect');
    } catch (err) {
      await pending.close();
      if (err instanceof IoError) {
        err.address ??= host;
        err.port ??= port;
      }
      throw pending.failure(err, 'connect');
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    return new TcpStream(rt, fd);
  }

  get closed(): boolean {
    return this._closed;
  }

  /** Local address `{ host, port, family }`. */
  get localAddress(): SocketAddress {
    if (this._closed) throw closedError('getsockname', { fd: this.fd });
    return this._rt.backend.address(this.fd, 'local');
  }

  /** Peer address `{ host, port, family }`. */
  get remoteAddress(): SocketAddress {
    if (this._closed) throw closedError('getpeername', { fd: this.fd });
    return this._rt.backend.address(this.fd, 'peer');
  }

  /**
   * Reads up to `buf.length` bytes. Resolves with the count, 0 at end of stream. An empty buffer
   * is refused. Concurrent recvs are filled in call order.
   */
  recv(buf: Uint8Array, opts?: IoCallOptions): Promise<number> {
    try {
      checkSignal(opts?.signal, 'recv');
      const b = checkBytes(buf, 'recv');
      if (b.byteLength === 0) throw new InvalidArgumentError('recv: the buffer is empty (0 would be mistaken for end of stream)');
      if (this._closed) throw closedError('recv', { fd: this.fd });
      const io = this._recvIo;
      if (this._recvQ === null && (io === null || !this._inBackend(io))) return this._recv(b, opts?.signal);
      return this._enqueue(RECV, b, opts?.signal);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Sends bytes from `buf`; resolves with how many the kernel took (may be fewer: see `sendAll`).
   * Concurrent sends go out in call order.
   */
  send(buf: Uint8Array, opts?: IoCallOptions): Promise<number> {
    try {
      checkSignal(opts?.signal, 'send');
      const b = checkBytes(buf, 'send');
      if (this._closed) throw closedError('send', { fd: this.fd });
      if (b.byteLength === 0) return Promise.resolve(0);
      if (this._sendFree()) return this._send(b, opts?.signal);
      return this._enqueue(SEND, b, opts?.signal);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Sends all of `buf`, looping over short sends. Its bytes stay together: sends called while it
   * runs wait until all of them were taken (or it failed). An abort or error part way leaves an
   * unknown prefix sent; so does a `close()`.
   */
  sendAll(buf: Uint8Array, opts?: IoCallOptions): Promise<void> {
    try {
      checkSignal(opts?.signal, 'send');
      const b = checkBytes(buf, 'send');
      if (this._closed) throw closedError('send', { fd: this.fd });
      if (b.byteLength === 0) return Promise.resolve();
      if (this._sendFree()) return this._sendAll(b, opts?.signal);
      return this._enqueue(SEND_ALL, b, opts?.signal) as Promise<unknown> as Promise<void>;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Half-closes the connection: `'write'` (default) sends FIN after the bytes of every send
   * called before it (it waits for them, `sendAll` included), so the peer's `recv` returns 0 once
   * it has read them while this side can still read; `'both'` also ends the read side; `'read'`
   * ends the read side at once: recv returns the bytes already received, then 0.
   */
  async shutdown(how: 'read' | 'write' | 'both' = 'write'): Promise<void> {
    const n = how === 'read' ? 0 : how === 'write' ? 1 : how === 'both' ? 2 : -1;
    if (n < 0) throw new InvalidArgumentError(`shutdown: how must be 'read', 'write' or 'both', got ${String(how)}`);
    if (this._closed) throw closedError('shutdown', { fd: this.fd });
    if (n === 0) await this._rt.io({ op: 'shutdown', fd: this.fd, how: 0 }, undefined, this);
    else if (this._sendFree()) await this._shutdown(n as 1 | 2);
    else await this._enqueue(SHUTDOWN, null, undefined, n);
  }

  // ---------------------------------------------------------------------------------------------
  // Call order (see the class doc)

  /** True while `io`, an operation of this stream, is in the backend (its record still in our list). */
  private _inBackend(io: PendingIo): boolean {
    // The runtime links a record at the head of its owner's list and unlinks it (prev = null)
    // just before settling its promise. An empty list (the usual case when a request-response
    // loop calls) answers without touching the record.
    const head = this._ioHead;
    return head !== null && (head === io || io.prev !== null);
  }

  /** Nothing occupies the write side and nothing waits for it: a send may go straight through. */
  private _sendFree(): boolean {
    const io = this._sendIo;
    return this._sendQ === null && !this._sendHeld && (io === null || !this._inBackend(io));
  }

  /** Submits a recv as the read side's operation. */
  private _recv(b: Uint8Array, signal: AbortSignal | undefined): Promise<number> {
    const before = this._ioHead;
    const p = this._rt.io({ op: 'recv', fd: this.fd, buffer: b, len: b.byteLength }, signal, this);
    // io() links the operation's record at the head of our list, unless it refused it at once
    // (an aborted signal, a runtime shut down): then nothing is in the backend.
    const head = this._ioHead;
    this._recvIo = head !== before ? head : null;
    this._recvWait = p;
    return p;
  }

  /** Submits a send as the write side's operation. */
  private _send(b: Uint8Array, signal: AbortSignal | undefined): Promise<number> {
    return this._writeSide({ op: 'send', fd: this.fd, buffer: b, len: b.byteLength }, signal);
  }

  /** Submits a shutdown of the write side (how 1 or 2) as the write side's operation. */
  private _shutdown(how: 1 | 2): Promise<number> {
    return this._writeSide({ op: 'shutdown', fd: this.fd, how }, undefined);
  }

  /** Submits `op` (a send or a write-side shutdown) as the write side's operation (see _recv). */
  private _writeSide(op: IoOperation, signal: AbortSignal | undefined): Promise<number> {
    const before = this._ioHead;
    const p = this._rt.io(op, signal, this);
    const head = this._ioHead;
    this._sendIo = head !== before ? head : null;
    this._sendWait = p;
    return p;
  }

  /** sendAll holding the write side: one send at a time until every byte was taken. */
  private async _sendAll(buf: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    this._sendHeld = true;
    try {
      const total = buf.byteLength;
      let done = 0;
      while (done < total) {
        if (this._closed) throw closedError('send', { fd: this.fd });
        const n = await this._send(done === 0 ? buf : buf.subarray(done), signal);
        if (n <= 0) throw new RuntimeError('IO_ERROR', `send returned ${n} after ${done} of ${total} bytes`);
        done += n;
      }
    } finally {
      this._sendHeld = false;
      this._settled(true, this._sendIo);
    }
  }

  /** Queues a call behind the operation its direction has in the backend. */
  private _enqueue(kind: CallKind, buf: Uint8Array | null, signal: AbortSignal | undefined, how = 0): Promise<number> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    // (A queued sendAll or shutdown resolves with no value.)
    let resolve!: (n?: number) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<number>((res, rej) => {
      resolve = res as (n?: number) => void;
      reject = rej;
    });
    const send = kind !== RECV;
    const c = new QueuedCall(kind, buf, how, signal, resolve, reject);
    let q = send ? this._sendQ : this._recvQ;
    const first = q === null;
    if (q === null) {
      q = new CallQueue();
      if (send) this._sendQ = q;
      else this._recvQ = q;
    }
    q.push(c);
    if (signal !== undefined) {
      c.onAbort = () => {
        // Still waiting here: it never reached the backend, so it simply leaves the queue.
        if (!this._unqueue(send, c)) return;
        reject(abortReason(signal));
      };
      signal.addEventListener('abort', c.onAbort, { once: true });
    }
    // The first call to wait asks to be told when the operation ahead of it completes; later
    // ones ride on that. A sendAll holding the side starts the queue itself when it is done.
    if (first && !(send && this._sendHeld)) {
      const io = send ? this._sendIo : this._recvIo;
      const w = (): void => this._settled(send, io);
      (send ? this._sendWait : this._recvWait)!.then(w, w);
    }
    return promise;
  }

  /** Takes `c` out of its queue; false if it is no longer there (started or rejected). */
  private _unqueue(send: boolean, c: QueuedCall): boolean {
    const q = send ? this._sendQ : this._recvQ;
    if (q === null || !q.remove(c)) return false;
    if (q.head === null) {
      if (send) this._sendQ = null;
      else this._recvQ = null;
    }
    return true;
  }

  /**
   * The operation `io` of one direction has settled (its promise has): once the backend is done
   * with it, start the calls queued behind it.
   */
  private _settled(send: boolean, io: PendingIo | null): void {
    // A later operation already took its place: that one's completion starts the queue. (A recv
    // or send settles only once the backend is done with it, even when its signal aborted it:
    // the runtime waits for the cancellation's completion, see Runtime.io. So nothing queued
    // here can overtake it.)
    if ((send ? this._sendIo : this._recvIo) !== io) return;
    if (send) {
      this._sendIo = null;
      this._sendWait = null;
    } else {
      this._recvIo = null;
      this._recvWait = null;
    }
    this._startQueued(send);
  }

  /** Starts queued calls of one direction, oldest first, until one is in the backend. */
  private _startQueued(send: boolean): void {
    for (;;) {
      if (send && this._sendHeld) return;
      const q = send ? this._sendQ : this._recvQ;
      const c = q?.head ?? null;
      if (c === null) return;
      this._unqueue(send, c);
      if (c.onAbort !== undefined) c.signal!.removeEventListener('abort', c.onAbort);
      if (this._closed) {
        c.reject(queuedCancelled(c, this.fd));
        continue;
      }
      if (c.kind === SEND_ALL) {
        // Holds the write side until it is done, then starts the rest.
        this._sendAll(c.buf!, c.signal).then(() => c.resolve(), c.reject);
        return;
      }
      const p = c.kind === RECV ? this._recv(c.buf!, c.signal) : c.kind === SEND ? this._send(c.buf!, c.signal) : this._shutdown(c.how as 1 | 2);
      p.then(c.resolve, c.reject);
      const io = send ? this._sendIo : this._recvIo;
      if (io === null) continue; // refused at once (its signal had aborted): the next one
      if ((send ? this._sendQ : this._recvQ) !== null) {
        const w = (): void => this._settled(send, io);
        p.then(w, w);
      }
      return;
    }
  }

  /** close(): queued calls never reached the backend; they fail as the ones in flight do. */
  private _cancelQueued(): void {
    for (const send of [false, true]) {
      const q = send ? this._sendQ : this._recvQ;
      if (q === null) continue;
      if (send) this._sendQ = null;
      else this._recvQ = null;
      for (let c = q.head; c !== null; c = c.next) {
        if (c.onAbort !== undefined) c.signal!.removeEventListener('abort', c.onAbort);
        c.reject(queuedCancelled(c, this.fd));
      }
    }
  }

  /** Chunks as they arrive (each a fresh copy of up to 64 KiB) until the peer closes its side. */
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await this.recv(buf);
      if (n === 0) return;
      yield buf.slice(0, n);
    }
  }

  /**
   * Closes the socket. Operations in flight are cancelled first (they reject with `ECANCELED` or
   * settle with their result if they won); calls still waiting their turn reject with
   * `ECANCELED` without having started. Idempotent.
   */
  close(): Promise<void> {
    if (this._closing !== null) return this._closing;
    this._closed = true;
    this._cancelQueued();
    this._closing = this._rt._closeResource(this, this.fd);
    return this._closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal */
  _forceClose(): Promise<void> {
    return this.close();
  }
}

/**
 * A socket between its `socket` operation and the TcpStream or TcpListener it becomes (while its
 * connect or listen is in flight). Tracked like any resource, so a runtime shutting down meanwhile
 * closes it (cancelling the operation in flight, which it owns) before the backend goes away: once
 * the backend is closed, a close operation is refused, and the native backends do not close the
 * descriptors they handed out, so the fd leaked. `close()` is idempotent, so the caller's clean-up
 * after a failure never closes the number twice (it may belong to someone else by then).
 */
class PendingSocket implements TrackedResource, IoOwner {
  _ioHead: PendingIo | null = null;
  private _closing: Promise<void> | null = null;
  /** Closed by the runtime's shutdown (its operation then failed because of that). */
  private _forced = false;

  constructor(
    private readonly _rt: Runtime,
    readonly fd: number,
  ) {
    _rt._trackResource(this);
  }

  /** What the caller rethrows after `err` ended the operation: `RUNTIME_SHUTDOWN` if the shutdown closed the socket under it. */
  failure(err: unknown, syscall: string): unknown {
    if (!this._forced || (err instanceof RuntimeError && err.code === 'RUNTIME_SHUTDOWN')) return err;
    return new RuntimeError('RUNTIME_SHUTDOWN', `${syscall}: the runtime shut down and closed the socket`, { cause: err });
  }

  /**
   * The operation succeeded: the caller makes its resource now (which tracks itself). Throws
   * `RUNTIME_SHUTDOWN` if the shutdown closed the socket first (the operation had completed).
   */
  handOver(syscall: string): void {
    if (this._closing !== null) throw new RuntimeError('RUNTIME_SHUTDOWN', `${syscall}: the runtime shut down and closed the socket`);
    this._rt._untrackResource(this);
  }

  /** Closes the socket once; never rejects. */
  close(): Promise<void> {
    this._closing ??= this._rt._closeResource(this, this.fd).catch(noop);
    return this._closing;
  }

  /** @internal */
  _forceClose(): Promise<void> {
    if (this._closing === null) this._forced = true;
    return this.close();
  }
}

/** What `for await (const s of listener)` runs: see `TcpListener[Symbol.asyncIterator]`. */
class AcceptIterator implements AsyncIterableIterator<TcpStream> {
  private _done = false;
  /** Aborted by `return()`: ends the accept or back-off in progress at once. */
  private readonly _stop = new AbortController();
  /** The current back-off, 0 after a success. */
  private _delay = 0;
  /** The latest `next()`: a later call waits for it, as an async generator's calls do. */
  private _last: Promise<IteratorResult<TcpStream>> | null = null;
  private readonly _stepBound = (): Promise<IteratorResult<TcpStream>> => this._step();

  constructor(private readonly _listener: TcpListener) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<TcpStream>> {
    const prev = this._last;
    const p = prev === null ? this._step() : prev.then(this._stepBound, this._stepBound);
    this._last = p;
    return p;
  }

  return(value?: unknown): Promise<IteratorResult<TcpStream>> {
    if (!this._done) {
      this._done = true;
      this._stop.abort();
    }
    return Promise.resolve({ value, done: true });
  }

  throw(err?: unknown): Promise<IteratorResult<TcpStream>> {
    void this.return();
    return Promise.reject(err);
  }

  private async _step(): Promise<IteratorResult<TcpStream>> {
    const l = this._listener;
    const signal = this._stop.signal;
    while (!this._done && !l.closed) {
      let s: TcpStream;
      try {
        s = await l.accept({ signal });
      } catch (err) {
        if (this._done || l.closed) break;
        const code = (err as { code?: string }).code;
        if (code === 'EMFILE' || code === 'ENFILE') {
          // Out of descriptors: the connection stays in the backlog and the next accept would
          // fail at once. Wait (doubling) for fds to be freed rather than spin.
          this._delay = this._delay === 0 ? ACCEPT_BACKOFF_MIN_MS : Math.min(this._delay * 2, ACCEPT_BACKOFF_MAX_MS);
          await l._backoff(this._delay, signal).catch(noop);
          continue;
        }
        // A peer that reset before we accepted it must not end the loop; anything else is a
        // real error the caller should see (and ends the iteration, as a generator's throw does).
        if (code === 'ECONNABORTED' || code === 'ECONNRESET' || code === 'EPROTO') continue;
        this._done = true;
        throw err;
      }
      this._delay = 0;
      if (this._done) {
        // return() came while this connection was being accepted: nobody will take it.
        void s.close().catch(noop);
        break;
      }
      return { value: s, done: false };
    }
    this._done = true;
    return { value: undefined, done: true };
  }
}

const RECV = 0;
const SEND = 1;
const SEND_ALL = 2;
const SHUTDOWN = 3;
type CallKind = typeof RECV | typeof SEND | typeof SEND_ALL | typeof SHUTDOWN;

/** A stream call waiting for its direction to be free (see TcpStream's class doc). */
class QueuedCall {
  prev: QueuedCall | null = null;
  next: QueuedCall | null = null;
  onAbort: (() => void) | undefined = undefined;
  constructor(
    readonly kind: CallKind,
    readonly buf: Uint8Array | null,
    /** shutdown: how (1 or 2). */
    readonly how: number,
    readonly signal: AbortSignal | undefined,
    readonly resolve: (n?: number) => void,
    readonly reject: (e: unknown) => void,
  ) {}
}

/** A FIFO of waiting calls; doubly linked so an aborted one leaves in O(1). */
class CallQueue {
  head: QueuedCall | null = null;
  tail: QueuedCall | null = null;

  push(c: QueuedCall): void {
    c.prev = this.tail;
    if (this.tail !== null) this.tail.next = c;
    else this.head = c;
    this.tail = c;
  }

  /** Unlinks `c`; false if it is not in this queue. */
  remove(c: QueuedCall): boolean {
    if (c.prev === null && this.head !== c) return false;
    if (c.prev !== null) c.prev.next = c.next;
    else this.head = c.next;
    if (c.next !== null) c.next.prev = c.prev;
    else this.tail = c.prev;
    c.prev = null;
    c.next = null;
    return true;
  }
}

/** What a queued call rejects with when its stream closes: the `ECANCELED` an operation in flight gets. */
function queuedCancelled(c: QueuedCall, fd: number): IoError {
  return ioErrorFromCode('ECANCELED', c.kind === RECV ? 'recv' : c.kind === SHUTDOWN ? 'shutdown' : 'send', { fd });
}
