/**
 * The `IoBackend` contract: what every backend (`node` inside core, `io_uring`, `epoll`,
 * `kqueue` in their own packages) implements, and the only thing the runtime knows about I/O.
 *
 * It is the seeds' `IoBackend` trait made to fit inside Node's event loop. Seastar's
 * `reactor_backend` has four verbs (submit, reap, wait, wake); this has the same shape:
 *
 * - {@link IoBackend.submit} queues one operation and returns its id at once. It never blocks
 *   and never performs a system call per operation on a batching backend.
 * - {@link IoBackend.flush} hands everything queued since the last flush to the kernel, in one
 *   call across the JS/C++ boundary and (on io_uring) one `io_uring_enter`. The runtime calls
 *   it once per event-loop turn.
 * - {@link IoBackend.poll} reaps finished operations. With `timeoutMs` 0 it never blocks.
 * - {@link IoBackend.onReady} is how a backend joins Node's loop: it owns one pollable fd (the
 *   ring's registered eventfd, the epoll fd, the kqueue fd) watched by one `uv_poll_t`, and calls
 *   the registered function from the loop whenever `poll(0)` would return something. The runtime
 *   then reaps with `poll(0)` and resolves the waiting promises.
 *
 * Ownership of memory: a `Uint8Array` or {@link BufferHandle} passed in an operation belongs to
 * the backend from `submit` until the operation's completion has been returned by `poll`. The
 * backend keeps it alive (native backends pin the `ArrayBuffer`'s backing store, so neither
 * garbage collection, nor a detach, nor the caller dropping its reference can free memory the
 * kernel is still writing into). The caller must not read results out of it before then.
 *
 * Liveness: while at least one operation is in flight the backend keeps Node's event loop alive
 * (its `uv_poll_t` is referenced); with none in flight it must not, so a process with nothing to
 * do exits.
 *
 * Errors: `submit` throws only for a malformed operation (`INVALID_ARGUMENT`) or a closed backend
 * (`RUNTIME_SHUTDOWN`). Everything the kernel refuses, a closed or bogus fd included, completes
 * with an `IoError` whose `code` is the errno name (`'EBADF'`) and never crashes the process.
 * A cancelled operation completes with an `IoError` of code `'ECANCELED'`, or with its normal
 * result if it finished first: cancellation is a race the caller must accept.
 */

/** Opaque id of a submitted operation, unique within one backend instance. */
export type IoHandleId = number;

/** A buffer from a {@link BufferPool}; on `directIo` backends its bytes are 4096-aligned native memory. */
export interface BufferHandle {
  /** The usable bytes: `size` long, a view over `capacity` bytes of storage. */
  readonly bytes: Uint8Array;
  /** The size that was asked for. */
  readonly size: number;
  /** The size class the buffer came from (>= size). */
  readonly capacity: number;
}

/** An IP address and port. `host` is always a numeric address by the time it reaches a backend. */
export interface SocketAddress {
  host: string;
  port: number;
  family?: 4 | 6;
}

/** A buffer as operations take it. */
export type IoBuffer = BufferHandle | Uint8Array;

/**
 * One operation. Offsets are byte positions in a file; `-1` means "at the current file position"
 * (like `read(2)` instead of `pread(2)`). `len` bytes of `buffer` starting at its first byte are
 * used; `len` larger than the buffer is an `INVALID_ARGUMENT` at submit.
 *
 * Results (the `result` of the completion) per operation:
 * - `nop`, `timeout`, `fsync`, `close`, `shutdown`, `listen`, `connect`: 0.
 * - `read`, `readv`, `recv`: bytes read, 0 at end of file / orderly peer shutdown.
 * - `write`, `writev`, `send`: bytes written (may be short; callers loop).
 * - `open`, `accept`, `socket`: the new file descriptor.
 */
export type IoOperation =
  | { op: 'nop' }
  | { op: 'timeout'; ms: number }
  | { op: 'read'; fd: number; buffer: IoBuffer; offset: number; len: number }
  | { op: 'write'; fd: number; buffer: IoBuffer; offset: number; len: number }
  | { op: 'readv'; fd: number; buffers: Uint8Array[]; offset: number }
  | { op: 'writev'; fd: number; buffers: Uint8Array[]; offset: number }
  | { op: 'fsync'; fd: number; datasync?: boolean }
  /** `flags` are `fs.constants.O_*` bits; `O_CLOEXEC` is always added by the backend. */
  | { op: 'open'; path: string; flags: number; mode: number }
  | { op: 'close'; fd: number }
  /** Creates a TCP socket (non-blocking, close-on-exec, `TCP_NODELAY` on). */
  | { op: 'socket'; family: 4 | 6 }
  /** Binds `fd` (from `socket`) and listens. `reusePort` sets `SO_REUSEPORT`; `SO_REUSEADDR` is always set. */
  | { op: 'listen'; fd: number; addr: SocketAddress; backlog: number; reusePort: boolean }
  | { op: 'accept'; fd: number }
  /**
   * Connects `fd`. `timeoutMs` is honoured only by a backend whose `features.linkedTimeouts` is
   * true (the kernel ends the connect with `ETIMEDOUT`); `TcpStream.connect` passes it only to such
   * a backend and times the connect itself on the others.
   */
  | { op: 'connect'; fd: number; addr: SocketAddress; timeoutMs?: number }
  | { op: 'recv'; fd: number; buffer: IoBuffer; len: number }
  | { op: 'send'; fd: number; buffer: IoBuffer; len: number }
  /** `how`: 0 read side, 1 write side, 2 both (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`). */
  | { op: 'shutdown'; fd: number; how: 0 | 1 | 2 };

export type IoOpName = IoOperation['op'];

