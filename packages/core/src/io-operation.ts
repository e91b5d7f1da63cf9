import { MAX_TIMER_MS, type IoBuffer, type IoOperation } from './backend.js';
import { InvalidArgumentError } from './errors.js';

/**
 * Checks shared by every backend's `submit`, so a malformed operation gets the same
 * `INVALID_ARGUMENT` everywhere and native code only ever sees well-formed descriptors.
 */

/** The bytes of an operation's buffer, whichever form it was given in. */
export function bytesOf(buffer: IoBuffer): Uint8Array {
  return buffer instanceof Uint8Array ? buffer : buffer.bytes;
}

/**
 * Whether `buffer` is a pool handle already given back with `BufferPool.deallocate`: its memory
 * may belong to the next `allocate` by now, so I/O through it would read or write another
 * owner's bytes. One property check (a pool handle's `_live` flag; other objects have none).
 */
export function isDeallocated(buffer: object): boolean {
  return (buffer as { _live?: unknown })._live === false;
}

/** The `INVALID_ARGUMENT` for I/O through a deallocated pool handle. */
export function deallocatedError(op: string): InvalidArgumentError {
  return new InvalidArgumentError(
    `${op}: the buffer handle was deallocated (BufferPool.deallocate): its memory may belong to another allocation now; allocate a new handle`,
  );
}

function checkFd(fd: unknown, op: string): void {
  if (typeof fd !== 'number' || !Number.isInteger(fd)) {
    throw new InvalidArgumentError(`${op}: fd must be an integer, got ${String(fd)}`);
  }
}

function checkLen(buffer: IoBuffer | undefined, len: unknown, op: string): void {
  if (!(buffer instanceof Uint8Array)) {
    if (buffer === undefined || buffer === null || !(bytesOf(buffer) instanceof Uint8Array)) {
      throw new InvalidArgumentError(`${op}: buffer must be a Uint8Array or a BufferHandle`);
    }
    if (isDeallocated(buffer)) throw deallocatedError(op);
  }
  if (typeof len !== 'number' || !Number.isInteger(len) || len < 0) {
    throw new InvalidArgumentError(`${op}: length must be a non-negative integer, got ${String(len)}`);
  }
  const have = bytesOf(buffer).byteLength;
  if (len > have) {
    throw new InvalidArgumentError(`${op}: length ${len} is past the end of a ${have}-byte buffer`);
  }
}

function checkOffset(offset: unknown, op: string): void {
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < -1) {
    throw new InvalidArgumentError(`${op}: position must be a non-negative safe integer (or -1 for the current position), got ${String(offset)}`);
  }
}

function checkBuffers(buffers: unknown, op: string): void {
  if (!Array.isArray(buffers) || buffers.some((b) => !(b instanceof Uint8Array))) {
    throw new InvalidArgumentError(`${op}: buffers must be an array of Uint8Array`);
  }
  if (buffers.length > 1024) {
    throw new InvalidArgumentError(`${op}: at most 1024 buffers (IOV_MAX), got ${buffers.length}`);
  }
}

/** Throws `INVALID_ARGUMENT` unless `op` is a well-formed {@link IoOperation}. */
export function validateOperation(op: IoOperation): void {
  if (op === null || typeof op !== 'object') throw new InvalidArgumentError('an operation must be an object');
  switch (op.op) {
    case 'nop':
      return;
    case 'timeout':
      if (typeof op.ms !== 'number' || !Number.isFinite(op.ms) || op.ms < 0) {
        throw new InvalidArgumentError(`timeout: ms must be a finite non-negative number, got ${String(op.ms)}`);
      }
      return;
    case 'read':
    case 'write':
      checkFd(op.fd, op.op);
      checkLen(op.buffer, op.len, op.op);
      checkOffset(op.offset, op.op);
      return;
    case 'readv':
    case 'writev':
      checkFd(op.fd, op.op);
      checkBuffers(op.buffers, op.op);
      checkOffset(op.offset, op.op);
      return;
    case 'recv':
    case 'send':
      checkFd(op.fd, op.op);
      checkLen(op.buffer, op.len, op.op);
      return;
    case 'fsync':
    case 'close':
    case 'accept':
      checkFd(op.fd, op.op);
      return;
    case 'shutdown':
      checkFd(op.fd, op.op);
      if (op.how !== 0 && op.how !== 1 && op.how !== 2) throw new InvalidArgumentError('shutdown: how must be 0, 1 or 2');
      return;
    case 'open':
      if (typeof op.path !== 'string' || op.path.length === 0 || op.path.includes('\0')) {
        throw new InvalidArgumentError('open: path must be a non-empty string without NUL bytes');
      }
      if (!Number.isInteger(op.flags) || !Number.isInteger(op.mode) || op.mode < 0) {
        throw new InvalidArgumentError('open: flags and mode must be integers');
      }
      return;
    case 'socket':
      if (op.family !== 4 && op.family !== 6) throw new InvalidArgumentError('socket: family must be 4 or 6');
      return;
    case 'listen':
    case 'connect': {
      checkFd(op.fd, op.op);
      const a = op.addr;
      if (!a || typeof a.host !== 'string' || !Number.isInteger(a.port) || a.port < 0 || a.port > 65535) {
        throw new InvalidArgumentError(`${op.op}: addr must be { host: string, port: 0..65535 }`);
      }
      if (op.op === 'connect' && a.port === 0) throw new InvalidArgumentError('connect: port 0 is not a destination');
      if (op.op === 'connect') checkConnectTimeout(op.timeoutMs, 'connect: ');
      if (op.op === 'listen' && (!Number.isInteger(op.backlog) || op.backlog < 0)) {
        throw new InvalidArgumentError('listen: backlog must be a non-negative integer');
      }
      return;
    }
    default:
      throw new InvalidArgumentError(`unknown operation ${JSON.stringify((op as { op?: unknown }).op)}`);
  }
}

/**
 * Throws `INVALID_ARGUMENT` unless `signal` is undefined or an AbortSignal: checked before any
 * call uses it (adds a listener) or submits anything, so a bad one fails alone with a code.
 */
export function checkSignal(signal: unknown, syscall: string): AbortSignal | undefined {
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError(`${syscall}: signal must be an AbortSignal, got ${signal === null ? 'null' : typeof signal}`);
  }
  return signal;
}

/**
 * Throws `INVALID_ARGUMENT` unless `timeoutMs` (a connect's) is undefined or a number of
 * milliseconds above 0 and at most setTimeout's limit: past 2^31 - 1 ms Node fires a timer after
 * 1 ms, and every backend (a kernel timeout or a timer) must time the connect the same way.
 */
export function checkConnectTimeout(timeoutMs: unknown, prefix: string): void {
  if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs > 0 && timeoutMs <= MAX_TIMER_MS)) {
    throw new InvalidArgumentError(`${prefix}timeoutMs must be a number of milliseconds above 0 and at most ${MAX_TIMER_MS}, got ${String(timeoutMs)}`);
  }
}
