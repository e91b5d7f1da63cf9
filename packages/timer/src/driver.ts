import { performance } from 'node:perf_hooks';
import { MAX_TIMER_MS, RuntimeError, currentRuntime, tryCurrentRuntime, type PluginFactory, type Runtime, type RuntimePlugin } from '@miniss/core';
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

/**
 * @internal Something a task waits on (a sleep, a timeout, an interval tick), linked into that
 * task's {@link TaskTimers} list through its own fields, so joining and leaving allocate nothing.
 */
export interface TaskWaiter {
  taskPrev: TaskWaiter | null;
  taskNext: TaskWaiter | null;
  taskGroup: TaskTimers | null;
  /** The task was cancelled; the waiter is already unlinked when this is called. */
  onTaskCancelled(): void;
}

/** A waiter that runs a function: for callers that keep a closure rather than being a waiter. */
class FnWaiter implements TaskWaiter {
  taskPrev: TaskWaiter | null = null;
  taskNext: TaskWaiter | null = null;
  taskGroup: TaskTimers | null = null;
  constructor(readonly fn: () => void) {}
  onTaskCancelled(): void {
    this.fn();
  }
  readonly remove = (): void => {
    const g = this.taskGroup;
    if (g !== null) g.remove(this);
  };
}

/** @internal The timers one task waits on, cancelled together if the task is cancelled (one hook per task). */
export class TaskTimers {
  head: TaskWaiter | null = null;
  unhook: (() => void) | null = null;
  /** True once the group ran or emptied; a dead group is never reused. */
  dead = false;
  constructor(
    readonly task: object,
    readonly driver: TimerDriver,
  ) {}

  add(w: TaskWaiter): void {
    const head = this.head;
    w.taskGroup = this;
    w.taskPrev = null;
    w.taskNext = head;
    if (head !== null) head.taskPrev = w;
    this.head = w;
  }

  remove(w: TaskWaiter): void {
    if (w.taskGroup !== this) return;
    const prev = w.taskPrev;
    const next = w.taskNext;
    if (prev === null) this.head = next;
    else prev.taskNext = next;
    if (next !== null) next.taskPrev = prev;
    w.taskPrev = w.taskNext = null;
    w.taskGroup = null;
    if (this.head === null) {
      // The task waits on no timer any more: release its hook so a long-lived task that sleeps
      // in a loop does not collect one hook per sleep.
      this.dead = true;
      const u = this.unhook;
      this.unhook = null;
      this.driver._dropGroup(this);
      if (u !== null) u();
    }
  }

  cancelAll(): void {
    if (this.dead) return;
    this.dead = true;
    this.unhook = null; // the task drops its own hooks when it runs them
    this.driver._dropGroup(this);
    let w = this.head;
    this.head = null;
    while (w !== null) {
      const next = w.taskNext;
      w.taskPrev = w.taskNext = null;
      w.taskGroup = null;
      try {
        w.onTaskCancelled();
      } catch {
        /* a timer's cancellation must not keep the others from being cancelled */
      }
      w = next;
    }
  }
}

/** Most ticks' worth of polls per wake-up (see `_fire`). */
const MAX_POLL_ROUNDS = 16;
/** Most timers fired before yielding to the microtask queue (see `_fire`). */
const FIRE_CHUNK = 128;
const RESOLVED: Promise<void> = Promise.resolve();

/**
 * The reason the driver aborts a wake-up it no longer needs; never seen by users. It has a string
 * code so core's abortReason hands it back as it is (no wrapper, no stack trace per disarm) and the
 * identity check in _armFailed sees it.
 */
