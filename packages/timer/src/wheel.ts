import { performance } from 'node:perf_hooks';
import { InvalidArgumentError, RuntimeError } from '@miniss/core';
import { checkDelay } from './validate.js';

/** A monotonic source of time in milliseconds (any origin; only differences matter). */
export interface Clock {
  now(): number;
}

/** `performance.now()`: monotonic, sub-millisecond, immune to wall-clock changes. */
export const monotonicClock: Clock = { now: () => performance.now() };

/** A clock that moves only when told to: deterministic wheel tests and simulations. */
export class ManualClock implements Clock {
  private _now: number;
  constructor(start = 0) {
    this._now = start;
  }
  now(): number {
    return this._now;
  }
  /** Moves time forward by `ms` (never backwards: a monotonic clock cannot). */
  advance(ms: number): number {
    if (typeof ms !== 'number' || !(ms >= 0) || !Number.isFinite(ms)) {
      throw new InvalidArgumentError(`ManualClock.advance: ms must be a finite non-negative number, got ${String(ms)}`);
    }
    this._now += ms;
    return this._now;
  }
  /** Sets the time; it may not go backwards. */
  set(ms: number): void {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < this._now) {
      throw new InvalidArgumentError(`ManualClock.set: ${String(ms)} is not a finite time at or after ${this._now}`);
    }
    this._now = ms;
  }
}

/**
 * What a timer calls when it fires: a function, or an object whose `fire()` is called (and whose
 * `drop(reason)`, if any, is called instead when the wheel is cleared with a reason, e.g. at
 * runtime shutdown). Objects let `sleep`, `Interval` and `timeout` keep their state without a
 * closure per timer.
 *
 * An object with `barrier: true` is only ever fired first in a `poll` (see
 * {@link TimerWheel.poll}): the targets due before it fire in an earlier `poll`, so their
 * promise reactions can all run before it fires. `timeout` uses it so that work settled by an
 * earlier timer of the same late wake-up wins the race (its settling cancels the timeout).
 */
export type TimerTarget = (() => void) | { fire(): void; drop?(reason: Error): void; readonly barrier?: boolean };

/** A timer's id: an integer, never reused while the timer it names could be confused with a new one. */
export type TimerId = number;

/** Number of levels of the wheel. */
export const LEVELS = 6;
/** Slots per level (one bit each in the level's occupied bitfield). */
export const SLOTS_PER_LEVEL = 64;
/**
 * The span of the whole wheel, in ticks (2^36 ms, about 2.18 years). Deadlines further away are
 * parked in the top level and re-inserted each time the top level comes round to them.
 */
export const WHEEL_SPAN = 2 ** 36;
/** Most timers one wheel holds at once (2^24, 16.7 million). */
export const MAX_TIMERS = 2 ** 24;

