/**
 * The TypeScript view of the `miniss_iouring` addon (native/binding.cc). Not public API: the
 * package's `IoUringBackend` class wraps it.
 */

/** One io_uring joined to the calling thread's event loop by a uv_poll_t on its registered eventfd. */
export declare class NativeIoUringBackend {
  /**
   * @param sq Submission buffer: `sqCap` descriptors of 8 int32 words, then `sqCap` triples of float64 (id, offset, ms-or-target).
   * @param cq Completion buffer: `cqCap` (id, result, cqe flags) float64 triples.
   * @param mode 0: best flags (SINGLE_ISSUER|COOP_TASKRUN, then COOP_TASKRUN, then none), 1: same, 2: no task-run flags, 3: SINGLE_ISSUER|DEFER_TASKRUN first (opt-in, loses eventfd wake-ups on 6.18).
   * @param onReady Called from the event loop whenever completions are ready: the addon has reaped
   *   `reaped` of them into `cq` already when `preReap(true)` is on (all the CQ ring held, unless
   *   that is `cqCap`), else 0. They stay there until the next `reap` call, which must not come
   *   before JS has read them.
   */
  constructor(
    sq: ArrayBuffer,
    cq: ArrayBuffer,
    sqCap: number,
    cqCap: number,
    entries: number,
    mode: number,
    sqpoll: boolean,
    sqIdleMs: number,
    onReady: (reaped: number) => void,
  );
  /** Turns `count` descriptors into SQEs; returns how many were taken (the rest did not fit). `hold`: JS still holds queued work. */
  /** flush(count, hold, objects) or flush(count, hold, null, ...objects); see native/binding.cc. */
  flush(count: number, hold: boolean, objects: unknown[] | null, ...spread: unknown[]): number;
  /** Writes completions into cq (waiting up to waitMs for the first); returns how many. */
  reap(waitMs: number, hold: boolean): number;
  /** Whether the addon reaps completions before calling onReady (true: JS consumes them) or leaves them in the ring. */
  preReap(on: boolean): void;
  /** Makes the loop call onReady on its next turn. */
  wake(hold: boolean): void;
  /** User operations handed to the kernel and not yet reaped. */
  inFlight(): number;
  /** A non-blocking eventfd owned by the backend, or -errno. */
  eventfd(): number;
  /** [enters, sqes submitted, cqes reaped, in flight, setup flags, kernel features, sq entries, cq entries, queued accepts] */
  stats(): number[];
  /** Cancels everything, waits for the kernel to release buffers, closes the ring. Idempotent. */
  close(): void;
}

export interface NativeIoUringAddon {
  IoUringBackend: typeof NativeIoUringBackend;
  /** [0 | -errno, reason]. */
  probe(): [number, string];
  /** [family, port, host] or -errno. */
  address(fd: number, peer: boolean): [4 | 6, number, string] | number;
  allocateBuffer(capacity: number, alignment: number): Uint8Array;
  /** 0 or -errno. */
  signalFd(fd: number): number;
  /** 0 or -errno. */
  setAffinity(cpu: number): number;
}
