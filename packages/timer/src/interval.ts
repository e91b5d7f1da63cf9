import { CancelledError, InvalidArgumentError, abortReason } from '@miniss/core';
import { currentDriver, type TimerDriver } from './driver.js';
import { checkPeriod } from './validate.js';

/**
 * What an {@link Interval} does when ticks were missed because the consumer was busy for longer
 * than a period (tokio's `MissedTickBehavior`). Lateness up to {@link MISSED_TICK_TOLERANCE_MS}
 * is not a miss: the next tick stays on schedule.
 *
 * - `'skip'` (default): drop the missed ticks; the next tick fires at once, then the schedule
 *   continues on the original grid (start + k * period). No burst, no drift.
 * - `'delay'`: the next tick fires at once, then the schedule restarts from now: ticks are at
 *   least a period apart, and the grid drifts by however late the consumer was.
 * - `'burst'`: every missed tick is delivered, back to back, until the schedule has caught up.
 */
export type MissedTickBehavior = 'skip' | 'delay' | 'burst';

/** Lateness that does not count as a missed tick (tokio uses the same 5 ms). */
export const MISSED_TICK_TOLERANCE_MS = 5;

/**
 * The missed-tick policy as a pure function: a tick due at `due` is delivered at `now`
 * (>= due); returns when the next tick is due. Times in any one clock's milliseconds.
 */
export function nextTickTime(due: number, now: number, period: number, behavior: MissedTickBehavior): number {
  const late = now - due;
  if (late <= MISSED_TICK_TOLERANCE_MS) return due + period;
  if (behavior === 'skip') return now + period - (late % period); // next grid point after now
  if (behavior === 'delay') return now + period;
  return due + period; // burst: every missed tick, back to back
}

export interface IntervalOptions {
  /** Default `'skip'`. */
  missedTickBehavior?: MissedTickBehavior;
  /** When true the first tick completes at once, as tokio's `interval` does; default false (first tick one period from now, as `setInterval`). */
  immediate?: boolean;
}

export interface TickOptions {
  /** Aborting it rejects this tick with the signal's reason (the interval itself stays usable). */
  signal?: AbortSignal;
}

/**
 * A periodic schedule on the current runtime's timer wheel: `await interval.tick()` resolves at
 * start + period, start + 2 * period, ... (never early), and `for await (const n of interval)`
 * iterates ticks (n counts them from 1) until `cancel()`. One wheel entry serves every tick,
 * and it is in the wheel only while someone waits for a tick: an interval nobody awaits does not
 * keep the process alive. Missed ticks follow {@link MissedTickBehavior} (default `'skip'`).
 *
 * A `tick()` while another is pending returns the same promise (both waiters see one tick).
 */
export class Interval implements AsyncIterable<number> {
  readonly period: number;
  readonly missedTickBehavior: MissedTickBehavior;
  private readonly _driver: TimerDriver;
  /** The wheel calls this target; one object for the interval's whole life. */
  private readonly _target: { fire(): void; drop(reason: Error): void };
  private _timer = -1;
  /** Time (clock ms) of the next scheduled tick. */
  private _next: number;
  private _ticks = 0;
  private _cancelled = false;
  private _pending: Promise<void> | null = null;
  private _resolve: (() => void) | null = null;
  private _reject: ((e: unknown) => void) | null = null;
  private _signal: AbortSignal | null = null;
  private _unhook: (() => void) | null = null;

  constructor(periodMs: number, options: IntervalOptions = {}) {
    const d = currentDriver();
    checkPeriod(periodMs, 'Interval: periodMs');
    const behavior = options.missedTickBehavior ?? 'skip';
    if (behavior !== 'skip' && behavior !== 'delay' && behavior !== 'burst') {
      throw new InvalidArgumentError(`Interval: missedTickBehavior must be 'skip', 'delay' or 'burst', got ${String(behavior)}`);
    }
    this.period = periodMs;
    this.missedTickBehavior = behavior;
    this._driver = d;
    this._target = { fire: () => this._fired(), drop: (reason: Error) => this._dropped(reason) };
    const now = d.wheel.clock.now();
    this._next = options.immediate ? now : now + periodMs;
  }