/** Ticks covered by one slot of each level: 64^level. */
const SLOT_RANGE = [1, 64, 4096, 262144, 16777216, 1073741824] as const;
/** Ticks covered by a whole level: 64^(level+1). */
const LEVEL_RANGE = [64, 4096, 262144, 16777216, 1073741824, 68719476736] as const;
/** Ticks below this are handled with 32-bit integer arithmetic in `_link`. */
const SMALL_TICKS = 2 ** 31;
/** The level whose 6-bit group holds bit b (0..31): b / 6, capped at the top level. */
const LEVEL_OF_BIT = Uint8Array.from({ length: 32 }, (_, b) => Math.min(LEVELS - 1, Math.floor(b / 6)));
/** The firing list used during `poll`: one more list after the 384 slots. */
const PENDING = LEVELS * SLOTS_PER_LEVEL;
/** `slot` of a free index. */
const FREE = -1;
/** End of a list. */
const NIL = -1;
const TWO_POW_32 = 4294967296;
const INDEX_MASK = MAX_TIMERS - 1;
/** Ids are index + generation * 2^24; past this the generation wraps round to 0. */
const ID_LIMIT = Number.MAX_SAFE_INTEGER - MAX_TIMERS;
/**
 * A hierarchical timing wheel (Varghese and Lauck, "Hashed and Hierarchical Timing Wheels: Data
 * Structures for the Efficient Implementation of a Timer Facility", SOSP 1987), laid out as
 * tokio's time driver lays out its own (`tokio/src/runtime/time/wheel`): 6 levels of 64 slots
 * with a tick of 1 ms, so level `n` has slots of 64^n ms and the wheel spans 64^6 ms = 2^36 ms
 * (about 2.18 years).
 *
 * Why this shape:
 *
 * - Insert and cancel are O(1): the level is found from the highest bit in which the deadline
 *   and the current time differ (`clz32` of their XOR), the slot from the deadline's 6 bits at
 *   that level, and the timer is linked into that slot's intrusive doubly-linked list. A removal
 *   is four link writes and, when the slot empties, one bit cleared.
 * - Each level has a 64-bit occupied bitfield (two 32-bit words here, JavaScript's bitwise
 *   operators being 32-bit), so the next expiration is found with a count-trailing-zeros per
 *   level, O(levels), never by walking slots or timers.
 * - Expiry cascades: when time reaches a slot of level `n > 0`, its timers are re-inserted
 *   relative to the slot's start and land on lower levels; a timer moves at most 5 times in its
 *   life. Timers in a level-0 slot are due exactly at that tick.
 * - Deadlines further than 2^36 ms away are put in the top level by their own 6 bits at that
 *   level (tokio's clamp): the top level then behaves as a ring, searched from the slot after
 *   the current one, and each time it comes round to the slot the timer is re-inserted until its
 *   deadline is within one rotation.
 * - Time is an integer tick count since the wheel's origin (a JavaScript number is exact up to
 *   2^53 ms, 285,000 years). Deadlines are rounded *up* to a whole tick and a timer fires only
 *   when `floor(now)` has reached its tick, so a timer never fires before its deadline.
 *
 * Memory: the lists are intrusive, but the nodes are not objects. Each timer is an index into
 * typed arrays (links, deadline, slot) plus one reference to its {@link TimerTarget}, and freed
 * indices are reused from a free list, so scheduling a timer allocates nothing and leaves the
 * garbage collector nothing to trace or copy; a million pending timers cost ~30 MB of arrays,
 * not a million objects. A timer is named by an id (index + generation * 2^24, as browsers'
 * `setTimeout` returns a number): a stale id, of a timer that fired or was cancelled, is
 * recognised and ignored even after its index was reused.
 *
 * The wheel never reads a clock on its own and never schedules anything: `poll(now)` fires what
 * is due. The per-runtime driver of `@miniss/timer` owns one, arms a single wake-up through the
 * runtime's backend for {@link TimerWheel.nextExpiration} and calls `poll` when it fires; with a
 * {@link ManualClock} a test drives it tick by tick.
 */
export class TimerWheel {
  readonly clock: Clock;
  /** `clock.now()` at construction: tick 0. */
  readonly origin: number;

  // Per timer index.
  private _next: Int32Array;
  private _prev: Int32Array;
  private _slot: Int32Array;
  private _when: Float64Array;
  private _id: Float64Array;
  /**
   * Per timer index i: the target at 2i, and at 2i+1 what to call instead when `clear(reason)`
   * drops it (for function targets); side by side so firing touches one cache line.
   */
  private _refs: Array<TimerTarget | ((reason: Error) => void) | null>;
  private _capacity: number;
  private _freeHead = NIL;
  // Indices >= _used are free and not on the free list. When the wheel empties, the free list is
  // dropped and _used restarts at 0, so the next burst of timers takes consecutive indices (its
  // typed-array entries share cache lines) instead of the scrambled order of the free list:
  // measured, a burst of 100k sleeps into a wheel with a scrambled free list cost ~250 ns more
  // per sleep (cache misses across the per-timer arrays).
  private _used = 0;
  /** Indices ever handed out: ids of indices below it carry a generation. */
  private _hwm = 0;

  // Per slot (+ the firing list).
  private readonly _heads = new Int32Array(PENDING + 1).fill(NIL);
  private readonly _tails = new Int32Array(PENDING + 1).fill(NIL);
  /** Occupied bitfields: level n uses words 2n (slots 0..31) and 2n+1 (slots 32..63). */
  private readonly _occupied = new Int32Array(LEVELS * 2);

