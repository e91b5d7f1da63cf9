import { CancelledError, InvalidArgumentError, type JoinHandle } from '@miniss/core';
import { currentDriver } from './driver.js';
import { Interval, type IntervalOptions } from './interval.js';

export type PeriodicOptions = IntervalOptions;

/**
 * A periodic task: await it for the number of runs, `cancel()` to stop it. Awaiting rejects with
 * the error if `fn` threw (or rejected), and with `CancelledError` if the runtime shut down (or
 * cancelled its task) while it was still running.
 */
export class PeriodicHandle implements PromiseLike<number> {
  /** @internal */
  constructor(
    private readonly _task: JoinHandle<number>,
    private readonly _stop: () => boolean,
  ) {}

  /** The id of the task that runs the loop. */
  get id(): number {
    return this._task.id;
  }

  /** True once the loop has ended (stopped, cancelled, failed). */
  get done(): boolean {
    return this._task.done;
  }

  /**
   * Stops the loop: no run starts after this call. A run in progress finishes (it is never cut
   * short, JavaScript cannot pre-empt it) and is counted; then the handle resolves with the
   * number of runs. Returns true if the loop was still going.
   */
  cancel(): boolean {
    return this._stop();
  }

  then<A = number, B = never>(
    onOk?: ((value: number) => A | PromiseLike<A>) | null,
    onErr?: ((reason: any) => B | PromiseLike<B>) | null,
  ): PromiseLike<A | B> {
    return this._task.then(onOk, onErr);
  }
}

/**
 * Spawns a task on the current runtime that calls `fn` every `periodMs` (first call one period
 * from now; `{ immediate: true }` for at once). It stops when `fn` returns or resolves `false`,
 * or on `handle.cancel()`; awaiting the handle then gives the number of runs. If `fn` throws or
 * rejects, the handle rejects with that error and no run follows. A slow `fn` never overlaps
 * itself: the next run waits for the previous one, and ticks missed meanwhile follow
 * `missedTickBehavior` (default `'skip'`: the next run starts at once, then the original grid resumes).
 */
export function spawnPeriodic(
  periodMs: number,
  fn: () => boolean | void | PromiseLike<boolean | void>,
  options: PeriodicOptions = {},
): PeriodicHandle {
  const d = currentDriver();
  if (typeof fn !== 'function') {
    throw new InvalidArgumentError(`spawnPeriodic: fn must be a function, got ${typeof fn}`);
  }
  const interval = new Interval(periodMs, options);
  let stopped = false;
  let running = false;
  const task = d.runtime.spawn(async () => {
    let runs = 0;
    try {
      for (;;) {
        try {
          await interval.tick();
        } catch (err) {
          // cancel() cancels the interval: a graceful stop with the count. Anything else (the
          // runtime shutting down) ends the task with that error.
          if (stopped && err instanceof CancelledError) return runs;
          throw err;
        }
        if (stopped) return runs;
        runs++;
        running = true;
        let r: boolean | void;
        try {
          r = await fn();
        } finally {
          running = false;
        }
        if (r === false || stopped) return runs;
      }
    } finally {
      interval.cancel();
    }
  });
  // The runtime cancelling the task (shutdown, or task.cancel()) stops the loop too.
  task.onCancel(() => {
    stopped = true;
    interval.cancel();
  });
  const stop = (): boolean => {
    if (stopped || task.done) return false;
    stopped = true;
    // A run in progress finishes and the loop then returns; otherwise the pending tick rejects.
    if (!running) interval.cancel();
    return true;
  };
  return new PeriodicHandle(task, stop);
}
