import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { SocketAddress } from './backend.js';
import { constants as osConstants } from 'node:os';
import { InvalidArgumentError, IoError, RuntimeError, closedError, ioErrorFromErrno } from './errors.js';
import type { IoCallOptions } from './file.js';
import { currentRuntime, type IoOwner, type PendingIo, type Runtime, type TrackedResource } from './runtime.js';

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
    const e = new IoError((err as { code?: string }).code ?? 'ENOTFOUND', 0, 'getaddrinfo', `${syscall}: cannot resolve host '${host}'`);
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
  static async bind(addr: TcpAddress, opts: BindOptions = {}): Promise<TcpListener> {
    const rt = currentRuntime();
    if (addr === null || typeof addr !== 'object') throw new InvalidArgumentError('addr must be an object { host?, port }');
    const port = checkPort(addr.port, true);
    const backlog = opts.backlog ?? 511;
    if (!Number.isInteger(backlog) || backlog < 1) throw new InvalidArgumentError(`backlog must be a positive integer, got ${String(backlog)}`);
    const { host, family } = await resolveHost(addr.host ?? '0.0.0.0', 'bind', port);
    if (rt.isShuttingDown) throw new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime is shutting down: no new listeners');
    const fd = await rt.io({ op: 'socket', family }, opts.signal);
    try {
      await rt.io({ op: 'listen', fd, addr: { host, port, family }, backlog, reusePort: opts.reusePort === true }, opts.signal);
    } catch (err) {
      await rt.io({ op: 'close', fd }).catch(() => undefined);
      throw err;
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

  async *[Symbol.asyncIterator](): AsyncIterator<TcpStream> {
    while (!this._closed) {
      let s: TcpStream;
      try {
        s = await this.accept();
      } catch (err) {
        if (this._closed) return;
        const code = (err as { code?: string }).code;
        // Transient per-connection failures (the peer reset before we accepted it, fd limits
        // hit) must not end the loop; anything else is a real error the caller should see.
        if (code === 'ECONNABORTED' || code === 'ECONNRESET' || code === 'EMFILE' || code === 'ENFILE' || code === 'EPROTO') continue;
        throw err;
      }
      yield s;
    }
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
 */
export class TcpStream implements TrackedResource, IoOwner, AsyncIterable<Uint8Array> {
  /** @internal Operations in flight (a list kept by the runtime, for close() to cancel them). */
  _ioHead: PendingIo | null = null;
  private _closed = false;
  private _closing: Promise<void> | null = null;

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
  static async connect(addr: TcpAddress, opts: ConnectOptions = {}): Promise<TcpStream> {
    const rt = currentRuntime();
    if (addr === null || typeof addr !== 'object') throw new InvalidArgumentError('addr must be an object { host, port }');
    const port = checkPort(addr.port, false);
    const timeoutMs = opts.timeoutMs;
    if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs > 0 && Number.isFinite(timeoutMs))) {
      throw new InvalidArgumentError(`timeoutMs must be a positive finite number of milliseconds, got ${String(timeoutMs)}`);
    }
    const { host, family } = await resolveHost(addr.host ?? '127.0.0.1', 'connect', port);
    const fd = await rt.io({ op: 'socket', family }, opts.signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (timeoutMs === undefined) {
        await rt.io({ op: 'connect', fd, addr: { host, port, family } }, opts.signal);
      } else if (rt.backend.features.linkedTimeouts === true) {
        await rt.io({ op: 'connect', fd, addr: { host, port, family }, timeoutMs }, opts.signal);
      } else {
        // No kernel-side timeout: a timer aborts the operation with ETIMEDOUT as its reason.
        const ac = new AbortController();
        timer = setTimeout(() => ac.abort(ioErrorFromErrno(-ETIMEDOUT, 'connect', { address: host, port })), timeoutMs);
        const signal = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
        await rt.io({ op: 'connect', fd, addr: { host, port, family } }, signal);
      }
    } catch (err) {
      await rt.io({ op: 'close', fd }).catch(() => undefined);
      if (err instanceof IoError) {
        err.address ??= host;
        err.port ??= port;
      }
      throw err;
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

  /** Reads up to `buf.length` bytes. Resolves with the count, 0 at end of stream. An empty buffer is refused. */
  recv(buf: Uint8Array, opts?: IoCallOptions): Promise<number> {
    try {
      const b = checkBytes(buf, 'recv');
      if (b.byteLength === 0) throw new InvalidArgumentError('recv: the buffer is empty (0 would be mistaken for end of stream)');
      if (this._closed) throw closedError('recv', { fd: this.fd });
      return this._rt.io({ op: 'recv', fd: this.fd, buffer: b, len: b.byteLength }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Sends bytes from `buf`; resolves with how many the kernel took (may be fewer: see `sendAll`). */
  send(buf: Uint8Array, opts?: IoCallOptions): Promise<number> {
    try {
      const b = checkBytes(buf, 'send');
      if (this._closed) throw closedError('send', { fd: this.fd });
      if (b.byteLength === 0) return Promise.resolve(0);
      return this._rt.io({ op: 'send', fd: this.fd, buffer: b, len: b.byteLength }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Sends all of `buf`, looping over short sends. */
  async sendAll(buf: Uint8Array, opts?: IoCallOptions): Promise<void> {
    let done = 0;
    const total = checkBytes(buf, 'send').byteLength;
    while (done < total) {
      const n = await this.send(done === 0 ? buf : buf.subarray(done), opts);
      if (n <= 0) throw new RuntimeError('IO_ERROR', `send returned ${n} after ${done} of ${total} bytes`);
      done += n;
    }
  }

  /**
   * Half-closes the connection: `'write'` (default) sends FIN after queued bytes, so the peer's
   * `recv` returns 0 while this side can still read; `'read'` and `'both'` as `shutdown(2)`.
   */
  async shutdown(how: 'read' | 'write' | 'both' = 'write'): Promise<void> {
    const n = how === 'read' ? 0 : how === 'write' ? 1 : how === 'both' ? 2 : -1;
    if (n < 0) throw new InvalidArgumentError(`shutdown: how must be 'read', 'write' or 'both', got ${String(how)}`);
    if (this._closed) throw closedError('shutdown', { fd: this.fd });
    await this._rt.io({ op: 'shutdown', fd: this.fd, how: n as 0 | 1 | 2 }, undefined, this);
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
   * settle with their result if they won). Idempotent.
   */
  close(): Promise<void> {
    if (this._closing !== null) return this._closing;
    this._closed = true;
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