  private _elapsed = 0;
  private _size = 0;
  /** A lower bound of the next expiration (exact after poll/nextExpiration), Infinity when empty. */
  private _hint = Infinity;
  private _polling = false;
  private _nextLevel = 0;
  private _nextSlot = 0;
  private readonly _onEarlier: ((tick: number) => void) | null;
  private readonly _onEmpty: (() => void) | null;
  private _fired = 0;
  private _cancelled = 0;

  constructor(options: TimerWheelOptions = {}) {
    this.clock = options.clock ?? monotonicClock;
    this.origin = this.clock.now();
    this._onEarlier = options.onEarlier ?? null;
    this._onEmpty = options.onEmpty ?? null;
    const cap = Math.min(MAX_TIMERS, Math.max(16, options.initialCapacity ?? 1024));
    this._capacity = cap;
    // Every array is written here (fill), not only allocated: a fresh typed array is untouched
    // zero pages, and the first write to each 4 KiB page then costs a page fault in the middle of
    // scheduling (measured: ~16 ns per timer for a million-timer wheel filled from empty).
    // `initialCapacity` commits the memory up front; growing does the same for the new half.
    this._next = new Int32Array(cap).fill(NIL);
    this._prev = new Int32Array(cap).fill(NIL);
    this._slot = new Int32Array(cap).fill(FREE);
    this._when = new Float64Array(cap).fill(0);
    this._id = new Float64Array(cap).fill(0);
    this._refs = new Array<TimerTarget | ((reason: Error) => void) | null>(cap * 2).fill(null);
  }

  /** Timers waiting (not fired, not cancelled). */
  get size(): number {
    return this._size;
  }

  /** The tick up to which the wheel has processed time. */
  get elapsed(): number {
    return this._elapsed;
  }

  /** True when timers are due and waiting to be fired (a `poll` with `maxFire` stopped early, or before a barrier). */
  get hasDue(): boolean {
    return this._heads[PENDING] !== NIL;
  }

  /**
   * True when the next due target is a barrier (`barrier: true`, see {@link TimerTarget}): the
   * next `poll` should come once every promise reaction queued so far has run (the runtime's
   * driver uses `setImmediate`), and with `barrierFirst` true.
   */
  get barrierDue(): boolean {
    const i = this._heads[PENDING]!;
    if (i === NIL) return false;
    const target = this._refs[2 * i] as TimerTarget;
    return typeof target !== 'function' && target.barrier === true;
  }

  /** Timers fired since construction. */
  get fired(): number {
    return this._fired;
  }

  /** Timers cancelled (or cleared) since construction. */
  get cancelled(): number {
    return this._cancelled;
  }

  /** The current tick according to the clock: whole milliseconds since the origin. */
  now(): number {
    return Math.floor(this.clock.now() - this.origin);
  }

  /**
   * Converts a delay from now into a deadline tick, rounded up so the deadline is never early.
   * Throws `INVALID_ARGUMENT` for a negative, NaN or infinite delay.
   */
  deadlineAfter(delayMs: number): number {
    checkDelay(delayMs, 'delay');
    const now = this.clock.now() - this.origin;
    // Catch up with the clock for free when no timer can be due before now: an insertion then
    // lands on the lowest level it can, instead of cascading from a stale position.
    const t = Math.floor(now);
    if (t > this._elapsed && !this._polling) {
      const limit = this._hint - 1;
      this._elapsed = t < limit ? t : limit > this._elapsed ? limit : this._elapsed;
    }
    return Math.ceil(now + delayMs);
  }

  /**
   * Schedules `target` to fire after `delayMs` (rounded up to whole ticks; 0 means the next
   * tick, as `setTimeout(fn, 0)` means 1 ms). Returns its id for {@link cancel}. `onDrop`: as
   * for {@link insertAt}.
   *
   * The clock is read on every call, so the deadline is `ceil(now + delayMs)` with `now` the
   * time of this very call, whatever ran before it. (Reading it once per 32 calls, as this wheel
   * once did to save a reading of 35-45 ns, needed a correction when time had moved on between
   * the calls, and that correction could only move timers later, by as long as the application
   * computed or the loop idled before the next reading: tens of milliseconds, or seconds.)
   */
  schedule(delayMs: number, target: TimerTarget, onDrop?: ((reason: Error) => void) | null): TimerId {
    checkDelay(delayMs, 'delay');
    const now = this.clock.now() - this.origin;
    // Catch up with the clock for free when no timer can be due before now (as deadlineAfter).
    const t = Math.floor(now);
    if (t > this._elapsed && !this._polling) {
      const limit = this._hint - 1;
      this._elapsed = t < limit ? t : limit > this._elapsed ? limit : this._elapsed;
    }
    return this.insertAt(Math.ceil(now + delayMs), target, onDrop);
  }

