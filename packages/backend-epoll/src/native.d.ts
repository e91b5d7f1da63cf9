/**
 * The TypeScript view of the `miniss_epoll` addon (native/binding.cc). Not public API: the
 * package's `EpollBackend` class wraps it.
 */

/** One epoll reactor joined to the calling thread's event loop by a uv_poll_t. */
export declare class NativeEpollBackend {
  /**
   * @param sq Submission buffer: `sqCap` descriptors of 8 int32 words, then `sqCap` pairs of float64.
   * @param cq Completion buffer: `cqCap` (id, result) float64 pairs.
   * @param onEvent Called from the event loop whenever completions are ready to reap. Kept in an
   *   internal field of this object, not in a GC root: it may reach the backend that owns this
   *   object. The object is held strongly while operations are in flight, weakly otherwise.
   */
  constructor(sq: ArrayBuffer, cq: ArrayBuffer, sqCap: number, cqCap: number, maxEvents: number, poolThreads: number, onEvent: () => void);
  /**
   * Starts `count` descriptors; their buffers/strings are in `objects`, or, when `objects` is
   * null, are the following arguments (cheaper to read in C++). Returns completions ready.
   */
  flush(count: number, objects: unknown[] | null, ...rest: unknown[]): number;
  /** Dispatches events (waiting up to timeoutMs) and writes completions to cq; returns how many. */
  reap(timeoutMs: number): number;
  /** Requests cancellation; false if unknown or already complete. */
  cancel(id: number): boolean;
  /** Operations handed to native code and not yet reaped. */
  inFlight(): number;
  /** [submitted, immediate, waited, pool, nowaitReads, epollCtl, epollWait, skipped, stale] */
  stats(): number[];
  /** A non-blocking eventfd owned by the backend, or -errno. */
  eventfd(): number;
  /** Cancels everything, joins the pool, closes every fd of the backend. Idempotent. */
  close(): void;
}

export interface NativeEpollAddon {
  EpollBackend: typeof NativeEpollBackend;
  /** [family, port, host] or -errno. */
  address(fd: number, peer: boolean): [4 | 6, number, string] | number;
  allocateBuffer(capacity: number, alignment: number): Uint8Array;
  /** 0 or -errno. */
  signalFd(fd: number): number;
  /** 0 or -errno. */
  setAffinity(cpu: number): number;
  /** 0 when epoll works here, else -errno. */
  probe(): number;
}
