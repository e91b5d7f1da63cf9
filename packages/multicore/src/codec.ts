import v8 from 'node:v8';
import { CancelledError, File, IoError, Runtime, RuntimeError, TcpListener, TcpStream } from '@miniss/core';

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

// Host-object tags of the codec's own records.
/** A bare SharedArrayBuffer: `[TAG_BARE_SAB]`, then V8's own `'u' varint(index)` (see SabSerializer). */
const TAG_BARE_SAB = 1;
const TAG_SAB_VIEW = 2;
const TAG_COPIED_VIEW = 3;
/** A length-tracking view over a growable SharedArrayBuffer (`new Ctor(sab, offset)`: no length). */
const TAG_SAB_VIEW_TRACKING = 4;
/** V8's serialization tags (the wire format's kHostObject and kSharedArrayBuffer). */
const V8_TAG_HOST_OBJECT = new Uint8Array([0x5c]); // '\\'
const V8_TAG_SHARED_ARRAY_BUFFER = 0x75; // 'u', < 128: reads back as a one-byte varint

function viewType(view: ArrayBufferView): number {
  for (let i = 0; i < VIEW_TYPES.length; i++) if (view instanceof VIEW_TYPES[i]!) return i;
  return -1;
}

/** Serializes a view the way V8 does natively, to read the flags V8 keeps about it (not via host objects). */
class ViewProbe extends v8.Serializer {
  _getSharedArrayBufferId(): number {
    return 0;
  }
}

/**
 * True when `view` tracks the length of its (resizable or growable) buffer: it was made without a
 * length. JavaScript does not expose that; V8's serializer writes it as bit 0 of the view's flags,
 * the last varint of a view record. Only asked for views over growable SharedArrayBuffers.
 */
function isLengthTracking(view: ArrayBufferView): boolean {
  const p = new ViewProbe();
  p.writeHeader();
  p.writeValue(view);
  const b = p.releaseBuffer();
  return (b[b.length - 1]! & 1) === 1;
}

/**
 * The structured-clone serializer of the codec. SharedArrayBuffers are written as indices into a
 * side list (`sabs`) instead of being copied:
 *
 * - a view over one (typed array, DataView) is a host object (V8 is told to treat views so) and
 *   is written as `[TAG_SAB_VIEW, type, index, offset, length]`;
 * - a bare one reaches `_getSharedArrayBufferId`, after which V8 writes its tag `'u'` and the id we
 *   return. Node's Deserializer cannot read that tag back, so the hook first writes V8's
 *   host-object tag and TAG_BARE_SAB: the reader's `_readHostObject` then consumes V8's `'u'` and the
 *   index itself. Object identity (a SAB referenced twice) is V8's usual back-reference.
 *
 * Every other value is serialized by V8 exactly as `postMessage` would (holes, extra array
 * properties, boxed primitives, refusal of what cannot be cloned): the value is never rebuilt.
 */
