import v8 from 'node:v8';
import { CancelledError, IoError, RuntimeError } from '@miniss/core';

/**
 * How task arguments, results and errors cross cores: structured clone, in bytes.
 *
 * Small values that dominate task traffic (no arguments, a number, a boolean, a string) have
 * their own encodings and skip V8's serializer. Everything else goes through `v8.Serializer`
 * (the structured-clone algorithm `postMessage` uses), with one difference that matters:
 * SharedArrayBuffers are shared, not copied. V8 cannot put a SharedArrayBuffer into bytes (and
 * Node's Deserializer cannot read one back by id), so the codec collects them instead: each one
 * (bare, or under a typed array or DataView) is written as an index into a side list, the list
 * travels to the receiving core through a MessagePort (the only way a SharedArrayBuffer can reach
 * another thread), and the receiver puts the same memory back in place.
 *
 * Typed arrays over ordinary ArrayBuffers are copied, as by `postMessage`; two views of one
 * ordinary ArrayBuffer arrive as two separate copies (structured clone would keep them sharing).
 */

export const Kind = {
  Undefined: 0,
  F64: 1,
  V8: 2,
  Null: 3,
  True: 4,
  False: 5,
  Str: 6,
  NoArgs: 7,
  /** Arguments that are exactly one number. */
  OneF64: 8,
} as const;

export interface Encoded {
  kind: number;
  /** The bytes (empty for the fixed kinds). */
  bytes: Uint8Array;
  /** SharedArrayBuffers the bytes refer to by index; null when none. */
  sabs: SharedArrayBuffer[] | null;
}

const EMPTY = new Uint8Array(0);
// A number travels as its 8 bytes. Encoding returns a view of this scratch (no allocation per
// message): the bytes are valid until the next encode, and CoreNode copies them into the ring at
// once (or into a backlog entry of its own). Decoding has its own scratch.
const f64 = new Float64Array(1);
const f64bytes = new Uint8Array(f64.buffer);
/** The buffer behind the bytes of an encoded number (callers that keep bytes must copy these). */
export const SCRATCH = f64.buffer;
const decF64 = new Float64Array(1);
const decBytes = new Uint8Array(decF64.buffer);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const VIEW_TYPES = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
  DataView,
] as const;

const TAG_SAB = 1;
const TAG_SAB_VIEW = 2;
const TAG_COPIED_VIEW = 3;

/** Marks a bare SharedArrayBuffer inside a value while it is being serialized. */
class SabRef extends Uint8Array {}

const BARE_SAB = Symbol('bare SharedArrayBuffer');

function viewType(view: ArrayBufferView): number {
  for (let i = 0; i < VIEW_TYPES.length; i++) if (view instanceof VIEW_TYPES[i]!) return i;
  return -1;
}