  /** Ticks delivered so far. */
  get ticks(): number {
    return this._ticks;
  }

  /** True after `cancel()`. */
  get cancelled(): boolean {
    return this._cancelled;
  }

  /**
   * Resolves at the next tick. Rejects with `CancelledError` once the interval is cancelled,
   * with the signal's reason if `opts.signal` aborts, with `CancelledError` if called
   * synchronously inside a task that is then cancelled, and `RUNTIME_SHUTDOWN` at shutdown.
   */
  tick(opts?: TickOptions): Promise<void> {
    if (this._cancelled) return Promise.reject(new CancelledError('the interval was cancelled'));
    if (this._pending !== null) return this._pending;
    const d = this._driver;
    try {
      d._checkOpen();
    } catch (err) {
      return Promise.reject(err);
    }
    const signal = opts?.signal ?? null;
    if (signal !== null) {
      if (!(signal instanceof AbortSignal)) {
        return Promise.reject(new InvalidArgumentError('tick: opts.signal must be an AbortSignal'));
      }
      if (signal.aborted) return Promise.reject(abortReason(signal));
    }
    const wheel = d.wheel;
    const now = wheel.clock.now();
    if (now >= this._next) {
      this._advance(now);
      return Promise.resolve();
    }
    this._pending = new Promise<void>((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this._timer = wheel.insertAt(Math.ceil(this._next - wheel.origin), this._target);
    if (signal !== null) {
      this._signal = signal;
      signal.addEventListener('abort', this);
    }
    if (d.runtime.currentTask !== null) this._unhook = d._onTaskCancel(() => this._taskCancelled());
    return this._pending;
  }

  /** Stops the interval: a pending tick rejects with `CancelledError`, iteration ends. True if it was not cancelled yet. */
  cancel(): boolean {
    if (this._cancelled) return false;
    this._cancelled = true;
    this._driver.wheel.cancel(this._timer);
    this._settle(new CancelledError('the interval was cancelled'));
    return true;
  }

  [Symbol.asyncIterator](): AsyncIterator<number> {
    return {
      next: () =>
        this.tick().then(
          () => ({ value: this._ticks, done: false }),
          (err: unknown) => {
            if (this._cancelled && err instanceof CancelledError) return { value: undefined, done: true };
            throw err;
          },
        ),
      return: () => {
        this.cancel();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  /** @internal The signal passed to tick() aborted. */
  handleEvent(): void {
    const signal = this._signal;
    if (signal === null) return;
    this._driver.wheel.cancel(this._timer);
    this._settle(abortReason(signal));
  }

  private _fired(): void {
    this._advance(this._driver.wheel.clock.now());
    this._settle(null);
  }

  /** The runtime shut down. */
  private _dropped(reason: Error): void {
    this._settle(reason);
  }

  private _taskCancelled(): void {
    this._unhook = null;
    this._driver.wheel.cancel(this._timer);
    this._settle(new CancelledError('the tick was cancelled because its task was cancelled'));
  }

  /** Delivers the tick that was due at `_next` and schedules the following one. */
  private _advance(now: number): void {
    this._ticks++;
    this._next = nextTickTime(this._next, now, this.period, this.missedTickBehavior);
  }

  private _settle(err: Error | null): void {
    const resolve = this._resolve;
    const reject = this._reject;
    if (resolve === null || reject === null) return;
    this._resolve = null;
    this._reject = null;
    this._pending = null;
    const signal = this._signal;
    if (signal !== null) {
      this._signal = null;
      signal.removeEventListener('abort', this);
    }
    const u = this._unhook;
    if (u !== null) {
      this._unhook = null;
      u();
    }
    if (err === null) resolve();
    else reject(err);
  }
}