class SabSerializer extends v8.Serializer {
  constructor(public sabs: SharedArrayBuffer[] | null = null) {
    super();
    (this as unknown as { _setTreatArrayBufferViewsAsHostObjects(on: boolean): void })._setTreatArrayBufferViewsAsHostObjects(true);
  }
  private sabIndex(sab: SharedArrayBuffer): number {
    const list = (this.sabs ??= []);
    let i = list.indexOf(sab);
    if (i < 0) i = list.push(sab) - 1;
    return i;
  }
  _getSharedArrayBufferId(sab: SharedArrayBuffer): number {
    if (!BARE_SAB_OK) {
      throw new RuntimeError('INVALID_ARGUMENT', 'a bare SharedArrayBuffer cannot be sent to another core on this Node.js version: pass a typed array over it');
    }
    this.writeRawBytes(V8_TAG_HOST_OBJECT);
    this.writeUint32(TAG_BARE_SAB);
    return this.sabIndex(sab);
  }
  _writeHostObject(obj: object): void {
    if (!ArrayBuffer.isView(obj)) {
      throw new RuntimeError('INVALID_ARGUMENT', `a ${obj.constructor?.name ?? 'host object'} cannot be sent to another core (not structured-cloneable)`);
    }
    const view = obj as ArrayBufferView;
    const type = viewType(view);
    if (type < 0) throw new RuntimeError('INVALID_ARGUMENT', `a ${obj.constructor?.name} cannot be sent to another core`);
    if (view.buffer instanceof SharedArrayBuffer) {
      const sab = view.buffer;
      if (sab.growable && isLengthTracking(view)) {
        this.writeUint32(TAG_SAB_VIEW_TRACKING);
        this.writeUint32(type);
        this.writeUint32(this.sabIndex(sab));
        this.writeUint32(view.byteOffset);
        return;
      }
      const elems = view instanceof DataView ? view.byteLength : view.byteLength / (view as Uint8Array).BYTES_PER_ELEMENT;
      this.writeUint32(TAG_SAB_VIEW);
      this.writeUint32(type);
      this.writeUint32(this.sabIndex(sab));
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
    if (tag === TAG_BARE_SAB) {
      if (this.readUint32() !== V8_TAG_SHARED_ARRAY_BUFFER) throw new RuntimeError('PROTOCOL_ERROR', 'a bare SharedArrayBuffer in a cross-core message is not followed by its V8 record');
      return this.sab(this.readUint32());
    }
    const type = this.readUint32();
    const Ctor = VIEW_TYPES[type] as unknown as new (b: ArrayBufferLike, off?: number, len?: number) => ArrayBufferView;
    if (Ctor === undefined) throw new RuntimeError('PROTOCOL_ERROR', `unknown typed array type ${type} in a cross-core message`);
    if (tag === TAG_SAB_VIEW_TRACKING) {
      const sab = this.sab(this.readUint32());
      return new Ctor(sab, this.readUint32());
    }
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
 * Checked once per thread: V8 writes a bare SharedArrayBuffer as `'u' varint(id)` right after
 * `_getSharedArrayBufferId` returns, as the trick in SabSerializer assumes. Should a future V8 write
 * it otherwise, bare SharedArrayBuffers are refused with a clear error instead of being misread.
 */
const BARE_SAB_OK = ((): boolean => {
  try {
    const probe = new SharedArrayBuffer(1);
    const s = new (class extends v8.Serializer {
      _getSharedArrayBufferId(): number {
        this.writeRawBytes(V8_TAG_HOST_OBJECT);
        this.writeUint32(TAG_BARE_SAB);
        return 0;
      }
    })();
    s.writeHeader();
    s.writeValue([probe, probe]);
    const d = new SabDeserializer(s.releaseBuffer(), [probe]);
    d.readHeader();
    const back = d.readValue() as unknown[];
    return back[0] === probe && back[1] === probe;
  } catch {
    return false;
  }
})();

/** Serializes `value` (any structured-cloneable value); SharedArrayBuffers are added to `sabs`. */
function serialize(value: unknown, sabs: SharedArrayBuffer[] | null = null): Encoded {
  const s = new SabSerializer(sabs);
  s.writeHeader();
  try {
    s.writeValue(value);
  } catch (err) {
    throw cloneError(err, value);
  }
  return { kind: Kind.V8, bytes: s.releaseBuffer(), sabs: s.sabs };
}

function cloneError(err: unknown, value: unknown): Error {
  if (err instanceof RuntimeError) return err;
  // The clone fails inside such an object (on a closure of its runtime), and the message would
  // name that instead: say what the caller sent. Looked for only once the clone has failed.
  const resource = resourceIn(value);
  if (resource !== null) {
    return new RuntimeError(
      'INVALID_ARGUMENT',
      `a ${resource} cannot be sent to another core: it belongs to the core that opened it (its fd is in that core's backend). Send data instead, or do the I/O on that core`,
      { cause: err },
    );
  }
  return new RuntimeError(
    'INVALID_ARGUMENT',
    `a value cannot be sent to another core: ${messageOf(err)} (arguments and results travel by structured clone: no functions, symbols or class instances with methods)`,
    { cause: err },
  );
}

/** The kind of miniss resource `value` is, or holds one level down (an argument list, a result object); else null. */
function resourceIn(value: unknown): string | null {
  const kind = (v: unknown): string | null =>
    v instanceof TcpStream ? 'TcpStream' : v instanceof TcpListener ? 'TcpListener' : v instanceof File ? 'File' : v instanceof Runtime ? 'Runtime' : null;
  try {
    const k = kind(value);
    if (k !== null || value === null || typeof value !== 'object') return k;
    for (const v of Array.isArray(value) ? value : Object.values(value)) {
      const inner = kind(v);
      if (inner !== null) return inner;
    }
  } catch {
    // A Proxy whose traps throw: no resource to name.
  }
  return null;
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
      // UTF-8 cannot carry a lone surrogate (TextEncoder would turn it into U+FFFD): such a
      // string goes through V8's serializer, which keeps it as it is.
      if (!value.isWellFormed()) return serialize(value);
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
  cause?: WireItem;
  /** An AggregateError's `errors`. */
  errors?: WireItem[];
}

/**
 * A value an error refers to (its `cause`, an entry of an AggregateError's `errors`): an Error (as
 * a WireError), any other value as its structured clone (encoded by the codec, so shared memory is
 * shared), or, when that value cannot be cloned, its description.
 */
type WireItem = { e: WireError } | { k: number; b: Uint8Array } | { t: string };

/** What encodeError collects while it walks an error: the SharedArrayBuffers its values refer to. */
interface WireCtx {
  sabs: SharedArrayBuffer[] | null;
}

/** Causes and aggregated errors are carried this many levels deep. */
const MAX_WIRE_DEPTH = 4;

const KNOWN_FIELDS = new Set(['name', 'message', 'stack', 'code', 'errno', 'syscall', 'path', 'fd', 'cause', 'errors']);

function toWire(err: unknown, depth: number, ctx: WireCtx): WireError {
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
  if (depth < MAX_WIRE_DEPTH) {
    const cause = e.cause;
    if (cause !== undefined) w.cause = toItem(cause, depth + 1, ctx);
    const errors = err instanceof AggregateError ? (e.errors as unknown) : undefined;
    if (Array.isArray(errors)) {
      const items: WireItem[] = [];
      for (let i = 0; i < errors.length; i++) items.push(toItem(errors[i], depth + 1, ctx));
      w.errors = items;
    }
  }
  return w;
}

function toItem(value: unknown, depth: number, ctx: WireCtx): WireItem {
  if (value instanceof Error) return { e: toWire(value, depth, ctx) };
  const mark = ctx.sabs?.length ?? 0;
  try {
    let enc: Encoded;
    if (typeof value === 'object' && value !== null) {
      enc = serialize(value, ctx.sabs);
      ctx.sabs = enc.sabs;
    } else {
      enc = encodeValue(value);
    }
    // Own, exactly sized bytes (a number's are a scratch view; releaseBuffer's may be a Buffer).
    return { k: enc.kind, b: new Uint8Array(enc.bytes) };
  } catch {
    if (ctx.sabs !== null) ctx.sabs.length = mark;
    return { t: describeValue(value) };
  }
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
 * Encodes an error (or any thrown value) with its name, message, code, stack, cause and (an
 * AggregateError's) errors. A cause or aggregated entry that is not an Error travels as its
 * structured clone (SharedArrayBuffers in it shared, listed in `sabs`), or as its description when
 * it cannot be cloned. Never throws: a value that cannot be described is replaced by a
 * `RESULT_NOT_CLONEABLE` error.
 */
export function encodeError(err: unknown): Encoded {
  const ctx: WireCtx = { sabs: null };
  let s = new v8.Serializer();
  s.writeHeader();
  try {
    s.writeValue(toWire(err, 0, ctx));
  } catch (why) {
    ctx.sabs = null;
    s = new v8.Serializer();
    s.writeHeader();
    s.writeValue(unencodableWire(why));
  }
  return { kind: Kind.V8, bytes: s.releaseBuffer(), sabs: ctx.sabs };
}

function fromItem(item: WireItem, core: number, sabs: SharedArrayBuffer[] | null): unknown {
  if ('e' in item) return fromWire(item.e, core, sabs);
  if ('k' in item) return decodeValue(item.k, item.b, sabs);
  return item.t;
}

function fromWire(w: WireError, core: number, sabs: SharedArrayBuffer[] | null): Error {
  let err: Error;
  const hasCause = w.cause !== undefined;
  const cause = hasCause ? fromItem(w.cause!, core, sabs) : undefined;
  const opts = hasCause ? { cause } : undefined;
  if (w.name === 'CancelledError') err = new CancelledError(w.message, opts);
  else if (w.name === 'IoError' && typeof w.code === 'string') {
    const io = new IoError(w.code, typeof w.errno === 'number' ? w.errno : 0, typeof w.syscall === 'string' ? w.syscall : 'unknown', w.message);
    if (typeof w.path === 'string') io.path = w.path;
    if (typeof w.fd === 'number') io.fd = w.fd;
    if (hasCause) (io as { cause?: unknown }).cause = cause;
    err = io;
  } else if ((w.name === 'RuntimeError' || w.name === 'InvalidArgumentError') && typeof w.code === 'string') {
    err = new RuntimeError(w.code, w.message, opts);
    err.name = w.name;
  } else {
    if (w.errors !== undefined) {
      err = new AggregateError(
        w.errors.map((i) => fromItem(i, core, sabs)),
        w.message,
        opts,
      );
    } else {
      const Ctor = ERROR_CTORS[w.name] ?? Error;
      err = new Ctor(w.message, opts);
    }
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

export function decodeError(bytes: Uint8Array, core: number, sabs: SharedArrayBuffer[] | null = null): Error {
  const d = new v8.Deserializer(ownBytes(bytes));
  d.readHeader();
  return fromWire(d.readValue() as WireError, core, sabs);
}
