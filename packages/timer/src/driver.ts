import { performance } from 'node:perf_hooks';
import { CancelledError, RuntimeError, currentRuntime, tryCurrentRuntime, type PluginFactory, type Runtime, type RuntimePlugin } from '@miniss/core';
import { TimerWheel, monotonicClock } from './wheel.js';
import type { SleepTimer } from './sleep.js';

/** What `runtime.stats().plugins.timer` reports. */
export interface TimerStats extends Record<string, number> {
  /** Timers waiting in the wheel. */
  active: number;
  /** Timers that reached their deadline. */
  fired: number;
  /** Timers removed before their deadline (cancel, abort, task cancellation, shutdown). */
  cancelled: number;
  /** Times the backend's timeout woke the driver up to poll the wheel. */
  wakeups: number;
  /** Wake-ups armed through the backend (one per earlier deadline, never one per timer). */
  arms: number;
  /** 1 while a wake-up is armed (and so keeps the event loop alive), else 0. */
  armed: number;
}

/** The reason the driver aborts a wake-up it no longer needs; never seen by users. */
const DISARMED = new Error('timer wake-up disarmed');

/**
 * The per-runtime timer driver: the `RuntimePlugin` that `features: ['timer']` loads. It owns one
 * {@link TimerWheel} and keeps exactly one wake-up armed through the runtime's own backend (the
 * `timeout` I/O operation: an `IORING_OP_TIMEOUT` on io_uring, a timer in the node backend) for
 * the wheel's next expiration, and only while timers are waiting, so pending timers keep the
 * process alive and an empty wheel does not. It decorates the backend rather than branching in
 * it, as tokio's time driver wraps its I/O driver.
 *
 * Re-arming costs an AbortController and one operation, so it is batched: insertions and
 * removals only note that the wake-up may be stale, and one microtask per turn re-arms it when
 * the next expiration became earlier than the armed one (a later one keeps the early wake-up,
 * which then re-arms) or disarms it when the wheel emptied. Scheduling and cancelling timers
 * within one turn therefore touches the backend at most once.
 */
export class TimerDriver implements RuntimePlugin {
  readonly runtime: Runtime;
  readonly wheel: TimerWheel;
  private _armedTick = Infinity;
  private _armCtl: AbortController | null = null;
  private _armTimer: ReturnType<typeof setTimeout> | null = null;
  private _armGen = 0;
  private _flushQueued = false;
  private readonly _flushBound = () => this._flush();
  private _closed = false;
  private _wakeups = 0;
  private _arms = 0;
  private _fallbackWarned = false;
  /** @internal Recycled sleep entries (see sleep.ts). */
  readonly _pool: SleepTimer[] = [];

  constructor(runtime: Runtime) {
    this.runtime = runtime;
    this.wheel = new TimerWheel({
      clock: monotonicClock,
      onEarlier: (tick) => {
        if (tick < this._armedTick) this._queueFlush();
      },
      onEmpty: () => {
        if (this._armedTick !== Infinity) this._queueFlush();
      },
    });
  }

  /** True once the runtime has closed the plugin (shut down). */
  get closed(): boolean {
    return this._closed;
  }

  /** @internal Throws RUNTIME_SHUTDOWN once closed. */
  _checkOpen(): void {
    if (this._closed) {
      throw new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime has shut down: no more timers');
    }
  }

  /**
   * @internal Registers `fn` to run if the task running right now (synchronously) is cancelled.
   * Returns the function that unregisters it, or null outside a task's synchronous code.
   */
  _onTaskCancel(fn: () => void): (() => void) | null {
    const t = this.runtime.currentTask;
    return t === null ? null : t.onCancel(fn);
  }

  stats(): TimerStats {
    return {
      active: this.wheel.size,
      fired: this.wheel.fired,
      cancelled: this.wheel.cancelled,
      wakeups: this._wakeups,
      arms: this._arms,
      armed: this._armedTick === Infinity ? 0 : 1,
    };
  }