/** A finished operation. `result` is a non-negative number or the `Error` it failed with. */
export interface IoCompletion {
  handle: IoHandleId;
  result: number | Error;
  buffer?: BufferHandle;
}

export interface IoBackendFeatures {
  /** `O_DIRECT` files work: pool buffers are 4096-aligned native memory. */
  directIo: boolean;
  /** Submissions are batched: many operations reach the kernel in one system call. */
  batchSubmit: boolean;
  /** `readv`/`writev` go to the kernel as one vectored call (not emulated as a loop). */
  vectoredIo: boolean;
  /** A kernel thread polls the submission queue (io_uring `SQPOLL`): no syscall to submit. */
  sqpoll: boolean;
  /** `connect` honours `timeoutMs` in the kernel (io_uring `IORING_OP_LINK_TIMEOUT`). Absent means false. */
  linkedTimeouts?: boolean;
}

export type BackendName = 'io_uring' | 'epoll' | 'kqueue' | 'node';

export interface IoBackend {
  readonly name: BackendName;
  readonly features: IoBackendFeatures;

  /** The most operations handed to the kernel in one flush; more are queued, never dropped. Default 128. */
  readonly maxBatchSize: number;

  /** Operations submitted and not yet returned by `poll`. */
  readonly inFlight: number;

  /**
   * Queues `op` and returns its id at once. Never blocks. Does not necessarily start the
   * operation: batching backends start it at the next {@link flush}. Throws a `RuntimeError`
   * only for a malformed operation (`INVALID_ARGUMENT`: unknown op, negative length, length past
   * the buffer) or after {@link close} (`RUNTIME_SHUTDOWN`); everything else completes.
   */
  submit(op: IoOperation): IoHandleId;

  /**
   * Hands every operation queued since the last flush to the kernel, in one boundary crossing.
   * If the kernel's queue is full the rest stay queued for the next flush; nothing is dropped.
   * Returns how many were handed over. Never blocks. Backends that start operations at submit
   * (the `node` backend) return 0.
   */
  flush(): number;

  /**
   * Asks the kernel to cancel operation `id`. Best effort: returns false if `id` is unknown or
   * already completed; true means a cancellation was requested, and the operation still
   * completes exactly once (with `ECANCELED`, or its result if it won the race).
   */
  cancel(id: IoHandleId): boolean;

  /**
   * Returns finished operations (at most `maxBatchSize`... or all that are ready; callers loop
   * until an empty array). `timeoutMs` 0 (the default) never blocks; a positive value blocks the
   * calling thread for up to that long waiting for one completion, and must not be used on a
   * thread whose Node event loop has other work.
   */
  poll(timeoutMs?: number): IoCompletion[];

  /**
   * Optional allocation-free form of `poll`: hands each finished operation to `sink(handle,
   * result)` in the order `poll` would return them, and returns how many (callers loop until 0).
   * `sink` must not call `poll` or `drain`; it may submit and cancel. The runtime uses it in
   * place of `poll(0)` when a backend has it (io_uring does).
   */
  drain?(sink: (handle: IoHandleId, result: number | Error) => void, timeoutMs?: number): number;

  /**
   * Registers the function Node's event loop calls when completions are ready (null removes it).
   * The backend watches its one pollable fd with a `uv_poll_t` and calls `cb` from the loop; it
   * never calls `cb` synchronously from `submit`/`flush`.
   */
  onReady(cb: (() => void) | null): void;

  /** Local or peer address of a socket fd (sync, cheap). Throws an `IoError` (e.g. `ENOTCONN`, `EBADF`). */
  address(fd: number, which: 'local' | 'peer'): SocketAddress;

  /**
   * Optional: native memory of `capacity` bytes aligned to `alignment`, for {@link BufferPool}.
   * Present on `directIo` backends. The memory is freed when the returned array is collected.
   */
  allocateBuffer?(capacity: number, alignment: number): Uint8Array;

  /**
   * Optional (Linux native backends): creates a non-blocking eventfd owned by this backend,
   * closed by `close()`. Used as a cross-core doorbell: a sleeping core keeps a `read` of 8 bytes
   * in flight on it; another thread calls {@link signalFd} on the number to wake it.
   */
  eventfd?(): number;

  /** Optional: writes 1 to an eventfd created by any backend instance in this process (thread-safe). */
  signalFd?(fd: number): void;

  /** Optional: pins the calling thread to `cpu` (`sched_setaffinity`). Throws an `IoError` on failure. */
  setAffinity?(cpu: number): void;

  /**
   * Closes the backend: operations still in flight are cancelled and their buffers released
   * once the kernel lets go of them; the pollable fd is closed and the loop is no longer held.
   * Idempotent. After close, `submit` throws `RUNTIME_SHUTDOWN`.
   */
  close(): void;
}

/** What each backend package exports. */
export interface BackendModule {
  /** Creates one backend instance (one per runtime, per thread). */
  createBackend(options?: BackendOptions): IoBackend;
  /** Probes this OS/kernel without side effects that outlive the call. */
  isSupported(): { ok: boolean; reason?: string };
}

export interface BackendOptions {
  /** Submission queue entries (io_uring) or events per wait (epoll/kqueue). Default 256. */
  entries?: number;
  /** io_uring only: use a kernel SQ polling thread (costs a core; off by default). */
  sqpoll?: boolean;
  /** Largest number of operations handed to the kernel per flush. Default 128. */
  maxBatchSize?: number;
}

/** The empty array `poll` returns when nothing is ready: shared, so idle polls allocate nothing. */
/**
 * The longest delay Node's setTimeout honours (2^31 - 1 ms, about 24.8 days): it fires anything
 * longer after 1 ms. Every delay miniss hands to a Node timer is checked or capped against it.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const NO_COMPLETIONS: IoCompletion[] = Object.freeze([]) as unknown as IoCompletion[];
