import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';

/**
 * Every error miniss throws or rejects with is an `Error` subclass carrying a string `code`,
 * the way Node's own errors do, so callers branch on `err.code` and never on message text.
 */
export type RuntimeErrorCode =
  | 'RUNTIME_SHUTDOWN'
  | 'NO_RUNTIME'
  | 'BACKEND_UNAVAILABLE'
  | 'FEATURE_UNAVAILABLE'
  | 'INVALID_CONFIG'
  | 'INVALID_ARGUMENT'
  | 'RUNTIME_EXISTS'
  | 'TASK_NOT_SHIPPABLE'
  | 'CORE_CRASHED'
  | 'DOUBLE_FREE'
  | 'TOO_MANY_OPERATIONS'
  | (string & {});

/** A misuse of the runtime or its configuration. The message always names the fix. */
export class RuntimeError extends Error {
  readonly code: RuntimeErrorCode;
  constructor(code: RuntimeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RuntimeError';
    this.code = code;
  }
}

/** What a cancelled task's handle (or a cancelled operation) rejects with. */
export class CancelledError extends Error {
  readonly code = 'CANCELLED' as const;
  constructor(message = 'the task was cancelled', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CancelledError';
  }
}

/** Bad input to a public function: a negative length, a NaN duration, a port out of range. */
export class InvalidArgumentError extends RuntimeError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
    this.name = 'InvalidArgumentError';
  }
}

/**
 * A failed system call, shaped like Node's `SystemError`: `code` is the errno name
 * (`'EBADF'`), `errno` the negative number Node uses (`-9`), `syscall` what was attempted, and
 * `fd`/`path`/`address`/`port` where known.
 */
export class IoError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  fd?: number;
  path?: string;
  address?: string;
  port?: number;
  constructor(code: string, errno: number, syscall: string, message?: string) {
    super(message ?? `${syscall} ${code}`);
    this.name = 'IoError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

export interface IoErrorDetails {
  fd?: number;
  path?: string;
  address?: string;
  port?: number;
}

/**
 * Builds an {@link IoError} from an errno as native code reports it (`-errno` from a completion,
 * or a positive `errno`). Both signs are accepted; Node's convention (negative) is stored.
 */
export function ioErrorFromErrno(errno: number, syscall: string, details: IoErrorDetails = {}): IoError {
  const neg = errno > 0 ? -errno : errno;
  let code: string;
  try {
    code = getSystemErrorName(neg);
  } catch {
    code = `E${-neg}`;
  }
  let where = '';
  if (details.path !== undefined) where = ` '${details.path}'`;
  else if (details.address !== undefined) where = ` ${details.address}${details.port !== undefined ? `:${details.port}` : ''}`;
  else if (details.fd !== undefined) where = ` (fd ${details.fd})`;
  const err = new IoError(code, neg, syscall, `${syscall} ${code}${where}`);
  if (details.fd !== undefined) err.fd = details.fd;
  if (details.path !== undefined) err.path = details.path;
  if (details.address !== undefined) err.address = details.address;
  if (details.port !== undefined) err.port = details.port;
  return err;
}

/** Builds an {@link IoError} from an errno name such as `'EBADF'`. */
export function ioErrorFromCode(code: string, syscall: string, details: IoErrorDetails = {}): IoError {
  const n = (osConstants.errno as Record<string, number>)[code];
  if (n === undefined) {
    const err = new IoError(code, 0, syscall, `${syscall} ${code}`);
    Object.assign(err, details);
    return err;
  }
  return ioErrorFromErrno(n, syscall, details);
}

/**
 * Normalises an error raised by `node:fs`/`node:net` (a Node `SystemError`-like object) into an
 * {@link IoError}, so every backend rejects with the same class. Anything that is not a system
 * error (it has no string `code` starting with `E`) passes through unchanged.
 */
export function toIoError(err: unknown, syscall: string, details: IoErrorDetails = {}): Error {
  if (err instanceof IoError || err instanceof RuntimeError || err instanceof CancelledError) return err;
  const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown } | null;
  if (e && typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code)) {
    const merged: IoErrorDetails = { ...details };
    if (typeof e.path === 'string' && merged.path === undefined) merged.path = e.path;
    const out =
      typeof e.errno === 'number' && e.errno !== 0
        ? ioErrorFromErrno(e.errno, typeof e.syscall === 'string' ? e.syscall : syscall, merged)
        : ioErrorFromCode(e.code, typeof e.syscall === 'string' ? e.syscall : syscall, merged);
    (out as { cause?: unknown }).cause = err;
    return out;
  }
  return err instanceof Error ? err : new Error(String(err));
}

/** The error for I/O on a file or stream that was already closed. */
export function closedError(syscall: string, details: IoErrorDetails = {}): IoError {
  return ioErrorFromCode('EBADF', syscall, details);
}
