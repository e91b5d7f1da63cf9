import { CancelledError, type JoinHandle } from '@miniss/core';

/**
 * The handle of a task placed on a core: the JoinHandle surface (`then`/`catch`/`finally`,
 * `cancel()`, `done`, `id`) over a task that may run on another thread.
 *
 * Like core's JoinHandle it creates no promise until someone awaits it, so a handle that is
 * cancelled and never awaited does not produce an unhandled rejection.
 */
export class CoreTaskHandle<T> implements PromiseLike<T> {
  /**
   * Unique among the unsettled tasks of the core that spawned it: a 32-bit id (1..2^32-1) that
   * wraps around after 2^32 - 1 tasks, skipping ids still in use.
   */
  readonly id: number;
  /** The core the task was placed on. */
  readonly core: number;
  private _state: 0 | 1 | 2 = 0; // pending, ok, failed
  private _value: unknown = undefined;
  private _promise: Promise<T> | null = null;
  private _resolve: ((v: T) => void) | null = null;
  private _reject: ((e: unknown) => void) | null = null;
  /** @internal */ _observed = false;
  /** @internal A task placed on its own core keeps its runtime handle here (for cancellation). */
  _local: JoinHandle<unknown> | null = null;
  /** @internal Called by cancel() while pending: sends the cancellation to the core. */
  _onCancel: ((h: CoreTaskHandle<T>) => void) | null;

  /** @internal */
  constructor(id: number, core: number, onCancel: ((h: CoreTaskHandle<T>) => void) | null) {
    this.id = id;
    this.core = core;
    this._onCancel = onCancel;
  }

  /** True once the task has finished, failed, been cancelled, or its core was lost. */
  get done(): boolean {
    return this._state !== 0;
  }

  /**
   * Cancels the task: the handle rejects with a CancelledError at once, and a cancellation
   * message aborts the task's AbortSignal on its core. Returns false if the task had settled.
   */
  cancel(reason?: string): boolean {
    if (this._state !== 0) return false;
    const onCancel = this._onCancel;
    this._settle(false, new CancelledError(reason ?? `task ${this.id} on core ${this.core} was cancelled`));
    onCancel?.(this);
    return true;
  }

  /** @internal Settles once; later calls are ignored. Returns false if already settled. */
  _settle(ok: boolean, value: unknown): boolean {
    if (this._state !== 0) return false;
    this._state = ok ? 1 : 2;
    this._value = value;
    this._onCancel = null;
    if (this._resolve !== null) {
      if (ok) this._resolve(value as T);
      else this._reject!(value);
      this._resolve = null;
      this._reject = null;
    }
    return true;
  }

  /** @internal The task failed (not cancelled) and nobody has awaited the handle (for the warning at shutdown). */
  get _failedUnobserved(): boolean {
    if (this._state !== 2 || this._observed) return false;
    try {
      return !(this._value instanceof CancelledError);
    } catch {
      return true; // a thrown Proxy whose getPrototypeOf trap throws: not a cancellation
    }
  }

  /** @internal What the task failed with (undefined while pending or after success). */
  get _failure(): unknown {
    return this._state === 2 ? this._value : undefined;
  }

  private _p(): Promise<T> {
    this._observed = true;
    if (this._promise === null) {
      if (this._state === 1) this._promise = Promise.resolve(this._value as T);
      else if (this._state === 2) this._promise = Promise.reject(this._value);
      else
        this._promise = new Promise<T>((res, rej) => {
          this._resolve = res;
          this._reject = rej;
        });
    }
    return this._promise;
  }

  then<A = T, B = never>(onOk?: ((value: T) => A | PromiseLike<A>) | null, onErr?: ((reason: any) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this._p().then(onOk, onErr);
  }

  catch<B = never>(onErr?: ((reason: any) => B | PromiseLike<B>) | null): Promise<T | B> {
    return this._p().catch(onErr);
  }

  finally(onFinally?: (() => void) | null): Promise<T> {
    return this._p().finally(onFinally);
  }
}