  /**
   * Schedules `target` for tick `when` (fractions round up; a tick at or before the last
   * processed one becomes the next tick). Returns its id. `onDrop`, if given, is called with the
   * reason when {@link clear} drops the timer with one (instead of an object target's `drop`):
   * `sleep` passes a promise's resolve as the target and its reject as `onDrop`, so a plain sleep
   * needs no object of its own.
   */
  insertAt(when: number, target: TimerTarget, onDrop?: ((reason: Error) => void) | null): TimerId {
    if (!(when > this._elapsed)) {
      if (typeof when !== 'number' || Number.isNaN(when)) throw new InvalidArgumentError(`insertAt: the deadline must be a number, got ${String(when)}`);
      when = this._elapsed + 1;
    } else if (when !== Math.floor(when)) {
      if (when === Infinity) throw new InvalidArgumentError('insertAt: the deadline must be finite');
      when = Math.ceil(when);
    }
    if (target === null || (typeof target !== 'function' && typeof target !== 'object')) {
      throw new InvalidArgumentError(`a timer target must be a function or an object with fire(), got ${target === null ? 'null' : typeof target}`);
    }
    let i = this._freeHead;
    let id: number;
    if (i !== NIL) {
      this._freeHead = this._next[i]!;
      id = this._id[i]! + MAX_TIMERS;
      if (id > ID_LIMIT) id = i;
    } else {
      if (this._used === this._capacity) this._grow();
      i = this._used++;
      if (i < this._hwm) {
        id = this._id[i]! + MAX_TIMERS;
        if (id > ID_LIMIT) id = i;
      } else {
        this._hwm = i + 1;
        id = i;
      }
    }
    this._id[i] = id;
    this._when[i] = when;
    this._refs[2 * i] = target;
    if (onDrop !== undefined && onDrop !== null) this._refs[2 * i + 1] = onDrop;
    this._size++;
    const d = this._link(i, when);
    if (d < this._hint) {
      this._hint = d;
      if (this._onEarlier !== null && !this._polling) this._onEarlier(d);
    }
    return id;
  }

  /** True while timer `id` is waiting. */
  isActive(id: TimerId): boolean {
    const i = id & INDEX_MASK;
    return i < this._hwm && this._id[i] === id && this._slot[i]! !== FREE;
  }

  /** The deadline tick of a waiting timer, or NaN if `id` is not waiting. */
  deadlineOf(id: TimerId): number {
    return this.isActive(id) ? this._when[id & INDEX_MASK]! : NaN;
  }

  /**
   * Cancels timer `id`: O(1). True if it was waiting; false if it fired, was cancelled, or is
   * not an id of this wheel. Its target is never called.
   */
  cancel(id: TimerId): boolean {
    const i = id & INDEX_MASK;
    if (i >= this._hwm || this._id[i] !== id) return false;
    const s = this._slot[i]!;
    if (s === FREE) return false;
    this._unlink(i, s);
    this._free(i);
    this._cancelled++;
    if (--this._size === 0) {
      this._restartIndices();
      this._hint = Infinity;
      if (this._onEmpty !== null && !this._polling) this._onEmpty();
    }
    return true;
  }

  /**
   * Moves waiting timer `id` to tick `when` (same target); returns the new id, or -1 if `id` was
   * not waiting. Equivalent to cancel + insertAt, without counting a cancellation.
   */
  reschedule(id: TimerId, when: number): TimerId {
    const i = id & INDEX_MASK;
    if (i >= this._hwm || this._id[i] !== id || this._slot[i]! === FREE) return -1;
    const target = this._refs[2 * i] as TimerTarget;
    const onDrop = this._refs[2 * i + 1] as ((reason: Error) => void) | null;
    this._unlink(i, this._slot[i]!);
    this._free(i);
    this._size--;
    return this.insertAt(when, target, onDrop);
  }

