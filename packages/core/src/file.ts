import { constants as fsConstants } from 'node:fs';
import type { BufferHandle, IoBuffer } from './backend.js';
import { InvalidArgumentError, RuntimeError, closedError } from './errors.js';
import { currentRuntime, type IoOwner, type PendingIo, type Runtime, type TrackedResource } from './runtime.js';

/** How to open a file. With no flags a file is opened read-only. */
export interface OpenFlags {
  read?: boolean;
  write?: boolean;
  /** Create the file if it does not exist (mode from `File.open`'s third argument). */
  create?: boolean;
  /** Fail with `EEXIST` if the file exists (with `create`). */
  exclusive?: boolean;
  truncate?: boolean;
  append?: boolean;
  /**
   * `O_DIRECT`: bypass the page cache. The kernel then wants buffers, offsets and lengths aligned
   * to the device's logical block size (4096 is safe): use buffers from the runtime's
   * `bufferPool`, which are 4096-aligned native memory on backends with `features.directIo`.
   * Refused with `INVALID_ARGUMENT` on backends without it (the `node` backend's buffers are
   * ordinary, unaligned JS memory) and on systems without `O_DIRECT` (macOS).
   */
  direct?: boolean;
}

/** Per-call options of file and socket operations. */
export interface IoCallOptions {
  /** Aborting rejects the call with the signal's reason and cancels the backend operation. */
  signal?: AbortSignal;
}

const FLAG_KEYS = new Set(['read', 'write', 'create', 'exclusive', 'truncate', 'append', 'direct']);

/** Translates {@link OpenFlags} to `open(2)` flags; exported for backends' tests. */
export function openFlagsToNumber(flags: OpenFlags, directIo: boolean): number {
  if (flags === null || typeof flags !== 'object') throw new InvalidArgumentError('flags must be an object such as { read: true, write: true }');
  for (const k of Object.keys(flags)) {
    if (!FLAG_KEYS.has(k)) throw new InvalidArgumentError(`unknown open flag '${k}' (known: ${[...FLAG_KEYS].join(', ')})`);
  }
  const write = flags.write === true || flags.append === true;
  const read = flags.read === true || !write;
  let n = read && write ? fsConstants.O_RDWR : write ? fsConstants.O_WRONLY : fsConstants.O_RDONLY;
  if (flags.create === true) n |= fsConstants.O_CREAT;
  if (flags.exclusive === true) n |= fsConstants.O_EXCL;
  if (flags.truncate === true) {
    if (!write) throw new InvalidArgumentError('truncate needs write: true');
    n |= fsConstants.O_TRUNC;
  }
  if (flags.append === true) n |= fsConstants.O_APPEND;
  if (flags.direct === true) {
    const direct = (fsConstants as Record<string, number | undefined>).O_DIRECT;
    if (direct === undefined) throw new InvalidArgumentError('direct: true is not available on this OS (no O_DIRECT)');
    if (!directIo) {
      throw new InvalidArgumentError(
        "direct: true needs a backend with aligned native buffers (features.directIo): use backend 'io_uring'",
      );
    }
    n |= direct;
  }
  // Node opens every fd close-on-exec itself; io_uring's openat needs it said.
  return n | ((fsConstants as Record<string, number | undefined>).O_CLOEXEC ?? (process.platform === 'linux' ? 0o2000000 : 0));
}

function checkPosition(position: number | undefined, syscall: string): number {
  if (position === undefined || position === null) return -1;
  if (typeof position !== 'number' || !Number.isSafeInteger(position) || position < -1) {
    throw new InvalidArgumentError(`${syscall}: position must be a non-negative integer (or -1 / omitted for the current position), got ${String(position)}`);
  }
  return position;
}

function checkBuffer(buf: unknown, syscall: string): IoBuffer {
  if (buf instanceof Uint8Array) return buf;
  if (buf !== null && typeof buf === 'object' && (buf as BufferHandle).bytes instanceof Uint8Array) return buf as BufferHandle;
  throw new InvalidArgumentError(`${syscall}: buffer must be a Uint8Array or a BufferHandle, got ${buf === null ? 'null' : typeof buf}`);
}

function lengthOf(buf: IoBuffer): number {
  return buf instanceof Uint8Array ? buf.byteLength : buf.bytes.byteLength;
}

function checkBuffers(bufs: unknown, syscall: string): Uint8Array[] {
  if (!Array.isArray(bufs)) throw new InvalidArgumentError(`${syscall}: buffers must be an array of Uint8Array`);
  for (const b of bufs) {
    if (!(b instanceof Uint8Array)) throw new InvalidArgumentError(`${syscall}: every buffer must be a Uint8Array`);
  }
  return bufs as Uint8Array[];
}

