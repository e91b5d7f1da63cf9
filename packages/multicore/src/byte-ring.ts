/**
 * The message ring between one ordered pair of cores: a bounded, lock-free, single-producer
 * single-consumer queue of variable-length records in a SharedArrayBuffer (Lamport's SPSC queue,
 * with the index caching of Rigtorp's and FastForward's designs).
 *
 * Layout: three 64-byte cache lines of header, then `size` bytes of data (`size` a power of two).
 *
 *   line 0: tail  written by the producer only (bytes published, a free-running uint32)
 *   line 1: head  written by the consumer only (bytes consumed, a free-running uint32)
 *   line 2: wait  set by a producer that has messages it could not fit (back-pressure): the
 *                 consumer rings the producer's doorbell after it frees space
 *
 * Head and tail sit on separate cache lines so that the two cores never write the same line
 * (false sharing would turn every message into a cache-line ping-pong). Each side also keeps a
 * private copy of the other side's index and re-reads the shared one only when the copy says
 * the ring is full (producer) or empty (consumer), so a burst costs one shared read per side.
 *
 * Publication is batched: the producer writes records with plain stores and makes them visible
 * with one `Atomics.store` of the tail per batch ({@link RingWriter.publish}); the consumer reads
 * the tail with one `Atomics.load`, processes every record up to it, and frees them with one
 * `Atomics.store` of the head ({@link RingReader.release}). Atomics in JavaScript are sequentially
 * consistent, so the store of the tail is a release of the record bytes written before it and the
 * load that observes it is the matching acquire (ECMA-262 memory model, "synchronizes-with").
 *
 * Records are 8-byte aligned: `[u32 length][u32 type | flags << 8 | kind << 16][u32 id][u32 aux][body]`,
 * the header written and read as four aligned 32-bit words in native byte order (both ends are
 * threads of one process): a message costs four stores plus its body.
 * A record never straddles the end of the data area: when it does not fit before the end, the
 * producer writes a WRAP marker there and continues at offset 0. A record larger than half the
 * ring is split into fragments by the caller (flag FRAG_MORE), so any message fits eventually.
 */

import { InvalidArgumentError } from '@miniss/core';

export const RING_HEADER_BYTES = 192;
const TAIL = 0;
const HEAD = 16;
const WAITING = 32;

export const RECORD_HEADER = 16;
const WRAP = 0xffffffff;

/** Bytes of ring per message of `crossCpuChannelCapacity`: room for a small task or result. */
export const BYTES_PER_MESSAGE = 64;

export function ringDataBytes(capacityMessages: number): number {
  let size = 256;
  const want = capacityMessages * BYTES_PER_MESSAGE;
  while (size < want) size *= 2;
  return size;
}

export function createRing(capacityMessages: number): SharedArrayBuffer {
  return new SharedArrayBuffer(RING_HEADER_BYTES + ringDataBytes(capacityMessages));
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

export class RingWriter {
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  /** The data area as 32-bit words (record headers). */
  readonly u32: Uint32Array;
  readonly dv: DataView;
  readonly size: number;
  private readonly mask: number;
  /** Largest record (header included) written in one piece; bigger messages are fragmented. */
  readonly maxRecord: number;
  private tail: number;
  private published: number;
  private cachedHead: number;

  constructor(sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab, 0, RING_HEADER_BYTES / 4);
    this.size = sab.byteLength - RING_HEADER_BYTES;
    this.u8 = new Uint8Array(sab, RING_HEADER_BYTES, this.size);
    this.u32 = new Uint32Array(sab, RING_HEADER_BYTES, this.size >>> 2);
    this.dv = new DataView(sab, RING_HEADER_BYTES, this.size);
    this.mask = this.size - 1;
    this.maxRecord = this.size / 2;
    this.tail = Atomics.load(this.i32, TAIL) >>> 0;
    this.published = this.tail;
    this.cachedHead = Atomics.load(this.i32, HEAD) >>> 0;
  }

  /**
   * Reserves a record of `bodyLen` body bytes and writes its header. Returns the byte offset of
   * the body in `u8`/`dv`, or -1 when the ring has no room now (nothing is written then; it has
   * once the consumer frees space). A record larger than {@link maxRecord} (header included) could
   * never be placed at every position of the ring: it throws `INVALID_ARGUMENT` (split such a
   * message into records of at most `maxRecord` bytes), as does a `bodyLen` that is not an integer
   * in 0..maxRecord-16.
   */
  begin(type: number, flags: number, kind: number, id: number, aux: number, bodyLen: number): number {
    if ((bodyLen >>> 0) !== bodyLen || bodyLen > this.maxRecord - RECORD_HEADER) this.tooBig(bodyLen);
    const len = RECORD_HEADER + bodyLen;
    const n = align8(len);
    let pos = this.tail & this.mask;
    const toEnd = this.size - pos;
    const need = n <= toEnd ? n : n + toEnd;
    if (this.size - ((this.tail - this.cachedHead) >>> 0) < need) {
      this.cachedHead = Atomics.load(this.i32, HEAD) >>> 0;
      if (this.size - ((this.tail - this.cachedHead) >>> 0) < need) return -1;
    }
    const u32 = this.u32;
    if (n > toEnd) {
      u32[pos >>> 2] = WRAP;
      this.tail = (this.tail + toEnd) >>> 0;
      pos = 0;
    }
    const q = pos >>> 2;
    u32[q] = len;
    u32[q + 1] = (type & 0xff) | ((flags & 0xff) << 8) | ((kind & 0xffff) << 16);
    u32[q + 2] = id;
    u32[q + 3] = aux;
    this.tail = (this.tail + n) >>> 0;
    return pos + RECORD_HEADER;
  }

  private tooBig(bodyLen: number): never {
    throw new InvalidArgumentError(
      `RingWriter.begin: a record body must be an integer number of bytes in 0..${this.maxRecord - RECORD_HEADER} ` +
        `(maxRecord ${this.maxRecord} minus the ${RECORD_HEADER}-byte header; split bigger messages), got ${String(bodyLen)}`,
    );
  }

  /** True when records were written since the last publish. */
  get dirty(): boolean {
    return this.tail !== this.published;
  }

  /** Makes every record written so far visible to the consumer (one atomic store). */
  publish(): boolean {
    if (this.tail === this.published) return false;
    Atomics.store(this.i32, TAIL, this.tail | 0);
    this.published = this.tail;
    return true;
  }

  /** Bytes written and not yet consumed (published or not), as this side last saw the head. */
  get used(): number {
    return (this.tail - (Atomics.load(this.i32, HEAD) >>> 0)) >>> 0;
  }

  /** Asks the consumer to ring this producer's doorbell when it frees space. */
  setWaiting(on: boolean): void {
    Atomics.store(this.i32, WAITING, on ? 1 : 0);
  }
}

