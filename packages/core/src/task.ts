import { CancelledError } from './errors.js';

/**
 * Tasks and their handles.
 *
 * A task is the unit the runtime schedules: a function plus its state. `spawn` allocates one
 * object, the {@link JoinHandle}, which is both the run-queue entry and what the caller awaits, so
 * spawning costs one allocation and no promise. Three measured facts on Node 20 shape it:
 *
 * - `new AbortController().signal` costs about 1.7 us, ten times the whole spawn budget, so a
 *   task's AbortSignal is created only when its function declares a parameter to receive it
 *   (`fn.length > 0`) or when someone asks for `handle.signal`.
 * - A promise per task would double the cost of `await spawn(...)`. The handle is a thenable
 *   instead: `then` records the callbacks and returns a {@link Chained} that turns into a real
 *   promise only if someone chains on it. `await handle` never does, so it allocates one small
 *   object and no promise.
 * - `queueMicrotask` is called once per batch of spawns (the runtime drains its own queue), not
 *   once per task.
 *
 * Callbacks are never called synchronously from inside `then`/`cancel` (Promises/A+ 2.2.4): `then`
 * on a settled handle hands the callbacks to a settled native promise, and a cancellation queues
 * the handle so its callbacks run from a microtask.
 */

/** @internal Task states, in order: a state >= `TaskState.Ok` is settled. */
export const TaskState = { Queued: 0, Running: 1, Ok: 2, Failed: 3 } as const;
/** @internal */
export type TaskState = (typeof TaskState)[keyof typeof TaskState];

/** @internal What a JoinHandle needs from its runtime. */
export interface TaskScheduler {
  /** Queues a settled handle so its late callbacks run asynchronously (one microtask per batch). */
  _requeue(handle: JoinHandle<unknown>): void;
  /** Starts a queued task at once (it is being awaited). */
  _runNow(handle: JoinHandle<unknown>): void;
  /** Bookkeeping when a task settles. */
  _taskSettled(handle: JoinHandle<unknown>, cancelled: boolean, failedUnobserved: boolean): void;
}

type OnOk = ((value: any) => unknown) | null | undefined;
type OnErr = ((reason: any) => unknown) | null | undefined;

/**
 * The `PromiseLike` returned by `JoinHandle.then`. It records the callback's outcome and becomes a
 * native promise only when chained on (or when the outcome is a rejection nobody has seen yet, so
 * Node still reports it as unhandled, exactly as a native `.then` would).
 */
export class Chained<T> implements Thenable<T> {
  private _state: 0 | 1 | 2 = 0;
  private _value: unknown = undefined;
  private _promise: Promise<T> | null = null;
  private _resolve: ((v: unknown) => void) | null = null;
  private _reject: ((e: unknown) => void) | null = null;

  /** @internal */
  _fulfil(value: unknown): void {
    if (value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<unknown>).then === 'function') {
      // A thenable outcome must be adopted; let a native promise do it.
      this._materialise();
      this._resolve!(value);
      return;
    }
    if (this._resolve) this._resolve(value);
    else {
      this._state = 1;
      this._value = value;
    }
  }

  /** @internal */
  _fail(reason: unknown): void {
    if (this._reject) this._reject(reason);
    else {
      this._state = 2;
      this._value = reason;
      // Materialise now so an unhandled rejection is reported as it would be for a native promise.
      this._materialise();
    }
  }

  private _materialise(): Promise<T> {
    if (this._promise === null) {
      if (this._state === 1) this._promise = Promise.resolve(this._value as T);
      else if (this._state === 2) this._promise = Promise.reject(this._value);
      else
        this._promise = new Promise<T>((res, rej) => {
          this._resolve = res as (v: unknown) => void;
          this._reject = rej;
        });
    }
    return this._promise;
  }

  then<A = T, B = never>(onOk?: ((value: T) => A | PromiseLike<A>) | null, onErr?: ((reason: any) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this._materialise().then(onOk, onErr);
  }
  catch<B = never>(onErr?: ((reason: any) => B | PromiseLike<B>) | null): Promise<T | B> {
    return this._materialise().catch(onErr);
  }
  finally(onFinally?: (() => void) | null): Promise<T> {
    return this._materialise().finally(onFinally);
  }
}

