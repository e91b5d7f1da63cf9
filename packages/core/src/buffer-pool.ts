import type { BufferHandle } from './backend.js';
import { InvalidArgumentError, RuntimeError } from './errors.js';

export interface BufferPoolConfig {
  /**
   * The sizes buffers come in: ascending, distinct powers of two from 512 bytes to 64 MiB.
   * Default 4 KiB, 8 KiB, ..., 1 MiB (nine classes).
   */
  sizeClasses: number[];
  /** Buffers of every size class allocated up front by the constructor. Default 0. */
  preallocCount: number;
  /**
   * Start address alignment of each buffer, a power of two up to 64 KiB. Default 4096 (the
   * `O_DIRECT` requirement). Only honoured when the pool has a native allocator (see
   * {@link BufferPool}); JavaScript `ArrayBuffer`s give no alignment guarantee.
   */
  alignment: number;
  /** The most bytes the pool may hold (in use plus free lists). Default 256 MiB. */
  maxMemory: number;
}

/** A native allocator: `capacity` bytes starting at an address aligned to `alignment`. */
export type BufferAllocator = (capacity: number, alignment: number) => Uint8Array;

export interface BufferPoolClassStats {
  /** The class's capacity in bytes. */
  size: number;
  /** Buffers of this class handed out and not yet returned. */
  inUse: number;
  /** Buffers of this class waiting in its free list. */
  free: number;
}

export interface BufferPoolStats {
  /** Buffers handed out and not yet returned. */
  allocated: number;
  /** Buffers waiting in free lists. */
  free: number;
  /** Capacity of the buffers handed out. */
  bytesInUse: number;
  /** Capacity of every buffer the pool holds: handed out plus free. Never above `maxMemory`. */
  bytesReserved: number;
  /** Allocations served from a free list. */
  hits: number;
  /** Allocations that needed new memory. */
  misses: number;
  /** Allocations refused (returned null) because `maxMemory` would have been exceeded. */
  exhausted: number;
  maxMemory: number;
  sizeClasses: BufferPoolClassStats[];
}

const KiB = 1024;
const MiB = 1024 * KiB;
const MIN_CLASS = 512;
const MAX_CLASS = 64 * MiB;
const MAX_ALIGNMENT = 64 * KiB;

export const DEFAULT_BUFFER_POOL_CONFIG: Readonly<BufferPoolConfig> = Object.freeze({
  sizeClasses: Object.freeze([4, 8, 16, 32, 64, 128, 256, 512, 1024].map((k) => k * KiB)) as unknown as number[],
  preallocCount: 0,
  alignment: 4096,
  maxMemory: 256 * MiB,
});

const CONFIG_KEYS = new Set(['sizeClasses', 'preallocCount', 'alignment', 'maxMemory']);