  /**
   * The tick at which `poll` next has work to do (a timer's deadline, or the start of a higher
   * level's slot whose timers must cascade down), or Infinity when the wheel is empty. Never
   * later than the earliest deadline.
   */
  nextExpiration(): number {
    const d = this._size === 0 ? Infinity : this._heads[PENDING] !== NIL ? this._elapsed : this._findNext();
    this._hint = d;
    return d;
  }

  /**
   * Advances the wheel to tick `now` (default: the clock's) and fires every timer whose deadline
   * is at or before it, in deadline order (timers due in the same tick: unspecified order).
   * Targets may schedule and cancel timers, including ones due in this same poll; a timer
   * scheduled by a target never fires in the poll that ran it. Returns how many fired. If
   * targets throw, the others still fire and the first error is rethrown at the end. Re-entrant
   * calls (a target calling `poll`) return 0.
   *
   * With `maxFire`, at most that many targets are called; the rest of what is due stays queued
   * ({@link hasDue} is true, {@link nextExpiration} is the current tick) and the next `poll`
   * fires it first. The runtime's driver fires in chunks so that the promise reactions of the
   * sleeps a chunk resolved run before the next chunk (as Node runs microtasks between timers),
   * instead of after a whole burst.
   *
   * A barrier target (`barrier: true`, see {@link TimerTarget}) is fired only as the first
   * target of a `poll` whose `barrierFirst` is true (the default): the poll stops before a
   * barrier that comes after other targets, or any barrier when `barrierFirst` is false, and
   * leaves it due ({@link hasDue} and {@link barrierDue} are true). The caller then polls again
   * once the reactions of what fired have run. Due targets still fire in deadline order.
   */
  poll(now: number = this.now(), maxFire: number = Infinity, barrierFirst = true): number {
    if (this._polling) return 0;
    now = Math.floor(now);
    if (!(now > this._elapsed) && this._heads[PENDING] === NIL) return 0;
    this._polling = true;
    let fired = 0;
    let firstError: unknown = undefined;
    let failed = false;
    const heads = this._heads;
    const tails = this._tails;
    const nextA = this._next;
    const whenA = this._when;
    const slotA = this._slot;
    try {
      while (this._size > 0) {
        const d = this._findNext();
        if (d > now) break;
        const idx = this._nextLevel * SLOTS_PER_LEVEL + this._nextSlot;
        let i = heads[idx]!;
        const last = tails[idx]!;
        heads[idx] = NIL;
        tails[idx] = NIL;
        this._occupied[idx >> 5]! &= ~(1 << (idx & 31));
        this._elapsed = d;
        if (idx < SLOTS_PER_LEVEL) {
          // A level-0 slot holds exactly the timers due at tick d: splice the whole list onto
          // the firing list (only each timer's slot changes, for cancellation by a target).
          for (let j = i; j !== NIL; j = nextA[j]!) slotA[j] = PENDING;
          const ptail = tails[PENDING]!;
          if (ptail === NIL) heads[PENDING] = i;
          else {
            nextA[ptail] = i;
            this._prev[i] = ptail;
          }
          tails[PENDING] = last;
          continue;
        }
        // Re-insert relative to the slot's start, as tokio's process_expiration does: timers
        // that are not due yet land on a lower level.
        while (i !== NIL) {
          const next = nextA[i]!;
          if (whenA[i]! <= d) this._append(PENDING, i);
          else this._link(i, whenA[i]!);
          i = next;
        }
      }
      if (now > this._elapsed) this._elapsed = now;
      // Fire. Targets may cancel timers still in the firing list (it is a list like the slots),
      // and may schedule enough to grow the arrays: read them from `this` on every turn.
      let i: number;
      while ((i = heads[PENDING]!) !== NIL && fired < maxFire) {
        const target = this._refs[2 * i] as TimerTarget;
        // A barrier fires only first (see the doc above): stop before it, it stays due.
        if (typeof target !== 'function' && target.barrier === true && (fired > 0 || !barrierFirst)) break;
        const next = this._next[i]!;
        heads[PENDING] = next;
        if (next === NIL) tails[PENDING] = NIL;
        else this._prev[next] = NIL;
        this._free(i);
        if (--this._size === 0) this._restartIndices();
        this._fired++;
        fired++;
        try {
          if (typeof target === 'function') target();
          else target.fire();
        } catch (err) {
          if (!failed) {
            failed = true;
            firstError = err;
          }
        }
      }
    } finally {
      this._polling = false;
      this._hint = this._size === 0 ? Infinity : heads[PENDING] !== NIL ? this._elapsed : this._findNext();
    }
    if (failed) throw firstError;
    return fired;
  }

