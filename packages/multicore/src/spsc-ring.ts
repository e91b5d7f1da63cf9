import { InvalidArgumentError } from '@miniss/core';

/**
 * A low-level typed channel for advanced users: a bounded, lock-free single-producer
 * single-consumer queue of numbers (float64) in a SharedArrayBuffer. This is what the task
 * transport is made of, without the message framing, the structured clone and the doorbells:
 * the fastest way to stream numbers from one core to another.
 *
 * ```ts
 * const ring = new SpscRing(1024);
 * const consumer = mc.spawnOn(1, async (sab) => {
 *   const { SpscRing } = await import('@miniss/multicore');
 *   const r = SpscRing.attach(sab);
 *   let sum = 0;
 *   for (let got = 0; got < 1e6; ) {
 *     const v = r.pop();
 *     if (v === undefined) { await new Promise((res) => setImmediate(res)); continue; }
 *     sum += v; got++;
 *   }
 *   return sum;
 * }, ring.buffer);
 * for (let i = 0; i < 1e6; ) { if (ring.push(i)) i++; else await new Promise((r) => setImmediate(r)); }
 * ring.flush();
 * ```
 *
 * Rules: exactly one thread pushes and exactly one thread pops (any two cores, fixed for the
 * ring's life). `push`/`pushBatch` write with plain stores and publish with one `Atomics.store`
 * per call (`push` publishes at once unless `publish: false`, then call {@link flush});
 * `pop`/`popBatch` free slots with one `Atomics.store` per call. Nothing wakes a sleeping
 * consumer: poll (between `setImmediate` turns) or pair the ring with your own
 * `Atomics.wait`/`notify` word. Values are numbers (float64); encode other data into them or use
 * tasks (`spawnOn`) for structured data.
 *
 * Layout: tail (producer) and head (consumer) indices on separate 64-byte cache lines, then
 * `capacity` float64 slots (`capacity` a power of two).
 */
export class SpscRing {
  /** The shared memory: pass it to another core (as a task argument) and {@link attach} there. */
  readonly buffer: SharedArrayBuffer;
  /** Slots in the ring. */
  readonly capacity: number;
  private readonly idx: Int32Array;
  private readonly data: Float64Array;
  private readonly mask: number;
  // Producer-side private state.
  private tail: number;
  private cachedHead: number;
  // Consumer-side private state.
  private head: number;
  private cachedTail: number;