function invalidConfig(message: string): RuntimeError {
  return new RuntimeError('INVALID_CONFIG', `bufferPool: ${message}`);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Fills in defaults and checks every value; throws `INVALID_CONFIG` naming the bad key. */
export function resolveBufferPoolConfig(config: Partial<BufferPoolConfig> = {}): BufferPoolConfig {
  if (config === null || typeof config !== 'object') throw invalidConfig('the config must be an object');
  for (const key of Object.keys(config)) {
    if (!CONFIG_KEYS.has(key)) throw invalidConfig(`unknown key '${key}' (known: ${[...CONFIG_KEYS].join(', ')})`);
  }
  const sizeClasses = config.sizeClasses ?? DEFAULT_BUFFER_POOL_CONFIG.sizeClasses;
  if (!Array.isArray(sizeClasses) || sizeClasses.length === 0) {
    throw invalidConfig('sizeClasses must be a non-empty array of sizes in bytes');
  }
  for (let i = 0; i < sizeClasses.length; i++) {
    const s = sizeClasses[i];
    if (typeof s !== 'number' || !isPowerOfTwo(s) || s < MIN_CLASS || s > MAX_CLASS) {
      throw invalidConfig(`sizeClasses[${i}] = ${String(s)}: every size class must be a power of two from ${MIN_CLASS} bytes to 64 MiB`);
    }
    if (i > 0 && s <= sizeClasses[i - 1]!) {
      throw invalidConfig(`sizeClasses must be strictly ascending (${sizeClasses[i - 1]} then ${s})`);
    }
  }
  const alignment = config.alignment ?? DEFAULT_BUFFER_POOL_CONFIG.alignment;
  if (typeof alignment !== 'number' || !isPowerOfTwo(alignment) || alignment > MAX_ALIGNMENT) {
    throw invalidConfig(`alignment must be a power of two from 1 to ${MAX_ALIGNMENT}, got ${String(alignment)}`);
  }
  const maxMemory = config.maxMemory ?? DEFAULT_BUFFER_POOL_CONFIG.maxMemory;
  if (typeof maxMemory !== 'number' || !Number.isSafeInteger(maxMemory) || maxMemory <= 0) {
    throw invalidConfig(`maxMemory must be a positive integer number of bytes, got ${String(maxMemory)}`);
  }
  const preallocCount = config.preallocCount ?? DEFAULT_BUFFER_POOL_CONFIG.preallocCount;
  if (typeof preallocCount !== 'number' || !Number.isSafeInteger(preallocCount) || preallocCount < 0) {
    throw invalidConfig(`preallocCount must be a non-negative integer, got ${String(preallocCount)}`);
  }
  const perRound = sizeClasses.reduce((a, b) => a + b, 0);
  if (preallocCount * perRound > maxMemory) {
    throw invalidConfig(
      `preallocCount ${preallocCount} needs ${preallocCount * perRound} bytes (one buffer of every class each), more than maxMemory ${maxMemory}`,
    );
  }
  return { sizeClasses: [...sizeClasses], preallocCount, alignment, maxMemory };
}

/**
 * A handle the pool hands out. Fresh per allocation (the storage behind it is what gets reused),
 * so a stale handle freed twice is always detected, even after its storage went to someone else.
 */
class PoolBuffer implements BufferHandle {
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly capacity: number;
  /** @internal */ readonly _owner: BufferPool;
  /**
   * @internal False once deallocated. File I/O and every backend's `submit` refuse a handle whose
   * flag is false (`INVALID_ARGUMENT`, see `isDeallocated` in io-operation.ts): its storage may
   * already be another handle's.
   */
  _live = true;
  /** @internal */ readonly _storage: Uint8Array;
  /** @internal */ readonly _class: number;

  constructor(pool: BufferPool, storage: Uint8Array, size: number, cls: number) {
    this._owner = pool;
    this._storage = storage;
    this._class = cls;
    this.size = size;
    this.capacity = storage.byteLength;
    this.bytes = size === storage.byteLength ? storage : storage.subarray(0, size);
  }
}

/**
 * A pool of I/O buffers in power-of-two size classes, one free list per class.
 *
 * Why size classes: an I/O buffer's life is short and its size clusters around a few values
 * (a socket read, a file block, a page). Rounding every request up to a power of two bounds the
 * waste to under half and lets a freed buffer serve the next request of any size in its class,
 * so steady-state I/O allocates nothing: `allocate` pops a free list, `deallocate` pushes one,
 * both O(1) and without touching the garbage collector. This is the scheme of Seastar's
 * per-shard buffer allocator and of glommio's `BufferPool`/io_uring registered buffers (both
 * thread-per-core runtimes keep one pool per core, as miniss does: one per runtime, never shared
 * across threads, so it needs no locks).
 *
 * Why it matters more here than in C++: `new ArrayBuffer` costs a zeroing pass and, for
 * `directIo` backends, native aligned memory is an addon call plus an external-memory report to
 * V8. Reusing buffers keeps both off the hot path.
 *
 * Memory: with a native allocator (the `allocate` constructor argument, normally the backend's
 * `allocateBuffer`), buffers are native memory aligned to `alignment`, usable with `O_DIRECT`.
 * Without one they are plain `ArrayBuffer`s and **no alignment is guaranteed** (V8 decides where
 * a backing store lives); the `node` backend has no `directIo` feature for this reason.
 *
 * Limits: `bytesReserved` (handed out plus free) never exceeds `maxMemory`. When a new buffer
 * would exceed it, free buffers of other classes are released first; if that is not enough
 * `allocate` returns `null` (it never blocks or waits). Contents are not cleared between uses.
 *
 * Errors: `allocate` of a size that is not a positive integer, or larger than the largest size
 * class, throws `INVALID_ARGUMENT` (such a request is a bug, not memory pressure); `deallocate` of
 * a handle twice throws `DOUBLE_FREE`; of an object this pool did not hand out, `INVALID_ARGUMENT`.
 * A buffer must not be deallocated while an I/O operation still uses it. A handle used for I/O
 * after it was deallocated is refused with `INVALID_ARGUMENT` (its memory may already serve the
 * next `allocate`): keep the handle's `bytes` only while you own the handle.
 */
export class BufferPool {
  readonly config: Readonly<BufferPoolConfig>;
  private readonly _alloc: BufferAllocator | null;
  private readonly _classes: number[];
  private readonly _free: Uint8Array[][];
  private readonly _inUse: number[];
  private _allocated = 0;
  private _freeCount = 0;
  private _bytesInUse = 0;
  private _bytesReserved = 0;
  private _hits = 0;
  private _misses = 0;
  private _exhausted = 0;

  constructor(config?: Partial<BufferPoolConfig>, allocate?: BufferAllocator) {
    if (allocate !== undefined && typeof allocate !== 'function') {
      throw new InvalidArgumentError('BufferPool: the allocator must be a function (capacity, alignment) => Uint8Array');
    }
    this.config = Object.freeze(resolveBufferPoolConfig(config));
    this._alloc = allocate ?? null;
    this._classes = this.config.sizeClasses;
    this._free = this._classes.map(() => []);
    this._inUse = this._classes.map(() => 0);
    if (this.config.preallocCount > 0) {
      for (const cls of this._classes) this.prealloc(cls, this.config.preallocCount);
    }
  }

  /** True when buffers come from a native aligned allocator (usable for `O_DIRECT`). */
  get aligned(): boolean {
    return this._alloc !== null;
  }

  /** The largest size `allocate` accepts. */
  get maxSize(): number {
    return this._classes[this._classes.length - 1]!;
  }

  /**
   * A buffer of at least `size` bytes (`handle.bytes.length === size`), from the smallest class
   * that fits. Returns `null` if the pool would exceed `maxMemory`; never blocks.
   */
  allocate(size: number): BufferHandle | null {
    if (typeof size !== 'number' || !Number.isInteger(size) || size <= 0) {
      throw new InvalidArgumentError(`BufferPool.allocate: size must be a positive integer, got ${String(size)}`);
    }
    const classes = this._classes;
    let cls = 0;
    while (cls < classes.length && classes[cls]! < size) cls++;
    if (cls === classes.length) {
      throw new InvalidArgumentError(
        `BufferPool.allocate: ${size} bytes is larger than the largest size class (${this.maxSize}); add a class to bufferPool.sizeClasses`,
      );
    }
    const list = this._free[cls]!;
    let storage = list.pop();
    if (storage !== undefined) {
      this._hits++;
      this._freeCount--;
    } else {
      storage = this._newStorage(cls);
      if (storage === undefined) {
        this._exhausted++;
        return null;
      }
      this._misses++;
      this._bytesReserved += storage.byteLength;
    }
    this._allocated++;
    this._inUse[cls]!++;
    this._bytesInUse += storage.byteLength;
    return new PoolBuffer(this, storage, size, cls);
  }

  /**
   * Returns a buffer to its free list. Exactly once per handle: a second time throws
   * `DOUBLE_FREE`; a handle from another pool (or any other object) throws `INVALID_ARGUMENT`.
   */
  deallocate(handle: BufferHandle): void {
    if (!(handle instanceof PoolBuffer)) {
      throw new InvalidArgumentError('BufferPool.deallocate: not a buffer handle from a BufferPool');
    }
    if (handle._owner !== this) {
      throw new InvalidArgumentError('BufferPool.deallocate: the handle belongs to another BufferPool');
    }
    if (!handle._live) {
      throw new RuntimeError('DOUBLE_FREE', `BufferPool.deallocate: this ${handle.capacity}-byte buffer was already deallocated`);
    }
    handle._live = false;
    const cls = handle._class;
    this._allocated--;
    this._inUse[cls]!--;
    this._bytesInUse -= handle.capacity;
    const storage = handle._storage;
    // A buffer whose ArrayBuffer was transferred or detached (postMessage with a transfer list)
    // has no memory left to reuse: forget it instead of handing out a zero-length array.
    if (storage.byteLength !== handle.capacity) {
      this._bytesReserved -= handle.capacity;
      return;
    }
    this._free[cls]!.push(storage);
    this._freeCount++;
  }

  /**
   * Puts up to `count` new buffers of class `sizeClass` (exactly one of the configured sizes) in
   * its free list, stopping early at `maxMemory`. Returns how many were added.
   */
  prealloc(sizeClass: number, count: number): number {
    const cls = this._classes.indexOf(sizeClass);
    if (cls < 0) {
      throw new InvalidArgumentError(`BufferPool.prealloc: ${String(sizeClass)} is not a size class (${this._classes.join(', ')})`);
    }
    if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0) {
      throw new InvalidArgumentError(`BufferPool.prealloc: count must be a non-negative integer, got ${String(count)}`);
    }
    let added = 0;
    for (; added < count; added++) {
      // Preallocation never evicts other classes: it is a wish, not a need.
      if (this._bytesReserved + sizeClass > this.config.maxMemory) break;
      const storage = this._allocStorage(sizeClass);
      this._bytesReserved += sizeClass;
      this._free[cls]!.push(storage);
      this._freeCount++;
    }
    return added;
  }

  /** Releases every free buffer (handed-out ones are untouched). Returns the bytes released. */
  trim(): number {
    let released = 0;
    for (const list of this._free) {
      for (const s of list) released += s.byteLength;
      this._freeCount -= list.length;
      list.length = 0;
    }
    this._bytesReserved -= released;
    return released;
  }

  stats(): BufferPoolStats {
    return {
      allocated: this._allocated,
      free: this._freeCount,
      bytesInUse: this._bytesInUse,
      bytesReserved: this._bytesReserved,
      hits: this._hits,
      misses: this._misses,
      exhausted: this._exhausted,
      maxMemory: this.config.maxMemory,
      sizeClasses: this._classes.map((size, i) => ({ size, inUse: this._inUse[i]!, free: this._free[i]!.length })),
    };
  }

  /** New memory for class `cls`, releasing free buffers of other classes if over budget. */
  private _newStorage(cls: number): Uint8Array | undefined {
    const capacity = this._classes[cls]!;
    const max = this.config.maxMemory;
    if (this._bytesReserved + capacity > max) {
      // Largest classes first: fewest buffers dropped for the room needed.
      for (let c = this._classes.length - 1; c >= 0 && this._bytesReserved + capacity > max; c--) {
        if (c === cls) continue;
        const list = this._free[c]!;
        while (list.length > 0 && this._bytesReserved + capacity > max) {
          const s = list.pop()!;
          this._freeCount--;
          this._bytesReserved -= s.byteLength;
        }
      }
      if (this._bytesReserved + capacity > max) return undefined;
    }
    return this._allocStorage(capacity);
  }

  private _allocStorage(capacity: number): Uint8Array {
    if (this._alloc === null) return new Uint8Array(capacity);
    const mem = this._alloc(capacity, this.config.alignment);
    if (!(mem instanceof Uint8Array) || mem.byteLength < capacity) {
      throw new RuntimeError('INVALID_CONFIG', `BufferPool: the native allocator returned ${mem instanceof Uint8Array ? `${mem.byteLength} bytes` : typeof mem} for a ${capacity}-byte request`);
    }
    return mem.byteLength === capacity ? mem : mem.subarray(0, capacity);
  }
}