export class RingReader {
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  /** The data area as 32-bit words (record headers). */
  readonly u32: Uint32Array;
  /** The data area as float64s (bodies start 8-byte aligned: a number body is `f64[bodyOffset >>> 3]`). */
  readonly f64: Float64Array;
  readonly dv: DataView;
  readonly size: number;
  private readonly mask: number;
  private head: number;
  private released: number;
  private cachedTail: number;

  // The record last returned by next().
  type = 0;
  flags = 0;
  kind = 0;
  id = 0;
  aux = 0;
  bodyOffset = 0;
  bodyLen = 0;

  constructor(sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab, 0, RING_HEADER_BYTES / 4);
    this.size = sab.byteLength - RING_HEADER_BYTES;
    this.u8 = new Uint8Array(sab, RING_HEADER_BYTES, this.size);
    this.u32 = new Uint32Array(sab, RING_HEADER_BYTES, this.size >>> 2);
    this.f64 = new Float64Array(sab, RING_HEADER_BYTES, this.size >>> 3);
    this.dv = new DataView(sab, RING_HEADER_BYTES, this.size);
    this.mask = this.size - 1;
    this.head = Atomics.load(this.i32, HEAD) >>> 0;
    this.released = this.head;
    this.cachedTail = Atomics.load(this.i32, TAIL) >>> 0;
  }

  /** True when a published record is waiting (one atomic load when the cached tail says empty). */
  hasData(): boolean {
    if (this.head !== this.cachedTail) return true;
    this.cachedTail = Atomics.load(this.i32, TAIL) >>> 0;
    return this.head !== this.cachedTail;
  }

  /**
   * Advances to the next published record and fills in its fields; false when there is none.
   * The record's bytes stay valid until {@link release}.
   */
  next(): boolean {
    if (this.head === this.cachedTail) {
      this.cachedTail = Atomics.load(this.i32, TAIL) >>> 0;
      if (this.head === this.cachedTail) return false;
    }
    const u32 = this.u32;
    let pos = this.head & this.mask;
    let len = u32[pos >>> 2]!;
    if (len === WRAP) {
      this.head = (this.head + (this.size - pos)) >>> 0;
      pos = 0;
      len = u32[0]!;
    }
    const q = pos >>> 2;
    const tk = u32[q + 1]!;
    this.type = tk & 0xff;
    this.flags = (tk >>> 8) & 0xff;
    this.kind = tk >>> 16;
    this.id = u32[q + 2]!;
    this.aux = u32[q + 3]!;
    this.bodyOffset = pos + RECORD_HEADER;
    this.bodyLen = len - RECORD_HEADER;
    this.head = (this.head + align8(len)) >>> 0;
    return true;
  }

  /** Frees every record read so far (one atomic store). Returns true if the producer asked to be told. */
  release(): boolean {
    if (this.head === this.released) return false;
    Atomics.store(this.i32, HEAD, this.head | 0);
    this.released = this.head;
    return Atomics.load(this.i32, WAITING) === 1;
  }

  /** Published bytes not consumed yet. */
  get occupancy(): number {
    return ((Atomics.load(this.i32, TAIL) >>> 0) - this.head) >>> 0;
  }
}