class SabSerializer extends v8.Serializer {
  sabs: SharedArrayBuffer[] | null = null;
  constructor() {
    super();
    (this as unknown as { _setTreatArrayBufferViewsAsHostObjects(on: boolean): void })._setTreatArrayBufferViewsAsHostObjects(true);
  }
  private sabIndex(sab: SharedArrayBuffer): number {
    const list = (this.sabs ??= []);
    let i = list.indexOf(sab);
    if (i < 0) i = list.push(sab) - 1;
    return i;
  }
  _getSharedArrayBufferId(): number {
    // A bare SharedArrayBuffer: V8 would write it by id, which cannot be read back in Node.
    throw BARE_SAB;
  }
  _writeHostObject(obj: object): void {
    if (obj instanceof SabRef) {
      this.writeUint32(TAG_SAB);
      this.writeUint32(this.sabIndex(obj.buffer as unknown as SharedArrayBuffer));
      return;
    }
    if (!ArrayBuffer.isView(obj)) {
      throw new RuntimeError('INVALID_ARGUMENT', `a ${obj.constructor?.name ?? 'host object'} cannot be sent to another core (not structured-cloneable)`);
    }
    const view = obj as ArrayBufferView;
    const type = viewType(view);
    if (type < 0) throw new RuntimeError('INVALID_ARGUMENT', `a ${obj.constructor?.name} cannot be sent to another core`);
    const elems = view instanceof DataView ? view.byteLength : view.byteLength / (view as Uint8Array).BYTES_PER_ELEMENT;
    if (view.buffer instanceof SharedArrayBuffer) {
      this.writeUint32(TAG_SAB_VIEW);
      this.writeUint32(type);
      this.writeUint32(this.sabIndex(view.buffer));
      this.writeUint32(view.byteOffset);
      this.writeUint32(elems);
    } else {
      this.writeUint32(TAG_COPIED_VIEW);
      this.writeUint32(type);
      this.writeUint32(view.byteLength);
      this.writeRawBytes(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
    }
  }
}

class SabDeserializer extends v8.Deserializer {
  constructor(
    bytes: Uint8Array,
    private readonly sabs: SharedArrayBuffer[] | null,
  ) {
    super(bytes);
  }
  _readHostObject(): unknown {
    const tag = this.readUint32();
    if (tag === TAG_SAB) return this.sab(this.readUint32());
    const type = this.readUint32();
    const Ctor = VIEW_TYPES[type] as unknown as new (b: ArrayBufferLike, off?: number, len?: number) => ArrayBufferView;
    if (Ctor === undefined) throw new RuntimeError('PROTOCOL_ERROR', `unknown typed array type ${type} in a cross-core message`);
    if (tag === TAG_SAB_VIEW) {
      const sab = this.sab(this.readUint32());
      const off = this.readUint32();
      const len = this.readUint32();
      return new Ctor(sab, off, len);
    }
    const byteLength = this.readUint32();
    const raw = this.readRawBytes(byteLength) as Uint8Array;
    const copy = new Uint8Array(byteLength);
    copy.set(raw);
    if (Ctor === DataView) return new DataView(copy.buffer);
    const per = (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    return new Ctor(copy.buffer, 0, byteLength / per);
  }
  private sab(i: number): SharedArrayBuffer {
    const s = this.sabs?.[i];
    if (s === undefined) throw new RuntimeError('PROTOCOL_ERROR', `a cross-core message refers to SharedArrayBuffer #${i}, which did not arrive`);
    return s;
  }
}

/**
 * Copies containers on the way to the serializer, replacing each bare SharedArrayBuffer with a
 * SabRef view (a host object the serializer can tag). Only used when a bare SAB was seen.
 */
function markSabs(value: unknown, seen: Map<object, unknown>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof SharedArrayBuffer) return new SabRef(value as unknown as ArrayBuffer);
  const done = seen.get(value);
  if (done !== undefined) return done;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer || value instanceof Date || value instanceof RegExp || value instanceof Error) {
    return value;
  }
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    seen.set(value, out);
    for (let i = 0; i < value.length; i++) out[i] = markSabs(value[i], seen);
    return out;
  }
  if (value instanceof Map) {
    const out = new Map();
    seen.set(value, out);
    for (const [k, v] of value) out.set(markSabs(k, seen), markSabs(v, seen));
    return out;
  }
  if (value instanceof Set) {
    const out = new Set();
    seen.set(value, out);
    for (const v of value) out.add(markSabs(v, seen));
    return out;
  }
  const out: Record<string, unknown> = {};
  seen.set(value, out);
  for (const k of Object.keys(value)) out[k] = markSabs((value as Record<string, unknown>)[k], seen);
  return out;
}

function serialize(value: unknown): Encoded {
  let s = new SabSerializer();
  s.writeHeader();
  try {
    s.writeValue(value);
  } catch (err) {
    if (err !== BARE_SAB) throw cloneError(err);
    s = new SabSerializer();
    s.writeHeader();
    try {
      s.writeValue(markSabs(value, new Map()));
    } catch (err2) {
      throw cloneError(err2);
    }
  }
  return { kind: Kind.V8, bytes: s.releaseBuffer(), sabs: s.sabs };
}

function cloneError(err: unknown): Error {
  if (err instanceof RuntimeError) return err;
  const e = new RuntimeError(
    'INVALID_ARGUMENT',
    `a value cannot be sent to another core: ${messageOf(err)} (arguments and results travel by structured clone: no functions, symbols or class instances with methods)`,
    { cause: err },
  );
  return e;
}

/**
 * Text describing any value, that never throws: a thrown value may be an object whose `toJSON`
 * and `toString` both throw, a revoked Proxy, or one with a throwing `Symbol.toPrimitive`, and the
 * code that reports it must not fail in turn (a throw there left a handle pending for good, or
 * crashed the core from a promise reaction).
 */