/**
 * An open file on the current runtime's backend. Every method returns a promise and never
 * throws synchronously; I/O on a closed file rejects with `EBADF`. A buffer handed to `read` or
 * `write` belongs to the operation until its promise settles (the backend pins it; do not reuse
 * it earlier, even after an abort, since the kernel may still be writing into it).
 *
 * Files left open are closed when their runtime shuts down.
 */
export class File implements TrackedResource, IoOwner {
  /** @internal */
  /** @internal Head of this file's in-flight operations (see IoOwner). */
  _ioHead: PendingIo | null = null;
  private _closed = false;
  private _closing: Promise<void> | null = null;

  private constructor(
    private readonly _rt: Runtime,
    /** The kernel file descriptor (valid until `close`). */
    readonly fd: number,
    /** The path it was opened with. */
    readonly path: string,
  ) {
    _rt._trackResource(this);
  }

  /**
   * Opens `path` on the current runtime (`NO_RUNTIME` outside one). `mode` applies when the file
   * is created (default `0o666`, less the umask).
   */
  static async open(path: string, flags: OpenFlags = { read: true }, mode = 0o666, opts: IoCallOptions = {}): Promise<File> {
    const rt = currentRuntime();
    if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
      throw new InvalidArgumentError(`path must be a non-empty string without NUL bytes, got ${JSON.stringify(path)}`);
    }
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new InvalidArgumentError(`mode must be an integer in 0..0o7777, got ${String(mode)}`);
    const n = openFlagsToNumber(flags, rt.backend.features.directIo);
    let fd: number;
    try {
      fd = await rt.io({ op: 'open', path, flags: n, mode }, opts.signal);
    } catch (err) {
      if (err && typeof err === 'object' && (err as { path?: string }).path === undefined && 'syscall' in err) {
        (err as { path?: string }).path = path;
      }
      throw err;
    }
    return new File(rt, fd, path);
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this._closed;
  }

  /**
   * Reads up to `buf.length` bytes at `position` (omitted: the current file position, which then
   * advances). Resolves with the number of bytes read, 0 at end of file.
   */
  read(buf: Uint8Array | BufferHandle, position?: number, opts?: IoCallOptions): Promise<number> {
    try {
      const b = checkBuffer(buf, 'read');
      const offset = checkPosition(position, 'read');
      if (this._closed) throw closedError('read', { fd: this.fd, path: this.path });
      return this._rt.io({ op: 'read', fd: this.fd, buffer: b, offset, len: lengthOf(b) }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Writes `buf` at `position` (omitted: the current position). Resolves with the bytes written (may be short). */
  write(buf: Uint8Array | BufferHandle, position?: number, opts?: IoCallOptions): Promise<number> {
    try {
      const b = checkBuffer(buf, 'write');
      const offset = checkPosition(position, 'write');
      if (this._closed) throw closedError('write', { fd: this.fd, path: this.path });
      return this._rt.io({ op: 'write', fd: this.fd, buffer: b, offset, len: lengthOf(b) }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Writes all of `buf`, looping over short writes. With a position, later chunks follow it. */
  async writeAll(buf: Uint8Array, position?: number, opts?: IoCallOptions): Promise<void> {
    let done = 0;
    let pos = checkPosition(position, 'write');
    while (done < buf.byteLength) {
      const n = await this.write(buf.subarray(done), pos, opts);
      if (n === 0) throw new RuntimeError('IO_ERROR', `write returned 0 bytes at offset ${done} of ${this.path}`);
      done += n;
      if (pos >= 0) pos += n;
    }
  }

  /** Scatter read: fills `bufs` in order with one system call. Resolves with the total bytes read. */
  readv(bufs: Uint8Array[], position?: number, opts?: IoCallOptions): Promise<number> {
    try {
      const buffers = checkBuffers(bufs, 'readv');
      const offset = checkPosition(position, 'readv');
      if (this._closed) throw closedError('readv', { fd: this.fd, path: this.path });
      return this._rt.io({ op: 'readv', fd: this.fd, buffers, offset }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Gather write: writes `bufs` in order with one system call. Resolves with the total bytes written. */
  writev(bufs: Uint8Array[], position?: number, opts?: IoCallOptions): Promise<number> {
    try {
      const buffers = checkBuffers(bufs, 'writev');
      const offset = checkPosition(position, 'writev');
      if (this._closed) throw closedError('writev', { fd: this.fd, path: this.path });
      return this._rt.io({ op: 'writev', fd: this.fd, buffers, offset }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Flushes the file's data and metadata to the device (`datasync`: data only). */
  async fsync(opts?: IoCallOptions & { datasync?: boolean }): Promise<void> {
    if (this._closed) throw closedError('fsync', { fd: this.fd, path: this.path });
    await this._rt.io({ op: 'fsync', fd: this.fd, datasync: opts?.datasync === true }, opts?.signal, this);
  }

  /**
   * Closes the file. Operations still in flight are cancelled first (they reject with
   * `ECANCELED`, or settle with their result if they won the race). Idempotent: a second call
   * returns the same promise.
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
