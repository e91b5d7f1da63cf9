import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BufferHandle, IoOperation, SocketAddress } from './backend.js';
import { InvalidArgumentError, RuntimeError, ioErrorFromErrno } from './errors.js';

/**
 * Helpers for backends written as native addons (`@miniss/backend-epoll`, `-iouring`,
 * `-kqueue`): the pieces of their JS drivers that do not depend on the kernel interface, written
 * once so every native backend numbers operations, reports errors and checks arguments alike.
 */

/**
 * The number each operation is written as in a native backend's shared submission buffer. Frozen,
 * so a driver's loads of it fold to constants. Native twins: enum OpCode in
 * `@miniss/native-common` (include/miniss/op.h) and enum RingOp in `@miniss/backend-iouring`
 * (native/io_uring.h); test/native-backend.test.ts checks all three agree.
 */
export const NATIVE_OP_CODES = Object.freeze({
  nop: 0,
  timeout: 1,
  read: 2,
  write: 3,
  readv: 4,
  writev: 5,
  fsync: 6,
  open: 7,
  close: 8,
  socket: 9,
  listen: 10,
  accept: 11,
  connect: 12,
  recv: 13,
  send: 14,
  shutdown: 15,
} as const satisfies Record<IoOperation['op'], number>);

/** Low bits of a native operation id that name its slot (kSlotMask in the addons: native code finds the slot from them). */
export const OP_SLOT_BITS = 20;
/** `id & OP_SLOT_MASK` is an operation id's slot. */
export const OP_SLOT_MASK = (1 << OP_SLOT_BITS) - 1;
const OP_GEN_LIMIT = 1 << (30 - OP_SLOT_BITS);

/**
 * The live operations of a native backend's driver, by id. An id is `generation * 2^20 + slot`:
 * the slot indexes the table (dense, recycled last-freed-first, so the table stays as small as
 * the peak of operations in flight; native code finds the slot from the low bits), and the
 * generation (1..1023, bumped at every reuse of the slot, wrapping) makes the id of a finished
 * operation differ from the next one in its slot, so a stale id is recognised (`get` answers
 * undefined, a backend's cancel() of it returns false). Ids stay below 2^30: small integers for
 * V8, never heap numbers. Arrays indexed by slot, not a Map keyed by id: no hashing and no
 * allocation per operation. More than 2^20 operations in flight throws `TOO_MANY_OPERATIONS`.
 */
export class OpSlots<T extends object> {
  /** Per slot: its live operation, undefined when free (hot paths may read `ops[id & OP_SLOT_MASK]` of a live id). */
  readonly ops: (T | undefined)[] = [];
  readonly #gen: number[] = [];
  readonly #free: number[] = [];
  #live = 0;

  /** `backend` names the backend in the TOO_MANY_OPERATIONS message. */
  constructor(readonly backend: string) {}

  /** Operations in the table. */
  get live(): number {
    return this.#live;
  }

  /** Puts `op` in a free slot and returns its new id. */
  add(op: T): number {
    let slot: number;
    if (this.#free.length > 0) {
      slot = this.#free.pop()!;
    } else {
      slot = this.ops.length;
      if (slot > OP_SLOT_MASK) {
        throw new RuntimeError('TOO_MANY_OPERATIONS', `the ${this.backend} backend has ${OP_SLOT_MASK + 1} operations in flight already; wait for some to finish`);
      }
      this.ops.push(undefined);
      this.#gen.push(0);
    }
    let gen = this.#gen[slot]! + 1;
    if (gen === OP_GEN_LIMIT) gen = 1;
    this.#gen[slot] = gen;
    this.ops[slot] = op;
    this.#live++;
    return gen * (OP_SLOT_MASK + 1) + slot;
  }

  /** The operation of a live id; undefined for an unknown, stale or finished one (or a non-id). */
  get(id: number): T | undefined {
    if (typeof id !== 'number' || (id | 0) !== id || id <= OP_SLOT_MASK) return undefined;
    const slot = id & OP_SLOT_MASK;
    return this.#gen[slot] === id >>> OP_SLOT_BITS ? this.ops[slot] : undefined;
  }

  /** Frees the slot of a live id and returns its operation; undefined (and nothing freed) when the id is not live. */
  release(id: number): T | undefined {
    const slot = id & OP_SLOT_MASK;
    if (this.#gen[slot] !== id >>> OP_SLOT_BITS) return undefined;
    const op = this.ops[slot];
    if (op === undefined) return undefined;
    this.ops[slot] = undefined;
    this.#free.push(slot);
    this.#live--;
    return op;
  }

  /** Forgets every operation (the backend closed). */
  clear(): void {
    this.ops.length = 0;
    this.#gen.length = 0;
    this.#free.length = 0;
    this.#live = 0;
  }
}

/**
 * The buffers and strings of one native flush batch, in the order its descriptors name them (a
 * descriptor stores the index `push` returned). The list is reused from batch to batch and its
 * `length` is only set when a batch of more than two is passed whole (V8 sets an array's length
 * through a slow runtime call, which cost an awaited single operation a few percent): drivers
 * pass the usual one or two as plain call arguments (`list[0]`, `list[1]`), the rest through
 * `exact()`, and `clear()` once the addon pinned what it needs.
 */
export class FlushObjects {
  /** The batch's objects are `list[0]` .. `list[count - 1]`; later entries are undefined. */
  readonly list: unknown[] = [];
  count = 0;

