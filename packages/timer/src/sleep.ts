import { CancelledError, InvalidArgumentError, RuntimeError, abortReason } from '@miniss/core';
import { currentDriver, type TaskTimers, type TaskWaiter, type TimerDriver } from './driver.js';
import { checkDelay } from './validate.js';
import { MAX_TIMERS, type TimerId } from './wheel.js';

export interface SleepOptions {
  /** Aborting it rejects the sleep with the signal's reason and frees its slot at once. */
  signal?: AbortSignal;
}

/** Sleep states kept for reuse per driver: enough for bursts, bounded so memory is returned. */
const POOL_MAX = 1024;

/**
 * The timer target of one `sleep`: it carries the promise's settle functions and is its own
 * abort listener (`handleEvent`), so a sleep allocates its promise and nothing else; states are
 * recycled through the driver's pool once settled.
 */
export class SleepTimer implements TaskWaiter {
  id: TimerId = -1;
  resolve: (() => void) | null = null;
  reject: ((err: unknown) => void) | null = null;
  signal: AbortSignal | null = null;
  driver: TimerDriver | null = null;
  // Links in the list of timers its task waits on (see TaskTimers in driver.ts).
  taskPrev: TaskWaiter | null = null;
  taskNext: TaskWaiter | null = null;
  taskGroup: TaskTimers | null = null;

  /** The deadline was reached (called by the wheel). */
  fire(): void {
    const resolve = this.resolve!;
    this._release();
    resolve();
  }

  /** The runtime shut down (called by the wheel's clear). */
  drop(reason: Error): void {
    this._settleWith(reason);
  }

  /** The signal aborted. */
  handleEvent(): void {
    if (this.signal === null) return;
    const err = abortReason(this.signal);
    this.driver!.wheel.cancel(this.id);
    this._settleWith(err);
  }

  /** The task that called sleep() was cancelled. */
  onTaskCancelled(): void {
    if (this.reject === null) return;
    this.driver!.wheel.cancel(this.id);
    this._settleWith(new CancelledError('sleep was cancelled because its task was cancelled'));
  }

  private _settleWith(err: Error): void {
    const reject = this.reject;
    if (reject === null) return;
    this._release();
    reject(err);
  }

  private _release(): void {
    const signal = this.signal;
    if (signal !== null) {
      this.signal = null;
      signal.removeEventListener('abort', this);
    }
    const g = this.taskGroup;
    if (g !== null) g.remove(this);
    this.resolve = null;
    this.reject = null;
    this.id = -1;
    const d = this.driver!;
    this.driver = null;
    if (!d.closed && d._pool.length < POOL_MAX) d._pool.push(this);
  }
}

// The settle functions of the promise `new Promise(capture)` just made (read at once, then cleared).
let capturedResolve: (() => void) | null = null;
let capturedReject: ((err: unknown) => void) | null = null;
function capture(resolve: () => void, reject: (err: unknown) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

/**
 * Resolves after at least `ms` milliseconds (measured with a monotonic clock; never early; a
 * `ms` of 0 waits for the next 1 ms tick, as `setTimeout(fn, 0)` does).
 *
 * Rejects with the signal's reason if `opts.signal` aborts (the timer is removed at once), with
 * `CancelledError` if it was called synchronously inside a task that is then cancelled, with
 * `RUNTIME_SHUTDOWN` if the runtime shuts down first, `INVALID_ARGUMENT` for a negative, NaN or
 * infinite `ms`, `NO_RUNTIME` outside a runtime and `FEATURE_UNAVAILABLE` in a runtime created
 * without `features: ['timer']`.
 *
 * Task cancellation reaches the sleep only when `sleep` is called from the task's synchronous
 * code (before its first `await`): that is the only time the runtime knows which task is running
 * (tracking it across awaits would need AsyncLocalStorage, which taxes every promise in Node 20).
 * After an await, pass the task's signal: `spawn(async (signal) => { ...; await sleep(ms, { signal }) })`.
 */
export function sleep(ms: number, opts?: SleepOptions): Promise<void> {
  let d: TimerDriver;
  try {
    d = currentDriver();
    checkDelay(ms, 'sleep: ms');
  } catch (err) {
    return Promise.reject(err);
  }
  const signal = opts?.signal;
  if (signal !== undefined && signal !== null) {
    if (!(signal instanceof AbortSignal)) {
      return Promise.reject(new InvalidArgumentError('sleep: opts.signal must be an AbortSignal'));
    }
    if (signal.aborted) return Promise.reject(abortReason(signal));
  }
  const wheel = d.wheel;
  if (wheel.size >= MAX_TIMERS) return Promise.reject(new RuntimeError('TIMER_LIMIT', `a timer wheel holds at most ${MAX_TIMERS} timers at once`));
  // One shared executor instead of a closure per sleep (about a third of a promise's cost).
  const p = new Promise<void>(capture);
  const resolve = capturedResolve!;
  const reject = capturedReject!;
  capturedResolve = capturedReject = null;
  if ((signal === undefined || signal === null) && d.runtime.currentTask === null) {
    // Nothing can cancel this sleep but shutdown: the promise's own resolve is the timer's
    // target and its reject the drop hook, so the sleep allocates no state of its own and
    // firing touches one object less.
    wheel.schedule(ms, resolve, reject);
    return p;
  }
  const e = d._pool.pop() ?? new SleepTimer();
  e.driver = d;
  e.resolve = resolve;
  e.reject = reject;
  e.id = wheel.schedule(ms, e);
  if (signal !== undefined && signal !== null) {
    e.signal = signal;
    signal.addEventListener('abort', e);
  }
  if (d.runtime.currentTask !== null) d._joinTask(e);
  return p;
}

/**
 * Calls `callback` once after at least `ms` milliseconds, on the current runtime's wheel: the
 * wheel's `setTimeout`, without a promise and without allocating. Returns the timer's id for
 * {@link clearTimer}. A pending timer keeps the runtime's process alive; a cancelled one does
 * not. A callback that throws is reported as an uncaught exception, as a `setTimeout` callback is.
 */
export function setTimer(ms: number, callback: () => void): TimerId {
  const d = currentDriver();
  if (typeof callback !== 'function') {
    throw new InvalidArgumentError(`setTimer: callback must be a function, got ${typeof callback}`);
  }
  const wheel = d.wheel;
  return wheel.schedule(ms, callback);
}

/**
 * Cancels a timer made by {@link setTimer} on the current runtime. True if it was still waiting;
 * false if it already fired, was already cleared, or the id is not a timer's (never throws for
 * a stale id, as `clearTimeout` does not).
 */
export function clearTimer(id: TimerId): boolean {
  return currentDriver().wheel.cancel(id);
}