  /** Called by the runtime at shutdown: every waiting timer is dropped and the wake-up released. */
  close(): void {
    if (this._closed) return;
    this._closed = true;
    this._disarm();
    this.wheel.clear(new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime shut down while the timer was pending'));
    this._pool.length = 0;
    forgetDriver(this);
  }

  private _queueFlush(): void {
    if (!this._flushQueued) {
      this._flushQueued = true;
      queueMicrotask(this._flushBound);
    }
  }

  private _flush(): void {
    this._flushQueued = false;
    if (this._closed) return;
    const next = this.wheel.nextExpiration();
    if (next === Infinity) this._disarm();
    else if (next < this._armedTick) this._arm(next);
  }

  private _arm(tick: number): void {
    this._disarm();
    const gen = ++this._armGen;
    this._armedTick = tick;
    this._arms++;
    // The wake-up may come a little early (a loop's cached time); poll then finds nothing due
    // and the flush re-arms. Round up so that it mostly does not.
    const ms = Math.max(0, Math.ceil(this.wheel.origin + tick - performance.now()));
    const ctl = new AbortController();
    this._armCtl = ctl;
    this.runtime.io({ op: 'timeout', ms }, ctl.signal).then(
      () => this._wake(gen),
      (err: unknown) => this._armFailed(gen, err, ms),
    );
  }

  private _disarm(): void {
    this._armGen++;
    this._armedTick = Infinity;
    const ctl = this._armCtl;
    if (ctl !== null) {
      this._armCtl = null;
      ctl.abort(DISARMED);
    }
    const t = this._armTimer;
    if (t !== null) {
      this._armTimer = null;
      clearTimeout(t);
    }
  }

  private _wake(gen: number): void {
    if (gen !== this._armGen || this._closed) return; // disarmed meanwhile
    this._armCtl = null;
    this._armTimer = null;
    this._armedTick = Infinity;
    this._wakeups++;
    try {
      this.wheel.poll();
    } catch (err) {
      // A timer callback threw: report it the way Node reports a throwing setTimeout callback,
      // after the wheel has finished firing everything else.
      queueMicrotask(() => {
        throw err;
      });
    }
    this._flush();
  }

  private _armFailed(gen: number, err: unknown, ms: number): void {
    if (gen !== this._armGen || this._closed || err === DISARMED) return;
    if ((err as { code?: unknown })?.code === 'RUNTIME_SHUTDOWN') return;
    // The backend refused its timeout operation. Timers must still fire: fall back to one
    // Node timer for this wake-up (still one for the whole wheel), and say so once.
    if (!this._fallbackWarned) {
      this._fallbackWarned = true;
      process.emitWarning(
        `@miniss/timer: the '${this.runtime.backend.name}' backend refused a timeout operation (${(err as Error)?.message ?? String(err)}); ` +
          'falling back to setTimeout for the wheel wake-up',
        { type: 'MinissTimerWarning' },
      );
    }
    this._armCtl = null;
    this._armTimer = setTimeout(() => this._wake(gen), ms);
  }
}

// The driver of the runtime that asked last, so a hot loop of sleeps does not look it up in the
// runtime's plugin map every time.
let cachedRuntime: Runtime | undefined;
let cachedDriver: TimerDriver | undefined;

function forgetDriver(d: TimerDriver): void {
  if (cachedDriver === d) {
    cachedDriver = undefined;
    cachedRuntime = undefined;
  }
}

/**
 * The timer driver of the runtime running on this thread. Throws `NO_RUNTIME` outside one,
 * `FEATURE_UNAVAILABLE` (naming `features: ['timer']`) in a runtime without the feature, and
 * `RUNTIME_SHUTDOWN` once it has shut down.
 */
export function currentDriver(): TimerDriver {
  const rt = tryCurrentRuntime();
  if (rt !== undefined && rt === cachedRuntime) {
    const d = cachedDriver!;
    d._checkOpen();
    return d;
  }
  const runtime = currentRuntime();
  const d = runtime.plugin<TimerDriver>('timer');
  d._checkOpen();
  cachedRuntime = runtime;
  cachedDriver = d;
  return d;
}

/** The reason to reject with when `signal` aborts: its reason if an Error (as core's I/O does). */
export function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new CancelledError('the operation was aborted', { cause: r });
}

/** `features: ['timer']` loads this: one {@link TimerDriver} per runtime. */
export const minissPlugin: PluginFactory<TimerDriver> = {
  feature: 'timer',
  create: (runtime: Runtime) => new TimerDriver(runtime),
};