export function describeValue(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return value;
    case 'number':
    case 'bigint':
    case 'boolean':
    case 'undefined':
    case 'symbol':
      return String(value); // JSON would say null for NaN and Infinity, and nothing for the rest
    case 'function':
      try {
        const name = (value as { name?: unknown }).name;
        if (typeof name === 'string' && name !== '') return `function ${name}`;
      } catch {
        /* a Proxy whose get trap throws */
      }
      return 'an anonymous function';
    default:
      break;
  }
  try {
    const json = JSON.stringify(value);
    if (json !== undefined) return json;
  } catch {
    /* cyclic, a BigInt, or a throwing toJSON: try String() */
  }
  try {
    return String(value);
  } catch {
    /* a throwing toString / Symbol.toPrimitive: try the built-in tag */
  }
  try {
    return Object.prototype.toString.call(value);
  } catch {
    /* a revoked Proxy throws even here */
  }
  return `[a ${typeof value} that cannot be described]`;
}

/** Property `key` of `value` when it is a string; undefined otherwise, or when reading it throws. */
function stringProp(value: unknown, key: 'stack' | 'message'): string | undefined {
  try {
    const v = (value as Record<string, unknown> | null | undefined)?.[key];
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined; // a getter or Proxy trap that throws
  }
}

/** An error's stack (else its message or a description), for a warning; never throws. */
export function stackOf(err: unknown): string {
  return stringProp(err, 'stack') ?? messageOf(err);
}

/** An error's message (a string `message` property), else a description of the value; never throws. */
export function messageOf(err: unknown): string {
  return stringProp(err, 'message') ?? describeValue(err);
}

/** Encodes one value (a result). Throws `INVALID_ARGUMENT` when it cannot be structured-cloned. */
export function encodeValue(value: unknown): Encoded {
  switch (typeof value) {
    case 'undefined':
      return { kind: Kind.Undefined, bytes: EMPTY, sabs: null };
    case 'number':
      f64[0] = value;
      return { kind: Kind.F64, bytes: f64bytes, sabs: null };
    case 'boolean':
      return { kind: value ? Kind.True : Kind.False, bytes: EMPTY, sabs: null };
    case 'string':
      return { kind: Kind.Str, bytes: encoder.encode(value), sabs: null };
    default:
      if (value === null) return { kind: Kind.Null, bytes: EMPTY, sabs: null };
      return serialize(value);
  }
}

/** Encodes a task's argument list. */
export function encodeArgs(args: unknown[]): Encoded {
  if (args.length === 0) return { kind: Kind.NoArgs, bytes: EMPTY, sabs: null };
  if (args.length === 1 && typeof args[0] === 'number') {
    f64[0] = args[0];
    return { kind: Kind.OneF64, bytes: f64bytes, sabs: null };
  }
  return serialize(args);
}

export function decodeArgs(kind: number, bytes: Uint8Array, sabs: SharedArrayBuffer[] | null): unknown[] {
  if (kind === Kind.NoArgs) return [];
  if (kind === Kind.OneF64) return [readF64(bytes)];
  return decodeValue(kind, bytes, sabs) as unknown[];
}

function readF64(bytes: Uint8Array): number {
  const d = decBytes;
  d[0] = bytes[0]!;
  d[1] = bytes[1]!;
  d[2] = bytes[2]!;
  d[3] = bytes[3]!;
  d[4] = bytes[4]!;
  d[5] = bytes[5]!;
  d[6] = bytes[6]!;
  d[7] = bytes[7]!;
  return decF64[0]!;
}