  /**
   * Cancels every waiting timer. With a `reason`, each object target's `drop(reason)` is called
   * (the runtime shutting down rejects the sleeps waiting on it). Returns how many were waiting.
   */
  clear(reason?: Error): number {
    const dropped: Array<TimerTarget | ((reason: Error) => void)> = [];
    let count = 0;
    for (let s = 0; s <= PENDING; s++) {
      let i = this._heads[s]!;
      this._heads[s] = NIL;
      this._tails[s] = NIL;
      while (i !== NIL) {
        const next = this._next[i]!;
        const target = this._refs[2 * i] as TimerTarget;
        const onDrop = this._refs[2 * i + 1] as ((reason: Error) => void) | null;
        if (onDrop !== null && onDrop !== undefined) dropped.push(onDrop);
        else if (typeof target !== 'function' && typeof target.drop === 'function') dropped.push(target);
        count++;
        this._free(i);
        i = next;
      }
    }
    this._occupied.fill(0);
    this._size = 0;
    this._restartIndices();
    this._hint = Infinity;
    this._cancelled += count;
    if (reason !== undefined) {
      for (const t of dropped) {
        try {
          if (typeof t === 'function') t(reason);
          else t.drop!(reason);
        } catch {
          /* a failing drop hook must not keep the others from being told */
        }
      }
    }
    return count;
  }

  /** Links index `i` into the slot for `when` relative to `_elapsed`; returns that slot's start. */
  private _link(i: number, when: number): number {
    const el = this._elapsed;
    if (when < SMALL_TICKS) {
      // The common case (the first 24.8 days of a wheel): el < when < 2^31, so the level, slot and
      // slot start come from 32-bit integer operations instead of floating-point division and
      // modulo (a `%` of doubles is a libm call).
      const level = LEVEL_OF_BIT[31 - Math.clz32((el ^ when) | 63)]!;
      let slot: number;
      let d: number;
      if (level === 0) {
        slot = when & 63;
        d = when;
      } else {
        const shift = level * 6;
        slot = (when >>> shift) & 63;
        // The start of `el`'s span at this level, plus the slot's offset. At the top level the
        // span (2^36) is beyond 2^31, so that start is 0.
        d = (level < LEVELS - 1 ? el & -(1 << (shift + 6)) : 0) + (slot << shift);
        if (d <= el) d += LEVEL_RANGE[level]!;
      }
      const idx = level * SLOTS_PER_LEVEL + slot;
      this._append(idx, i);
      this._occupied[idx >> 5]! |= 1 << (idx & 31);
      return d;
    }
    let level: number;
    // Highest differing bit of elapsed and when, in 6-bit groups, capped at the top level.
    // Division truncates to the high 32-bit word (both are < 2^53); `^` takes the low word.
    if (((el / TWO_POW_32) ^ (when / TWO_POW_32)) !== 0) level = LEVELS - 1;
    else level = ((31 - Math.clz32((el ^ when) | 63)) / 6) | 0;
    let d: number;
    let slot: number;
    if (level === 0) {
      slot = when & 63;
      d = when;
    } else {
      const sr = SLOT_RANGE[level]!;
      const lr = LEVEL_RANGE[level]!;
      slot = Math.floor(when / sr) & 63;
      d = el - (el % lr) + slot * sr;
      if (d <= el) d += lr; // the top level wraps (far deadlines)
    }
    const idx = level * SLOTS_PER_LEVEL + slot;
    this._append(idx, i);
    this._occupied[idx >> 5]! |= 1 << (idx & 31);
    return d;
  }

  private _append(idx: number, i: number): void {
    const tail = this._tails[idx]!;
    this._slot[i] = idx;
    this._prev[i] = tail;
    this._next[i] = NIL;
    if (tail === NIL) this._heads[idx] = i;
    else this._next[tail] = i;
    this._tails[idx] = i;
  }

