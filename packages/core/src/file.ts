import { constants as fsConstants, fstatSync } from 'node:fs';
import type { BufferHandle, IoBuffer } from './backend.js';
import { InvalidArgumentError, IoError, RuntimeError, closedError, ioErrorFromCode } from './errors.js';
import { checkSignal, deallocatedError, isDeallocated } from './io-operation.js';
import { abortReason, currentRuntime, noop, type IoOwner, type PendingIo, type Runtime, type TrackedResource } from './runtime.js';

/**
 * How to open a file. With no flags a file is opened read-only. Each flag is a boolean (or left
 * out); any other value is refused with `INVALID_ARGUMENT`.
 */
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
   * ordinary, unaligned JS memory) and on systems without `O_DIRECT` (macOS). `chunks()` on such
   * a file reads whole 4096-byte blocks into aligned pool buffers: its `chunkSize` and `position`
   * must be multiples of 4096.
   */
  direct?: boolean;
}

/** Per-call options of file and socket operations. */
export interface IoCallOptions {
  /** Aborting rejects the call with the signal's reason and cancels the backend operation. */
  signal?: AbortSignal;
}

/** Options of {@link File.chunks}. */
export interface ChunkOptions {
  /**
   * Bytes per read, and so the largest chunk (default 65536, at most 1 GiB). On a file opened with
   * `direct: true`: a multiple of 4096, at most the `bufferPool`'s largest size class.
   */
  chunkSize?: number;
  /**
   * Where to start reading (default 0). The file position is neither used nor moved. On a file
   * opened with `direct: true`: a multiple of 4096.
   */
  position?: number;
  /** Bytes to read at most (default: to the end of the file). */
  length?: number;
  /** Reads kept in flight ahead of the one being consumed (default 4, 1..64). */
  readAhead?: number;
  /**
   * Yield views of the iterator's own `readAhead + 1` buffers (from the runtime's `bufferPool`
   * when it has the size) instead of a new buffer per chunk. No allocation per chunk, but a
   * chunk is only valid until the next call to `next()` or `return()` (the next turn of a
   * `for await` loop, or leaving it): copy what you keep. Default false.
   */
  reuse?: boolean;
  /**
   * Aborting ends the iteration: the pending or next `next()` rejects with the signal's reason
   * and the reads in flight are cancelled.
   */
  signal?: AbortSignal;
}

const CHUNK_KEYS = new Set(['chunkSize', 'position', 'length', 'readAhead', 'reuse', 'signal']);
const MAX_CHUNK = 1 << 30;
const MAX_READ_AHEAD = 64;

/** Validated {@link ChunkOptions}; throws `INVALID_ARGUMENT`. */
function checkChunkOptions(o: unknown): { chunkSize: number; position: number; end: number; readAhead: number; reuse: boolean; signal: AbortSignal | undefined } {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('chunks: options must be an object');
  for (const k of Object.keys(o)) {
    if (!CHUNK_KEYS.has(k)) throw new InvalidArgumentError(`chunks: unknown option '${k}' (known: ${[...CHUNK_KEYS].join(', ')})`);
  }
  const { chunkSize = 65536, position = 0, length, readAhead = 4, reuse = false, signal } = o as ChunkOptions;
  const int = (v: unknown, name: string, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new InvalidArgumentError(`chunks: ${name} must be an integer in ${min}..${max}, got ${String(v)}`);
    }
    return v;
  };
  int(chunkSize, 'chunkSize', 1, MAX_CHUNK);
  int(position, 'position', 0, Number.MAX_SAFE_INTEGER);
  if (length !== undefined) int(length, 'length', 0, Number.MAX_SAFE_INTEGER - position);
  int(readAhead, 'readAhead', 1, MAX_READ_AHEAD);
  if (typeof reuse !== 'boolean') throw new InvalidArgumentError(`chunks: reuse must be a boolean, got ${typeof reuse}`);
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('chunks: signal must be an AbortSignal');
  return { chunkSize, position, end: length === undefined ? Infinity : position + length, readAhead, reuse, signal };
}

/** One read of {@link File.chunks} in flight. */
interface ChunkRead {
  readonly done: Promise<number>;
  readonly buf: Uint8Array;
  readonly offset: number;
  readonly len: number;
}

