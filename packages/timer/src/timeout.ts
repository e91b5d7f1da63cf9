import { CancelledError, InvalidArgumentError } from '@miniss/core';
import { currentDriver, type TimerDriver } from './driver.js';
import { checkDelay } from './validate.js';
import type { TimerWheel } from './wheel.js';

/** What `timeout` and `withTimeout` reject with when the time runs out first. */
export class TimeoutError extends Error {
  readonly code = 'TIMEOUT' as const;
  /** The limit that was exceeded, in milliseconds. */
  readonly ms: number;
  constructor(ms: number, message = `the operation timed out after ${ms} ms`) {
    super(message);
    this.name = 'TimeoutError';
    this.ms = ms;
  }
}

/** The work a timeout races: a promise, or a function that starts it (and may take a signal). */
export type TimeoutWork<T> = PromiseLike<T> | ((signal: AbortSignal) => PromiseLike<T>);

class TimeoutTimer<T> {
  /**
   * The wheel fires a timeout only at a macrotask boundary, after every promise reaction of the
   * timers that fell due before it (see `TimerTarget` and the driver's `_fire`): work settled by
   * an earlier timer of the same (late) wake-up has cancelled it by then, so `fire` may reject at
   * once.
   */
  readonly barrier = true;
  id = -1;
  settled = false;
  controller: AbortController | null = null;
  unhook: (() => void) | null = null;
  constructor(
    readonly wheel: TimerWheel,
    readonly ms: number,
    readonly resolve: (v: T) => void,
    readonly reject: (e: unknown) => void,
  ) {}

  fire(): void {
    const err = new TimeoutError(this.ms);
    this._finish();
    this.controller?.abort(err);
    this.reject(err);
  }

  drop(reason: Error): void {
    if (this.settled) return;
    this._finish();
    this.controller?.abort(reason);
    this.reject(reason);
  }

  onTaskCancelled(): void {
    if (this.settled) return;
    this.unhook = null;
    const err = new CancelledError('timeout was cancelled because its task was cancelled');
    this.wheel.cancel(this.id);
    this._finish();
    this.controller?.abort(err);
    this.reject(err);
  }

  workDone(ok: boolean, value: unknown): void {
    if (this.settled) return; // timed out, cancelled or shut down first: the late outcome is dropped
    this.wheel.cancel(this.id);
    this._finish();
    if (ok) this.resolve(value as T);
    else this.reject(value);
  }

  private _finish(): void {
    this.settled = true;
    const u = this.unhook;
    if (u !== null) {
      this.unhook = null;
      u();
    }
  }
}

/**
 * Settles like `work` if it settles within `ms` milliseconds; otherwise rejects with a
 * {@link TimeoutError} (code `'TIMEOUT'`). When `work` is a function it is called at once with an
 * AbortSignal that is aborted (reason: the TimeoutError) when the time runs out, so the work can
 * stop instead of running on unobserved. The signal is created only if the function declares a
 * parameter to receive it (an AbortController costs ~1.7 us). The timer is removed as soon as
 * `work` settles. A late outcome of `work` is ignored (a late rejection is not reported as
 * unhandled). Called synchronously inside a task, the task's cancellation rejects it with
 * `CancelledError` and aborts the work's signal.
 *
 * "Within" is judged as Node's timers judge it: when the event loop wakes up late (it was busy)
 * and finds both the timer that settles `work` and the timeout due, the one due first wins. The
 * timeout fires only after every promise reaction of the timers due before it has run (from a
 * `setImmediate` right after the wake-up), so a busy loop does not turn work that was done
 * in time into a `TimeoutError`, and work due after the limit still times out.
 */
export function timeout<T>(ms: number, work: TimeoutWork<T>): Promise<T> {
  let d: TimerDriver;
  try {
    d = currentDriver();
    checkDelay(ms, 'timeout: ms');
  } catch (err) {
    return Promise.reject(err);
  }
  let controller: AbortController | null = null;
  let p: PromiseLike<T>;
  if (typeof work === 'function') {
    if (work.length > 0) controller = new AbortController();
    try {
      p = (work as (signal?: AbortSignal) => PromiseLike<T>)(controller?.signal);
    } catch (err) {
      return Promise.reject(err);
    }
    if (!isThenable(p)) {
      // A synchronous value: nothing to race.
      return Promise.resolve(p as T);
    }
  } else if (isThenable(work)) {
    p = work;
  } else {
    return Promise.reject(new InvalidArgumentError('timeout: work must be a promise (thenable) or a function returning one'));
  }
  const wheel = d.wheel;
  // One shared executor instead of a closure per call.
  const out = new Promise<T>(capture as (resolve: (v: T) => void, reject: (e: unknown) => void) => void);
  const e = new TimeoutTimer<T>(wheel, ms, capturedResolve as (v: T) => void, capturedReject!);
  capturedResolve = capturedReject = null;
  e.controller = controller;
  try {
    e.id = wheel.schedule(ms, e);
  } catch (err) {
    e.reject(err); // e.g. TIMER_LIMIT: the call rejects, as any failure inside it does
    return out;
  }
  if (d.runtime.currentTask !== null) e.unhook = d._onTaskCancel(() => e.onTaskCancelled());
  try {
    p.then(
      (v) => e.workDone(true, v),
      (err: unknown) => e.workDone(false, err),
    );
  } catch (err) {
    e.workDone(false, err); // a thenable whose then() throws: the call rejects with that error
  }
  return out;
}

// The settle functions of the promise `new Promise(capture)` just made (read at once, then cleared).
let capturedResolve: ((v: unknown) => void) | null = null;
let capturedReject: ((e: unknown) => void) | null = null;
function capture(resolve: (v: unknown) => void, reject: (e: unknown) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

/** `timeout(ms, work)` with the arguments the other way round (the seeds' `FutureExt::with_timeout`). */
export function withTimeout<T>(work: TimeoutWork<T>, ms: number): Promise<T> {
  return timeout(ms, work);
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return x !== null && (typeof x === 'object' || typeof x === 'function') && typeof (x as PromiseLike<unknown>).then === 'function';
}