export function decodeValue(kind: number, bytes: Uint8Array, sabs: SharedArrayBuffer[] | null): unknown {
  switch (kind) {
    case Kind.Undefined:
      return undefined;
    case Kind.F64:
      return readF64(bytes);
    case Kind.Null:
      return null;
    case Kind.True:
      return true;
    case Kind.False:
      return false;
    case Kind.Str:
      return decoder.decode(bytes);
    case Kind.V8: {
      const d = new SabDeserializer(ownBytes(bytes), sabs);
      d.readHeader();
      return d.readValue();
    }
    default:
      throw new RuntimeError('PROTOCOL_ERROR', `unknown value kind ${kind} in a cross-core message`);
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

interface WireError {
  name: string;
  message: string;
  stack?: string;
  code?: unknown;
  errno?: unknown;
  syscall?: unknown;
  path?: unknown;
  fd?: unknown;
  props?: Record<string, unknown>;
  cause?: WireError | undefined;
}

const KNOWN_FIELDS = new Set(['name', 'message', 'stack', 'code', 'errno', 'syscall', 'path', 'fd', 'cause']);

function toWire(err: unknown, depth: number): WireError {
  if (!(err instanceof Error)) {
    // A thrown non-Error has no class, stack or code to carry: it arrives as a RuntimeError with a
    // code of its own (every error the library rejects with has one) and a description of the value.
    return { name: 'RuntimeError', code: 'NON_ERROR_THROWN', message: `non-Error thrown: ${describeValue(err)}` };
  }
  const e = err as Error & Record<string, unknown>;
  // name and message are ordinary properties: anything may sit there (an object that cannot be
  // cloned, a getter that throws). Only strings travel.
  const name = e.name;
  const w: WireError = { name: typeof name === 'string' ? name : 'Error', message: messageOf(e) };
  if (typeof e.stack === 'string') w.stack = e.stack;
  for (const k of ['code', 'errno', 'syscall', 'path', 'fd'] as const) {
    const v = e[k];
    if (typeof v === 'string' || typeof v === 'number') w[k] = v;
  }
  // Other own enumerable primitives (e.g. an address, a port) travel too.
  for (const k of Object.keys(e)) {
    if (KNOWN_FIELDS.has(k)) continue;
    const v = e[k];
    if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) (w.props ??= {})[k] = v;
  }
  if (e.cause !== undefined && depth < 4) w.cause = toWire(e.cause, depth + 1);
  return w;
}

/**
 * What travels when even the description of a failure cannot be built or serialized (an Error
 * subclass whose getters or Proxy traps throw): a fixed, coded error, so the handle still settles.
 */
function unencodableWire(why: unknown): WireError {
  return {
    name: 'RuntimeError',
    code: 'RESULT_NOT_CLONEABLE',
    message: `the task failed, and what it threw cannot be sent back to its core (${messageOf(why)})`,
  };
}

/**
 * Encodes an error (or any thrown value) with its name, message, code, stack and cause. Never
 * throws: a value that cannot be described is replaced by a `RESULT_NOT_CLONEABLE` error.
 */
export function encodeError(err: unknown): Encoded {
  let s = new v8.Serializer();
  s.writeHeader();
  try {
    s.writeValue(toWire(err, 0));
  } catch (why) {
    s = new v8.Serializer();
    s.writeHeader();
    s.writeValue(unencodableWire(why));
  }
  return { kind: Kind.V8, bytes: s.releaseBuffer(), sabs: null };
}

function fromWire(w: WireError, core: number): Error {
  let err: Error;
  const cause = w.cause !== undefined ? fromWire(w.cause, core) : undefined;
  const opts = cause !== undefined ? { cause } : undefined;
  if (w.name === 'CancelledError') err = new CancelledError(w.message, opts);
  else if (w.name === 'IoError' && typeof w.code === 'string') {
    const io = new IoError(w.code, typeof w.errno === 'number' ? w.errno : 0, typeof w.syscall === 'string' ? w.syscall : 'unknown', w.message);
    if (typeof w.path === 'string') io.path = w.path;
    if (typeof w.fd === 'number') io.fd = w.fd;
    if (cause !== undefined) (io as { cause?: unknown }).cause = cause;
    err = io;
  } else if ((w.name === 'RuntimeError' || w.name === 'InvalidArgumentError') && typeof w.code === 'string') {
    err = new RuntimeError(w.code, w.message, opts);
    err.name = w.name;
  } else {
    const Ctor = ERROR_CTORS[w.name] ?? Error;
    err = new Ctor(w.message, opts);
    if (err.name !== w.name) Object.defineProperty(err, 'name', { value: w.name, configurable: true, writable: true, enumerable: false });
    const e = err as Error & Record<string, unknown>;
    for (const k of ['code', 'errno', 'syscall', 'path', 'fd'] as const) if (w[k] !== undefined) e[k] = w[k];
  }
  if (w.props) Object.assign(err, w.props);
  if (w.stack !== undefined) err.stack = `${w.stack}\n    (on miniss core ${core})`;
  return err;
}

const ERROR_CTORS: Record<string, new (message?: string, opts?: { cause?: unknown }) => Error> = {
  Error,
  TypeError,
  RangeError,
  SyntaxError,
  ReferenceError,
  EvalError,
  URIError,
};

/** The deserializer reads from private memory: bytes still in a ring (shared memory) are copied out. */
function ownBytes(bytes: Uint8Array): Uint8Array {
  return bytes.buffer instanceof SharedArrayBuffer ? bytes.slice() : bytes;
}

export function decodeError(bytes: Uint8Array, core: number): Error {
  const d = new v8.Deserializer(ownBytes(bytes));
  d.readHeader();
  return fromWire(d.readValue() as WireError, core);
}