  /** Creates a ring of at least `capacity` slots (rounded up to a power of two, at least 2). */
  constructor(capacity: number);
  /** @internal Use {@link SpscRing.attach}. */
  constructor(capacity: number, existing: SharedArrayBuffer);
  constructor(capacity: number, existing?: SharedArrayBuffer) {
    if (existing === undefined) {
      if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 28) {
        throw new InvalidArgumentError(`SpscRing capacity must be an integer in 1..2^28, got ${String(capacity)}`);
      }
      let cap = 2;
      while (cap < capacity) cap *= 2;
      this.buffer = new SharedArrayBuffer(HEADER + cap * 8);
    } else {
      this.buffer = existing;
    }
    this.capacity = (this.buffer.byteLength - HEADER) / 8;
    this.mask = this.capacity - 1;
    this.idx = new Int32Array(this.buffer, 0, HEADER / 4);
    this.data = new Float64Array(this.buffer, HEADER, this.capacity);
    this.tail = Atomics.load(this.idx, TAIL) >>> 0;
    this.cachedHead = Atomics.load(this.idx, HEAD) >>> 0;
    this.head = this.cachedHead;
    this.cachedTail = this.tail;
  }

  /** Opens a ring created elsewhere (another core) from its {@link buffer}. */
  static attach(buffer: SharedArrayBuffer): SpscRing {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength <= HEADER || (buffer.byteLength - HEADER) % 8 !== 0) {
      throw new InvalidArgumentError('SpscRing.attach expects the buffer of an SpscRing');
    }
    const cap = (buffer.byteLength - HEADER) / 8;
    if ((cap & (cap - 1)) !== 0) throw new InvalidArgumentError('SpscRing.attach expects the buffer of an SpscRing');
    return new SpscRing(cap, buffer);
  }

  /**
   * Producer: appends `value`; false when the ring is full (nothing written). Publishes at once
   * unless `publish` is false (then {@link flush} makes a batch visible with one store).
   */
  push(value: number, publish = true): boolean {
    const t = this.tail;
    if (((t - this.cachedHead) >>> 0) >= this.capacity) {
      this.cachedHead = Atomics.load(this.idx, HEAD) >>> 0;
      if (((t - this.cachedHead) >>> 0) >= this.capacity) return false;
    }
    this.data[t & this.mask] = value;
    this.tail = (t + 1) >>> 0;
    if (publish) Atomics.store(this.idx, TAIL, this.tail | 0);
    return true;
  }

  /**
   * Producer: appends `values[from..to)` as far as they fit and publishes once. Returns how many
   * were written (from the start of the range; the rest did not fit). `from` and `to` must be
   * integers with 0 <= from <= to <= values.length (else `INVALID_ARGUMENT`, nothing written).
   */
  pushBatch(values: ArrayLike<number>, from = 0, to = values.length): number {
    if (!isIndex(from) || !isIndex(to) || from > to || to > values.length) {
      throw new InvalidArgumentError(
        `SpscRing.pushBatch: from and to must be integers with 0 <= from <= to <= values.length (${describe(values)}), got from ${shown(from)}, to ${shown(to)}`,
      );
    }
    const t = this.tail;
    let free = this.capacity - ((t - this.cachedHead) >>> 0);
    if (free < to - from) {
      this.cachedHead = Atomics.load(this.idx, HEAD) >>> 0;
      free = this.capacity - ((t - this.cachedHead) >>> 0);
    }
    const n = Math.min(free, to - from);
    if (n <= 0) return 0;
    const data = this.data;
    const mask = this.mask;
    for (let i = 0; i < n; i++) data[(t + i) & mask] = values[from + i]!;
    this.tail = (t + n) >>> 0;
    Atomics.store(this.idx, TAIL, this.tail | 0);
    return n;
  }

  /** Producer: publishes everything pushed with `publish: false`. */
  flush(): void {
    Atomics.store(this.idx, TAIL, this.tail | 0);
  }

  /** Consumer: the oldest value, or undefined when the ring is empty. Frees its slot at once. */
  pop(): number | undefined {
    const h = this.head;
    if (h === this.cachedTail) {
      this.cachedTail = Atomics.load(this.idx, TAIL) >>> 0;
      if (h === this.cachedTail) return undefined;
    }
    const v = this.data[h & this.mask]!;
    this.head = (h + 1) >>> 0;
    Atomics.store(this.idx, HEAD, this.head | 0);
    return v;
  }

  /**
   * Consumer: moves up to `max` (default `out.length`) values into `out` (from index 0) and frees
   * their slots with one store. Returns how many. `max` must be a non-negative integer (else
   * `INVALID_ARGUMENT`, nothing taken); a typed array takes at most its length (the rest stays in
   * the ring), an array grows as needed.
   */
  popBatch(out: Float64Array | number[], max = out.length): number {
    if (!isIndex(max)) {
      throw new InvalidArgumentError(`SpscRing.popBatch: max must be a non-negative integer, got ${shown(max)}`);
    }
    if (out instanceof Float64Array) {
      if (max > out.length) max = out.length;
    } else if (!Array.isArray(out)) {
      const o = out as unknown;
      if (!ArrayBuffer.isView(o) || o instanceof DataView || o instanceof BigInt64Array || o instanceof BigUint64Array) {
        throw new InvalidArgumentError(`SpscRing.popBatch: out must be an array or a typed array of numbers (a Float64Array keeps every value exactly), got ${describe(o)}`);
      }
      if (max > (o as Float64Array).length) max = (o as Float64Array).length;
    }
    const h = this.head;
    this.cachedTail = Atomics.load(this.idx, TAIL) >>> 0;
    const n = Math.min(max, (this.cachedTail - h) >>> 0);
    if (n === 0) return 0;
    const data = this.data;
    const mask = this.mask;
    for (let i = 0; i < n; i++) out[i] = data[(h + i) & mask]!;
    this.head = (h + n) >>> 0;
    Atomics.store(this.idx, HEAD, this.head | 0);
    return n;
  }

  /** Published values not consumed yet (as seen from either side; approximate while both run). */
  get size(): number {
    return ((Atomics.load(this.idx, TAIL) >>> 0) - (Atomics.load(this.idx, HEAD) >>> 0)) >>> 0;
  }
}

/** A valid index or count: an integer in 0..2^32-1 (false for NaN, fractions, negatives and non-numbers). */
function isIndex(v: unknown): v is number {
  return typeof v === 'number' && (v >>> 0) === v;
}

/** A number argument for an error message: strings quoted (so '2' does not read as 2). */
function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : typeof v === 'object' && v !== null ? describe(v) : String(v);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v !== 'object') return typeof v;
  const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
  const len = (v as { length?: unknown }).length;
  return `${typeof name === 'string' ? name : 'object'}${typeof len === 'number' ? ` of length ${len}` : ''}`;
}

const HEADER = 128;
const TAIL = 0;
const HEAD = 16;