function callWaiter(onOk: OnOk, onErr: OnErr, next: Chained<unknown>, ok: boolean, value: unknown): void {
  const fn = ok ? onOk : onErr;
  if (typeof fn !== 'function') {
    if (ok) next._fulfil(value);
    else next._fail(value);
    return;
  }
  let out: unknown;
  try {
    out = fn(value);
  } catch (err) {
    next._fail(err);
    return;
  }
  next._fulfil(out);
}

/** What `JoinHandle.then` returns: a native promise, or a {@link Chained} that becomes one on use. */
export interface Thenable<T> extends PromiseLike<T> {
  catch<B = never>(onErr?: ((reason: any) => B | PromiseLike<B>) | null): PromiseLike<T | B>;
  finally(onFinally?: (() => void) | null): PromiseLike<T>;
}

let nextTaskId = 1;

/**
 * A spawned task. Await it (or call `then`) for its result; `cancel()` to stop waiting for it and
 * abort its signal. Errors thrown by the task reject the handle with the original error object,
 * stack included.
 */
export class JoinHandle<T> implements PromiseLike<T> {
  /** Unique per thread, increasing. */
  readonly id: number;
  /** @internal */ _state: TaskState = TaskState.Queued;
  /** @internal */ _fn: ((signal?: AbortSignal) => T | PromiseLike<T>) | null;
  /** @internal */ _value: unknown = undefined;
  /** @internal */ _controller: AbortController | null = null;
  /** @internal Cancel hooks: an intrusive doubly-linked list (O(1) add and remove), newest first. */ _cancelHooks: CancelHook | null = null;
  /** @internal */ _requeued = false;
  /** @internal */ _observed = false;
  /** @internal Settled by cancel(), not by the task's own outcome. */ _cancelled = false;
  // The first waiter is stored inline; `await handle` almost always has exactly one.
  private _w0ok: OnOk = undefined;
  private _w0err: OnErr = undefined;
  private _w0next: Chained<unknown> | null = null;
  private _waiters: Array<OnOk | OnErr | Chained<unknown>> | null = null;
  private readonly _sched: TaskScheduler;

  /** @internal Use `runtime.spawn`. */
  constructor(sched: TaskScheduler, fn: (signal?: AbortSignal) => T | PromiseLike<T>) {
    this.id = nextTaskId++;
    this._sched = sched;
    this._fn = fn;
  }

  /** True once the task has finished, failed or been cancelled. */
  get done(): boolean {
    return this._state >= TaskState.Ok;
  }

  /**
   * The task's AbortSignal, aborted (with a {@link CancelledError} as its reason) when the task is
   * cancelled. Created on first use: it is the same signal the task's function received.
   */
  get signal(): AbortSignal {
    if (this._controller === null) {
      this._controller = new AbortController();
      if (this._cancelled) this._controller.abort(this._value);
    }
    return this._controller.signal;
  }

  /**
   * Cancels the task: its signal is aborted, hooks registered with {@link onCancel} run, and
   * awaiting the handle rejects with a {@link CancelledError}. Returns true if the task was still
   * queued or running, false if it had already settled. A task that has not started never runs.
   * Code already running keeps running until its next `await` of something the signal aborts:
   * JavaScript cannot be pre-empted.
   */
  cancel(reason?: string): boolean {
    if (this._state >= TaskState.Ok) return false;
    const err = new CancelledError(reason ?? `task ${this.id} was cancelled`);
    this._settle(false, err, true, true);
    return true;
  }

  /**
   * Runs `fn` when the task is cancelled (not when it completes). Returns a function that removes
   * it. Plugins use this to release what a task waits on (a timer, an I/O operation) without the
   * cost of an AbortSignal.
   */
  onCancel(fn: () => void): () => void {
    if (this._state >= TaskState.Ok) return noop;
    const hook = new CancelHook(this as JoinHandle<unknown>, fn);
    const head = this._cancelHooks;
    hook.next = head;
    if (head !== null) head.prev = hook;
    this._cancelHooks = hook;
    return hook.remove;
  }

  /** @internal Unlinks `hook` (O(1)); a hook already removed or already run is ignored. */
  _removeHook(hook: CancelHook): void {
    const prev = hook.prev;
    const next = hook.next;
    if (prev === null) this._cancelHooks = next;
    else prev.next = next;
    if (next !== null) next.prev = prev;
    hook.prev = hook.next = null;
    hook.task = null;
  }