  /** Appends an object of the batch being encoded; returns its index. */
  push(o: unknown): number {
    const i = this.count++;
    this.list[i] = o;
    return i;
  }

  /** The list holding exactly this batch's objects (for a spread or the array form). */
  exact(): unknown[] {
    if (this.list.length !== this.count) this.list.length = this.count;
    return this.list;
  }

  /** Drops the batch's references (nothing is kept alive from here) and starts an empty batch. */
  clear(): void {
    const list = this.list;
    for (let i = 0; i < this.count; i++) list[i] = undefined;
    this.count = 0;
  }
}

/** An fd as the 32-bit int native code takes: one that does not fit is no fd, -1 makes the kernel say EBADF. */
export function int32OrBad(fd: number): number {
  return (fd | 0) === fd ? fd : -1;
}

/**
 * The `IoError` for a failed operation: errno plus what identifies it (path, address, or fd).
 * Never throws: the operation may have changed since submit so that reading its fields throws (a
 * getter), and a throw while a backend hands out completions would lose them all; then the error
 * names only the errno and, if it can be read, the operation's name.
 */
export function ioErrorForOperation(op: IoOperation, errno: number): Error {
  try {
    switch (op.op) {
      case 'open':
        return ioErrorFromErrno(errno, 'open', { path: op.path });
      case 'listen':
      case 'connect':
        return ioErrorFromErrno(errno, op.op, { address: op.addr.host, port: op.addr.port });
      case 'nop':
      case 'timeout':
      case 'socket':
        return ioErrorFromErrno(errno, op.op);
      default:
        return ioErrorFromErrno(errno, op.op, { fd: op.fd });
    }
  } catch {
    let syscall = 'submit';
    try {
      if (typeof op.op === 'string') syscall = op.op;
    } catch {
      // Even `op` throws: keep 'submit'.
    }
    return ioErrorFromErrno(errno, syscall);
  }
}

/** Throws `INVALID_ARGUMENT` unless `allocateBuffer(capacity, alignment)` asks for something sane. */
export function checkAllocateBuffer(capacity: number, alignment: number): void {
  if (!Number.isInteger(capacity) || capacity < 0 || capacity > 2 ** 30) {
    throw new InvalidArgumentError(`allocateBuffer: capacity must be an integer between 0 and 1 GiB, got ${String(capacity)}`);
  }
  if (!Number.isInteger(alignment) || alignment < 1 || alignment > 2 ** 20 || (alignment & (alignment - 1)) !== 0) {
    throw new InvalidArgumentError(`allocateBuffer: alignment must be a power of two up to 1 MiB, got ${String(alignment)}`);
  }
}

/**
 * `IoBackend.address` on top of an addon's `address(fd, peer)`, which returns
 * `[family, port, host]` or a negative errno: checks the arguments, throws the errno as an
 * `IoError` (syscall `getsockname`/`getpeername`).
 */
export function nativeSocketAddress(
  native: (fd: number, peer: boolean) => readonly [4 | 6, number, string] | number,
  fd: number,
  which: 'local' | 'peer',
): SocketAddress {
  if (which !== 'local' && which !== 'peer') throw new InvalidArgumentError(`address: which must be 'local' or 'peer', got ${String(which)}`);
  if (!Number.isInteger(fd)) throw new InvalidArgumentError(`address: fd must be an integer, got ${String(fd)}`);
  const r = native(int32OrBad(fd), which === 'peer');
  if (typeof r === 'number') throw ioErrorFromErrno(r, which === 'peer' ? 'getpeername' : 'getsockname', { fd });
  return { family: r[0], port: r[1], host: r[2] };
}

/**
 * The `BufferHandle` an operation was given (not a plain `Uint8Array`), which its completion hands
 * back. Never throws (see ioErrorForOperation): undefined when the operation's fields throw.
 */
export function bufferHandleOf(op: IoOperation): BufferHandle | undefined {
  try {
    // A switch on the interned op name, not `'buffer' in op` (a megamorphic lookup).
    switch (op.op) {
      case 'read':
      case 'write':
      case 'recv':
      case 'send':
        return op.buffer instanceof Uint8Array ? undefined : op.buffer;
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}

/** A backend option that must be an integer in 1..max: `dflt` when undefined, else `INVALID_ARGUMENT`. */
export function positiveIntOption(v: unknown, name: string, dflt: number, max: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer between 1 and ${max}, got ${String(v)}`);
  }
  return v;
}

/**
 * Loads a package's node-gyp addon `file` from its `build/Release` (else `build/Debug`) folder;
 * `moduleUrl` is the `import.meta.url` of a module in the package's `dist/`. Returns the addon, or
 * every path tried with why it failed (missing, or the loader's error), for the caller's message.
 */
export function requireNativeAddon<T>(moduleUrl: string, file: string): { addon: T } | { tried: string[] } {
  const packageRoot = join(dirname(fileURLToPath(moduleUrl)), '..');
  const require = createRequire(moduleUrl);
  const tried: string[] = [];
  for (const p of [join(packageRoot, 'build', 'Release', file), join(packageRoot, 'build', 'Debug', file)]) {
    if (!existsSync(p)) {
      tried.push(`${p} (not found)`);
      continue;
    }
    try {
      return { addon: require(p) as T };
    } catch (err) {
      tried.push(`${p} (${(err as Error)?.message ?? String(err)})`);
    }
  }
  return { tried };
}