const DISARMED: Error = Object.assign(new Error('timer wake-up disarmed'), { code: 'TIMER_DISARMED' });

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
  private _rounds = 0;
  /** Fires the next chunk after a microtask hop (the previous chunk's reactions are queued first). */
  private readonly _fireBound = () => this._fire(false);
  /** The pending `setImmediate` that fires a due barrier (a timeout) once every reaction ran. */
  private _immediate: ReturnType<typeof setImmediate> | null = null;
  private readonly _fireImmediateBound = () => {
    this._immediate = null;
    this._fire(true);
  };
  private readonly _groups = new Map<object, TaskTimers>();
  private _lastGroup: TaskTimers | null = null;
  /** @internal Recycled sleep entries (see sleep.ts). */
  readonly _pool: SleepTimer[] = [];

  /** The backend's timeout counts whole milliseconds (the portable node backend). */
  private readonly _wholeMs: boolean;

  constructor(runtime: Runtime) {
    this.runtime = runtime;
    this._wholeMs = runtime.backend.name === 'node';
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
   *
   * The runtime's own `task.onCancel` keeps an array and unregisters with indexOf + splice, which
   * is O(hooks): a task waiting on 100,000 sleeps spent seconds unregistering them as they fired.
   * So the driver registers ONE hook per task and keeps that task's timers in an intrusive
   * doubly-linked list: registering and unregistering a timer are O(1); the task's hook is
   * released when its last timer goes.
   */
  _onTaskCancel(fn: () => void): (() => void) | null {
    const w = new FnWaiter(fn);
    return this._joinTask(w) ? w.remove : null;
  }

  /**
   * @internal Links `w` into the list of the task running right now (synchronously); false
   * outside a task. `w.taskGroup.remove(w)` takes it out again.
   */
  _joinTask(w: TaskWaiter): boolean {
    const t = this.runtime.currentTask;
    if (t === null) return false;
    let g = this._lastGroup !== null && this._lastGroup.task === t ? this._lastGroup : this._groups.get(t);
    if (g === undefined) {
      const group = new TaskTimers(t, this);
      group.unhook = t.onCancel(() => group.cancelAll());
      this._groups.set(t, group);
      g = group;
    }
    this._lastGroup = g;
    g.add(w);
    return true;
  }

  /** @internal A task's group emptied or ran: forget it. */
  _dropGroup(g: TaskTimers): void {
    if (this._groups.get(g.task) === g) this._groups.delete(g.task);
    if (this._lastGroup === g) this._lastGroup = null;
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
    if (this._immediate !== null) {
      clearImmediate(this._immediate);
      this._immediate = null;
    }
    this.wheel.clear(new RuntimeError('RUNTIME_SHUTDOWN', 'the runtime shut down while the timer was pending'));
    this._pool.length = 0;
    this._groups.clear();
    this._lastGroup = null;
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
    // The native backends time out to the nanosecond, relative to the moment the request is
    // submitted (after this reading), so the wake-up comes at or just after the tick's time: ask
    // for it to the microsecond. Rounding up to whole milliseconds made every timer fire 0.5 ms
    // later on average. The node backend's setTimeout counts whole milliseconds from the loop's
    // cached time and may wake a little early (poll then finds nothing due and the flush
    // re-arms): round up there so that it mostly does not.
    const left = this.wheel.origin + tick - performance.now();
    // A deadline further away than setTimeout's limit (about 24.8 days) is armed at the limit: the
    // early wake-up finds nothing due and arms again (the node backend's timeout is a setTimeout,
    // which would fire after 1 ms for anything longer, and so would the fallback below).
    const ms = Math.min(MAX_TIMER_MS, left <= 0 ? 0 : this._wholeMs ? Math.ceil(left) : Math.ceil(left * 1000) / 1000);
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
    this._rounds = 0;
    this._fire(true);
  }

  /**
   * Fires what is due, in chunks of FIRE_CHUNK targets: between chunks it yields to the microtask
   * queue (one promise reaction, FIFO behind the reactions the chunk queued), so the code waiting
   * on the sleeps a chunk resolved runs before the next chunk, as Node runs microtasks between
   * its timers; without it, a burst of 50,000 due sleeps would run every continuation only after
   * all 50,000 were resolved. Then fires what fell due meanwhile (a burst takes longer than a
   * tick), as Node's timer loop does, rather than a round trip through the backend per tick;
   * bounded by MAX_POLL_ROUNDS, so a wheel that never catches up still lets I/O run.
   *
   * A `timeout` is a barrier target (see `TimerTarget`): the wheel fires it only first in a poll
   * made at a macrotask boundary (`atBoundary`: a wake-up from the backend, or the
   * `setImmediate` below), when every promise reaction of the timers fired before it has run.
   * So work settled by an earlier timer of the same wake-up (a late one: the loop was busy) has
   * already cancelled the timeout, and a nested timeout sees its inner one's rejection, as with
   * Node's timers, which run the microtask queue after each callback. One `setImmediate` per
   * timeout that fires after other timers of its wake-up (the check phase right after the wake-up).
   */
  private _fire(atBoundary: boolean): void {
    if (this._closed) return;
    const wheel = this.wheel;
    let boundary = atBoundary;
    for (;;) {
      try {
        wheel.poll(undefined, FIRE_CHUNK, boundary);
      } catch (err) {
        // A timer callback threw: report it the way Node reports a throwing setTimeout callback,
        // once the rest of the chunk has fired (the wheel fires every target of a poll).
        queueMicrotask(() => {
          throw err;
        });
      }
      boundary = false;
      if (wheel.hasDue) {
        if (!wheel.barrierDue) void RESOLVED.then(this._fireBound);
        else if (this._immediate === null) this._immediate = setImmediate(this._fireImmediateBound);
        return;
      }
      if (++this._rounds >= MAX_POLL_ROUNDS || wheel.size === 0 || wheel.nextExpiration() > wheel.now()) break;
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

/** `features: ['timer']` loads this: one {@link TimerDriver} per runtime. */
export const minissPlugin: PluginFactory<TimerDriver> = {
  feature: 'timer',
  create: (runtime: Runtime) => new TimerDriver(runtime),
};