const FLAG_KEYS = new Set(['read', 'write', 'create', 'exclusive', 'truncate', 'append', 'direct']);

/** Translates {@link OpenFlags} to `open(2)` flags; exported for backends' tests. */
export function openFlagsToNumber(flags: OpenFlags, directIo: boolean): number {
  if (flags === null || typeof flags !== 'object') throw new InvalidArgumentError('flags must be an object such as { read: true, write: true }');
  for (const k of Object.keys(flags)) {
    if (!FLAG_KEYS.has(k)) throw new InvalidArgumentError(`unknown open flag '${k}' (known: ${[...FLAG_KEYS].join(', ')})`);
    const v = (flags as Record<string, unknown>)[k];
    if (v !== undefined && typeof v !== 'boolean') {
      throw new InvalidArgumentError(`open flag '${k}' must be a boolean, got ${v === null ? 'null' : typeof v} ${typeof v === 'object' ? '' : String(v)}`.trimEnd());
    }
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
        "direct: true needs a backend with aligned native buffers (features.directIo): use backend 'io_uring' or 'epoll'",
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
  if (buf !== null && typeof buf === 'object' && (buf as BufferHandle).bytes instanceof Uint8Array) {
    if (isDeallocated(buf)) throw deallocatedError(syscall);
    return buf as BufferHandle;
  }
  throw new InvalidArgumentError(`${syscall}: buffer must be a Uint8Array or a BufferHandle, got ${buf === null ? 'null' : typeof buf}`);
}

function lengthOf(buf: IoBuffer): number {
  return buf instanceof Uint8Array ? buf.byteLength : buf.bytes.byteLength;
}

/** The block size `chunks()` keeps reads of a `direct: true` file aligned to. */
const DIRECT_BLOCK = 4096;

/**
 * Whether `fd` can seek. A FIFO or a socket cannot: node:fs and epoll get `ESPIPE` from the
 * kernel for a read or write at an offset, but io_uring ignores the offset on them (it reads
 * in arrival order, so chunks came back reordered and positioned reads read the wrong bytes).
 * Asked once when the file is opened, not per operation. A character device (a tty) is left to
 * the kernel: some seek (`/dev/zero`), some do not, and fstat cannot tell them apart.
 */
function canSeek(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return !(st.isFIFO() || st.isSocket());
  } catch {
    return true; // the kernel says ESPIPE if it cannot
  }
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
  /**
   * Where the next read or write without a position goes. The file keeps its own position and
   * passes it as an explicit offset, because io_uring's "current position" (offset -1) is not
   * reliable: after a short write (disk full, file size limit) this kernel leaves the position
   * where it was, so the next write overwrote the same bytes and `writeAll` reported success for
   * data never stored. -1: the kernel's position is used, for files opened with `append` (every
   * write goes to the end whatever the offset) and fds that cannot seek (a FIFO or a socket,
   * known at open; a tty, once the kernel said `ESPIPE`).
   */
  private _cursor: number;
  /** The turn of the last position-less operation queued (they run one at a time), or null. */
  private _cursorTail: Promise<void> | null = null;

  private constructor(
    private readonly _rt: Runtime,
    /** The kernel file descriptor (valid until `close`). */
    readonly fd: number,
    /** The path it was opened with. */
    readonly path: string,
    append: boolean,
    /** Opened with `direct: true` (`O_DIRECT`): `chunks()` reads aligned blocks into pool buffers. */
    private readonly _direct: boolean,
    /**
     * The fd cannot seek (a FIFO, a socket): calls at a position and `chunks()` reject with
     * `ESPIPE` on every backend (io_uring would ignore the offset), position-less ones use the
     * kernel's position.
     */
    private readonly _noSeek: boolean,
  ) {
    this._cursor = append || _noSeek ? -1 : 0;
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
    return new File(rt, fd, path, flags.append === true, flags.direct === true, !canSeek(fd));
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
      if (offset < 0) {
        if (this._atCursorNeeded()) return this._atCursor('read', opts?.signal, (at) => this._rt.io({ op: 'read', fd: this.fd, buffer: b, offset: at, len: lengthOf(b) }, opts?.signal, this, true));
      } else if (this._noSeek) throw this._espipe('read');
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
      if (offset < 0) {
        if (this._atCursorNeeded()) return this._atCursor('write', opts?.signal, (at) => this._rt.io({ op: 'write', fd: this.fd, buffer: b, offset: at, len: lengthOf(b) }, opts?.signal, this, true));
      } else if (this._noSeek) throw this._espipe('write');
      return this._rt.io({ op: 'write', fd: this.fd, buffer: b, offset, len: lengthOf(b) }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Writes all of `buf`, looping over short writes. With a position, later chunks follow it. */
  async writeAll(buf: Uint8Array | BufferHandle, position?: number, opts?: IoCallOptions): Promise<void> {
    const b = checkBuffer(buf, 'write');
    const bytes = b instanceof Uint8Array ? b : b.bytes;
    let pos = checkPosition(position, 'write');
    if (this._closed) throw closedError('write', { fd: this.fd, path: this.path });
    let done = 0;
    while (done < bytes.byteLength) {
      // The first write takes the caller's buffer as given (a pool handle stays a handle).
      const n = await this.write(done === 0 ? b : bytes.subarray(done), pos, opts);
      if (n === 0) throw new RuntimeError('IO_ERROR', `write returned 0 bytes at offset ${done} of ${this.path}`);
      done += n;
      if (pos >= 0) pos += n;
    }
  }

  /** What a call at a position on an fd that cannot seek rejects with (as node:fs's pread does). */
  private _espipe(syscall: string): IoError {
    return ioErrorFromCode('ESPIPE', syscall, { fd: this.fd });
  }

  /** Whether a position-less call goes through {@link File._atCursor} (see `_cursor`). */
  private _atCursorNeeded(): boolean {
    // Queued ones first even once the cursor is given up, so calls keep their order.
    return this._cursor >= 0 || this._cursorTail !== null;
  }

  /**
   * Runs a read or write without a position at the file's own position (`_cursor`), after the
   * position-less calls before it, so each starts where the previous one ended, as with the
   * kernel's position. An abort while it waits for its turn rejects it at once. An abort once it
   * runs cancels it and settles like a stream operation (`run` passes `settleOnAbort` to `io`):
   * with what the kernel did if it finished first (the position advances by that), with the
   * signal's reason if the cancel won. Either way the next call's turn comes only then, so it
   * never starts where an aborted write is still writing.
   */
  private _atCursor(syscall: string, signal: AbortSignal | undefined, run: (at: number) => Promise<number>): Promise<number> {
    try {
      checkSignal(signal, syscall);
    } catch (err) {
      return Promise.reject(err);
    }
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const prev = this._cursorTail;
    let result: Promise<number>;
    let turn: Promise<unknown>;
    if (prev === null) {
      result = this._cursorOp(syscall, run);
      turn = result;
    } else {
      let start!: () => Promise<unknown> | undefined;
      result = new Promise<number>((resolve, reject) => {
        let waiting = true;
        const onAbort = (): void => {
          waiting = false;
          reject(abortReason(signal!));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        start = () => {
          if (!waiting) return undefined; // aborted while queued: its turn is over
          waiting = false;
          signal?.removeEventListener('abort', onAbort);
          const op = this._cursorOp(syscall, run);
          op.then(resolve, reject);
          return op;
        };
      });
      turn = prev.then(start);
    }
    const tail = turn.then(noop, noop);
    this._cursorTail = tail;
    void tail.then(() => {
      if (this._cursorTail === tail) this._cursorTail = null;
    });
    return result;
  }

  /** One position-less operation at `_cursor`, which it then advances by the bytes done. */
  private _cursorOp(syscall: string, run: (at: number) => Promise<number>): Promise<number> {
    if (this._closed) return Promise.reject(closedError(syscall, { fd: this.fd, path: this.path }));
    const at = this._cursor;
    if (at < 0) return run(-1);
    return run(at).then(
      (n) => {
        if (this._cursor >= 0) this._cursor = at + n;
        return n;
      },
      (err: unknown) => {
        if ((err as { code?: unknown } | null)?.code !== 'ESPIPE') throw err;
        // Not seekable (a FIFO, a tty): there is no position to keep, the kernel reads in order.
        this._cursor = -1;
        return this._closed ? Promise.reject(closedError(syscall, { fd: this.fd, path: this.path })) : run(-1);
      },
    );
  }

  /** Scatter read: fills `bufs` in order with one system call. Resolves with the total bytes read. */
  readv(bufs: Uint8Array[], position?: number, opts?: IoCallOptions): Promise<number> {
    try {
      const buffers = checkBuffers(bufs, 'readv');
      const offset = checkPosition(position, 'readv');
      if (this._closed) throw closedError('readv', { fd: this.fd, path: this.path });
      if (offset < 0) {
        if (this._atCursorNeeded()) return this._atCursor('readv', opts?.signal, (at) => this._rt.io({ op: 'readv', fd: this.fd, buffers, offset: at }, opts?.signal, this, true));
      } else if (this._noSeek) throw this._espipe('readv');
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
      if (offset < 0) {
        if (this._atCursorNeeded()) return this._atCursor('writev', opts?.signal, (at) => this._rt.io({ op: 'writev', fd: this.fd, buffers, offset: at }, opts?.signal, this, true));
      } else if (this._noSeek) throw this._espipe('writev');
      return this._rt.io({ op: 'writev', fd: this.fd, buffers, offset }, opts?.signal, this);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * The file's bytes in order, as an async iterator of chunks, with `readAhead` reads kept in
   * flight so the backend always has the next ones (on io_uring they reach the kernel in one
   * submission). Reads at explicit offsets from `position`; ends at the end of the file or after
   * `length` bytes. A short read is followed by a read at the byte after it, never a gap, so a
   * file that grows while it is read yields contiguous bytes. Chunks are new buffers the caller
   * owns unless `reuse` is set.
   *
   * Errors (bad options, a closed file, a failed read) reject `next()`; the reads still in flight
   * are cancelled and awaited first, so none outlives the iteration. Leaving a `for await` loop
   * early does the same (with `next()` by hand, call `return()`: an iteration abandoned half way
   * keeps its reads' buffers counted in the pool). Closing the file ends the iteration with `EBADF`.
   */
  chunks(opts: ChunkOptions = {}): AsyncIterableIterator<Uint8Array> {
    return this._chunks(opts);
  }

  /** `for await (const chunk of file)`: {@link File.chunks} with its defaults. */
  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array> {
    return this._chunks({});
  }

  /** Readers started by `chunks()` and not yet finished: closing the file cancels their reads. */
  private _readers: Set<IoOwner> | null = null;

  private async *_chunks(opts: ChunkOptions): AsyncGenerator<Uint8Array, void, undefined> {
    const o = checkChunkOptions(opts);
    const { chunkSize, position, readAhead, reuse, signal } = o;
    let end = o.end;
    const rt = this._rt;
    const direct = this._direct;
    if (direct) {
      // O_DIRECT wants aligned memory, offsets and lengths: whole blocks into aligned pool buffers.
      if (chunkSize % DIRECT_BLOCK !== 0 || position % DIRECT_BLOCK !== 0) {
        throw new InvalidArgumentError(
          `chunks: on a file opened with direct: true, chunkSize and position must be multiples of ${DIRECT_BLOCK}, got chunkSize ${chunkSize} and position ${position}`,
        );
      }
      if (chunkSize > rt.bufferPool.maxSize) {
        throw new InvalidArgumentError(
          `chunks: on a file opened with direct: true, chunkSize ${chunkSize} must fit the bufferPool's largest size class (${rt.bufferPool.maxSize}) for aligned memory`,
        );
      }
    }
    /** Ends the iteration once the file is closed (`EBADF`) or the signal aborted (its reason). */
    const throwIfEnded = (): void => {
      if (this._closed) throw closedError('read', { fd: this.fd, path: this.path });
      if (signal?.aborted) throw abortReason(signal);
    };
    throwIfEnded();
    // Reads at offsets: refused on an fd that cannot seek, as node:fs and epoll get from the kernel.
    if (this._noSeek) throw this._espipe('read');
    // The reads of this iteration are linked here, not on the file, so leaving early cancels only them.
    const owner: IoOwner = { _ioHead: null };
    (this._readers ??= new Set()).add(owner);
    const onAbort = (): void => rt._cancelOwned(owner);
    signal?.addEventListener('abort', onAbort, { once: true });
    const inflight: ChunkRead[] = [];
    const spare: Uint8Array[] = [];
    // Reused buffers come from the runtime's pool when it has the size (memory already faulted
    // in, and native on io_uring), and go back to it when the iteration ends. A direct file always
    // reads into them (aligned), and without `reuse` copies each chunk out.
    const recycle = reuse || direct;
    const handles: BufferHandle[] = [];
    const pool = recycle && chunkSize <= rt.bufferPool.maxSize ? rt.bufferPool : null;
    const reusable = (): Uint8Array => {
      const h = pool?.allocate(chunkSize) ?? null;
      if (h === null) {
        if (direct) {
          throw new IoError('ENOMEM', -12, 'read', `read ENOMEM: the bufferPool has no room (maxMemory) for the aligned buffers of chunks() on a direct file (fd ${this.fd})`);
        }
        return new Uint8Array(chunkSize);
      }
      handles.push(h);
      return h.bytes;
    };
    let next = position;
    const fill = (): void => {
      while (inflight.length < readAhead && next < end) {
        const len = Math.min(chunkSize, end - next);
        // A direct read asks for whole blocks (the chunk is cut to `len` below).
        const readLen = direct ? Math.ceil(len / DIRECT_BLOCK) * DIRECT_BLOCK : len;
        const buf = recycle ? (spare.pop() ?? reusable()) : Buffer.allocUnsafe(len);
        const done = rt.io({ op: 'read', fd: this.fd, buffer: readLen === buf.byteLength ? buf : buf.subarray(0, readLen), offset: next, len: readLen }, undefined, owner);
        // Settled out of order (a later read may fail while an earlier one is consumed): mark
        // every read handled now; the await below still sees its error.
        done.catch(noop);
        inflight.push({ done, buf, offset: next, len });
        next += len;
      }
    };
    let held: Uint8Array | null = null;
    try {
      fill();
      while (inflight.length > 0) {
        const r = inflight.shift()!;
        let n: number;
        try {
          n = await r.done;
        } catch (err) {
          throwIfEnded();
          throw err;
        }
        throwIfEnded();
        if (n > r.len) n = r.len; // a direct read of whole blocks past `length`
        // (A chunk whose memory the caller transferred away is not reused.)
        if (reuse && held !== null && held.byteLength !== 0) spare.push(held);
        held = null;
        if (n === 0) return;
        if (n < r.len) {
          // Short read (end of file, for now): what is in flight after it starts past a gap.
          // Let those settle, ignore them, and go on from the byte after this chunk.
          if (inflight.length > 0) await settleAll(inflight.splice(0), recycle ? spare : null);
          next = r.offset + n;
          // A direct read cannot go on from a byte that is not block-aligned: the file ends there.
          if (direct && next % DIRECT_BLOCK !== 0) end = next;
        }
        let chunk: Uint8Array;
        if (direct && !reuse) {
          // The caller owns its chunk: copy it out of the aligned buffer, which is read into again.
          chunk = Buffer.allocUnsafe(n);
          chunk.set(n === r.buf.byteLength ? r.buf : r.buf.subarray(0, n));
          spare.push(r.buf);
        } else {
          held = r.buf;
          chunk = n === r.buf.byteLength ? r.buf : r.buf.subarray(0, n);
        }
        fill();
        yield chunk;
        // Closed or aborted while the caller had the chunk (perhaps with nothing left in flight).
        throwIfEnded();
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (inflight.length > 0) {
        rt._cancelOwned(owner);
        await settleAll(inflight, null);
      }
      this._readers?.delete(owner);
      for (const h of handles) pool!.deallocate(h);
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
    if (this._readers !== null) for (const r of this._readers) this._rt._cancelOwned(r);
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

/** Waits until every read in `reads` has settled, ignoring results; gives their buffers to `spare`. */
async function settleAll(reads: ChunkRead[], spare: Uint8Array[] | null): Promise<void> {
  for (const r of reads) {
    await r.done.then(noop, noop);
    spare?.push(r.buf);
  }
}