  private _unlink(i: number, s: number): void {
    const prev = this._prev[i]!;
    const next = this._next[i]!;
    if (prev === NIL) this._heads[s] = next;
    else this._next[prev] = next;
    if (next === NIL) this._tails[s] = prev;
    else this._prev[next] = prev;
    if (prev === NIL && next === NIL && s !== PENDING) this._occupied[s >> 5]! &= ~(1 << (s & 31));
  }

  /** The wheel is empty: hand out indices from 0 again, in order (see `_used`). */
  private _restartIndices(): void {
    this._freeHead = NIL;
    this._used = 0;
  }

  private _free(i: number): void {
    this._slot[i] = FREE;
    this._refs[2 * i] = null;
    this._refs[2 * i + 1] = null;
    this._next[i] = this._freeHead;
    this._freeHead = i;
  }

  private _grow(): void {
    const old = this._capacity;
    if (old >= MAX_TIMERS) {
      throw new RuntimeError('TIMER_LIMIT', `a timer wheel holds at most ${MAX_TIMERS} timers at once`);
    }
    const cap = Math.min(MAX_TIMERS, old * 2);
    const grow = <A extends Int32Array | Float64Array>(a: A, make: (n: number) => A, fill: number): A => {
      const b = make(cap);
      b.set(a);
      b.fill(fill, old); // commit the new half now (see the constructor)
      return b;
    };
    this._next = grow(this._next, (n) => new Int32Array(n), NIL);
    this._prev = grow(this._prev, (n) => new Int32Array(n), NIL);
    this._slot = grow(this._slot, (n) => new Int32Array(n), FREE);
    this._when = grow(this._when, (n) => new Float64Array(n), 0);
    this._id = grow(this._id, (n) => new Float64Array(n), 0);
    this._refs.length = cap * 2;
    this._refs.fill(null, old * 2);
    this._capacity = cap;
  }

  /** Finds the first level with an occupied slot and that slot's start; sets _nextLevel/_nextSlot. */
  private _findNext(): number {
    const el = this._elapsed;
    const occ = this._occupied;
    for (let level = 0; level < LEVELS; level++) {
      const lo = occ[level * 2]!;
      const hi = occ[level * 2 + 1]!;
      if ((lo | hi) === 0) continue;
      const sr = SLOT_RANGE[level]!;
      const lr = LEVEL_RANGE[level]!;
      const nowSlot = Math.floor(el / sr) & 63;
      // Lower levels never hold timers in or behind the current slot. The top level does: it is
      // a ring for deadlines parked there from a rotation or more away, so its search starts
      // after the current slot, and the current slot, a full rotation ahead, comes last.
      const slot = nextSetBit(lo, hi, level === LEVELS - 1 ? (nowSlot + 1) & 63 : nowSlot);
      let d = el - (el % lr) + slot * sr;
      if (d <= el) d += lr;
      this._nextLevel = level;
      this._nextSlot = slot;
      return d;
    }
    return Infinity;
  }
}

export interface TimerWheelOptions {
  /** Where "now" comes from. Default {@link monotonicClock}; {@link ManualClock} for tests. */
  clock?: Clock;
  /** Timers the arrays hold before they first grow (they double as needed). Default 1024. */
  initialCapacity?: number;
  /**
   * Called (outside `poll`) when an insertion makes the next expiration earlier than any seen
   * since the last `poll`/`nextExpiration`: the driver re-arms its wake-up if it has to.
   */
  onEarlier?: ((tick: number) => void) | null;
  /** Called (outside `poll`) when a cancellation leaves the wheel empty: the driver releases its wake-up. */
  onEmpty?: (() => void) | null;
  /**
   * @deprecated Ignored. It let `schedule` read the clock once per 32 calls; the clock is now read
   * on every call, because the correction that reuse needed could make timers fire late by an
   * unbounded amount (see {@link TimerWheel.schedule}).
   */
  reuseClock?: boolean;
}

function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** The first set bit at or after `from` in the 64-bit word (hi:lo), wrapping round; the word is non-zero. */
function nextSetBit(lo: number, hi: number, from: number): number {
  if (from < 32) {
    const m = lo & (-1 << from);
    if (m !== 0) return ctz(m);
    if (hi !== 0) return 32 + ctz(hi);
    return ctz(lo);
  }
  const m = hi & (-1 << (from - 32));
  if (m !== 0) return 32 + ctz(m);
  if (lo !== 0) return ctz(lo);
  return 32 + ctz(hi);
}