  then<A = T, B = never>(onOk?: ((value: T) => A | PromiseLike<A>) | null, onErr?: ((reason: any) => B | PromiseLike<B>) | null): Thenable<A | B> {
    this._observed = true;
    if (this._state === TaskState.Queued) this._sched._runNow(this as JoinHandle<unknown>);
    if (this._state >= TaskState.Ok) {
      // Settled already: a native promise calls back asynchronously, never inside then().
      const settled = this._state === TaskState.Ok ? Promise.resolve(this._value as T) : Promise.reject(this._value);
      return settled.then(onOk, onErr);
    }
    const next = new Chained<A | B>();
    this._pushWaiter(onOk, onErr, next as Chained<unknown>);
    return next;
  }

  catch<B = never>(onErr?: ((reason: any) => B | PromiseLike<B>) | null): Thenable<T | B> {
    return this.then(undefined, onErr);
  }

  finally(onFinally?: (() => void) | null): Promise<T> {
    return Promise.resolve(this as PromiseLike<T>).finally(onFinally);
  }

  private _pushWaiter(onOk: OnOk, onErr: OnErr, next: Chained<unknown>): void {
    if (this._w0next === null) {
      this._w0ok = onOk;
      this._w0err = onErr;
      this._w0next = next;
    } else {
      (this._waiters ??= []).push(onOk, onErr, next);
    }
  }

  /**
   * @internal Settles the task once; later calls are ignored. `cancelled` only from cancel(): a
   * task that fails with a CancelledError of its own (an aborted sleep, say) failed, it was not
   * cancelled, so its signal stays as it is and its cancel hooks do not run.
   */
  _settle(ok: boolean, value: unknown, deferCallbacks: boolean, cancelled = false): void {
    if (this._state >= TaskState.Ok) return;
    this._state = ok ? TaskState.Ok : TaskState.Failed;
    this._value = value;
    this._fn = null;
    this._cancelled = cancelled;
    let hook = this._cancelHooks;
    if (hook !== null) {
      this._cancelHooks = null;
      // Detach every hook first (a removal after the task settled, from a hook or later, is a
      // no-op) and reverse the list, so hooks run in registration order.
      let oldest: CancelHook | null = null;
      while (hook !== null) {
        const next: CancelHook | null = hook.next;
        hook.task = null;
        hook.prev = null;
        hook.next = oldest;
        oldest = hook;
        hook = next;
      }
      hook = oldest;
    }
    if (cancelled) {
      if (this._controller !== null) this._controller.abort(value);
      while (hook !== null) {
        const next: CancelHook | null = hook.next;
        hook.next = null;
        hook.fn();
        hook = next;
      }
    }
    this._sched._taskSettled(this as JoinHandle<unknown>, cancelled, !ok && !this._observed);
    if (this._w0next === null) return;
    if (deferCallbacks) this._sched._requeue(this as JoinHandle<unknown>);
    else this._notify();
  }

  /** @internal Calls every waiting callback with the outcome. */
  _notify(): void {
    const ok = this._state === TaskState.Ok;
    const value = this._value;
    while (this._w0next !== null) {
      const a = this._w0ok;
      const b = this._w0err;
      const n = this._w0next;
      this._w0ok = undefined;
      this._w0err = undefined;
      this._w0next = null;
      const rest = this._waiters;
      this._waiters = null;
      callWaiter(a, b, n, ok, value);
      if (rest !== null) {
        for (let i = 0; i < rest.length; i += 3) {
          callWaiter(rest[i] as OnOk, rest[i + 1] as OnErr, rest[i + 2] as Chained<unknown>, ok, value);
        }
      }
    }
  }
}

/**
 * @internal One `onCancel` registration: a node of its task's hook list. `remove` is bound once,
 * so unregistering is O(1) (no search), and calling it twice or after the task settled is harmless.
 */
export class CancelHook {
  prev: CancelHook | null = null;
  next: CancelHook | null = null;
  constructor(
    public task: JoinHandle<unknown> | null,
    readonly fn: () => void,
  ) {}
  readonly remove = (): void => {
    const t = this.task;
    if (t !== null) t._removeHook(this);
  };
}

function noop(): void {}
