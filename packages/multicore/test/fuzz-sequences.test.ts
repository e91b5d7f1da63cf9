/**
 * Randomized, model-based sequence fuzzer for MultiCoreRuntime.
 *
 * Each seed makes one MultiCoreRuntime (2-4 cores, a random backend among the ones that work here,
 * small or default ring capacities so that backlogs and fragmented messages happen, spin windows of
 * 0 or the default so that cores sleep on their doorbells) and issues, from core 0, a random
 * sequence of operations in random interleavings (same tick, microtask, setImmediate, a few ms):
 * spawn / spawnOn / broadcast of sync and async tasks with random arguments (numbers incl. -0 and
 * NaN, strings with lone surrogates, bigints, typed arrays, ArrayBuffers, SharedArrayBuffers bare
 * and under views, Dates, Maps, Sets, nested objects and arrays with holes, Errors), tasks that
 * return Errors, throw Errors (with code and cause, AggregateErrors) or non-Errors, return or take
 * values that cannot be cloned, closures that cannot be shipped, tasks that sleep, block their core
 * for a few ms, read a file through the core's runtime, spawn nested tasks on their core's runtime
 * (and cancel some), write into SharedArrayBuffers; bursts of small tasks (ring backlog);
 * cancellation at random times (same tick = before start, while running, after settle); tasks that
 * ignore their signal; misuse (bad core index, non-function); in some seeds a worker core that
 * crashes (an uncaught throw from a setImmediate on that core, or process.exit() there — both are
 * what the README and tests call a crash) and in some a shutdown({ graceMs }) with tasks in flight;
 * some seeds run their work as a blockOn root task.
 *
 * Invariants checked:
 * - every handle (and broadcast promise) settles exactly once within a bound (no hang); after
 *   `shutdown()` resolves no handle is pending any more;
 * - a fulfilled result deep-equals what the reference model computed on core 0 (the same function
 *   run locally, then structuredClone: exactly what postMessage would deliver; bytes of files read);
 *   broadcast gives one result per core, in core order;
 * - a rejection is an Error with a string code, the documented one: CANCELLED only after cancel()
 *   returned true or once shutdown began, RUNTIME_SHUTDOWN only once shutdown began, CORE_CRASHED
 *   only for tasks on the crashed core, TASK_NOT_SHIPPABLE / INVALID_ARGUMENT /
 *   RESULT_NOT_CLONEABLE / NON_ERROR_THROWN where the model says so; a thrown Error keeps its
 *   class name, message, code, cause (and an AggregateError its errors);
 * - spawn/spawnOn throw (synchronously) INVALID_ARGUMENT for a bad core or a non-function and
 *   RUNTIME_SHUTDOWN after shutdown began; broadcast never throws;
 * - cancel() returns true exactly when the handle had not settled (`done` false), and then the
 *   handle rejects CANCELLED; a second cancel() returns false;
 * - SharedArrayBuffer effects are seen on core 0 once the task's handle fulfilled; a result's
 *   SharedArrayBuffer and a view on it arrive as one shared buffer;
 * - a crash calls onCoreCrash exactly once, for that core, and stats() shows it crashed; spawn()
 *   never places on a core known to be crashed;
 * - after shutdown: every core exited or crashed, every worker thread gone (threadId -1 after its
 *   exit event), /proc/self/fd back to its baseline, no unhandled rejection, no
 *   MinissUnobservedTaskError / MinissCoreCrash warning (every handle is observed and onCoreCrash
 *   is set), and a new MultiCoreRuntime works afterwards (every seed makes one; a last one at the end).
 *
 * Environment:
 *   MINISS_FUZZ_SEEDS=<n>     seeds (default 40: ~3 s on a 2-core machine); e.g.
 *                             MINISS_FUZZ_SEEDS=1500 for a long run (the test timeout grows with
 *                             it). Past 50 seeds a failing seed does not stop the run: up to 5 are
 *                             collected.
 *   MINISS_FUZZ_SEED=<n>      replay one seed.
 *   MINISS_FUZZ_BASE=<n>      first seed of the run (default 1).
 *   MINISS_FUZZ_BACKEND=name  only this backend (io_uring, epoll or node); otherwise each seed
 *                             picks one (every third seed uses node).
 *   MINISS_FUZZ_VERBOSE=1     print every seed's operation log, not only a failing one.
 *   MINISS_UNDER_ASAN=1       (set by tools/scripts/asan.mjs) longer bounds.
 * A failure prints the seed, a replay command and the operation log; the operations a seed issues
 * depend only on the seed (outcomes and timing may vary), so MINISS_FUZZ_SEED=<n> replays it.
 */
import * as fs from 'node:fs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeBackend, type BackendName } from '@miniss/core';
import { MultiCoreRuntime, type CoreTaskHandle } from '@miniss/multicore';
import { Rng, WHENS, at, fdCount, fdTable, fuzzBudget, sleep } from '../../core/test/fuzz-kit.js';

// ------------------------------------------------------------------------------------------------
// Budget

const BUDGET = fuzzBudget(40);
const ONE_SEED = BUDGET.oneSeed;
const SEEDS = BUDGET.seeds;
const BASE = BUDGET.base;
const ONLY = BUDGET.only as BackendName | undefined;
const VERBOSE = BUDGET.verbose;
const UNDER_ASAN = process.env.MINISS_UNDER_ASAN === '1';
/** How long any one handle may stay pending after the seed stopped issuing work. */
const SETTLE_BOUND_MS = UNDER_ASAN ? 20_000 : 10_000;
/** How long one seed may take in all. */
const SEED_BOUND_MS = 3 * SETTLE_BOUND_MS;
/** Shutdown's wait for a blocked worker (none should block that long: the longest busy task is 15 ms). */
const WORKER_EXIT_MS = 3000;

function pause(rng: Rng): Promise<void> | undefined {
  switch (rng.int(0, 6)) {
    case 0:
    case 1:
    case 2:
      return undefined;
    case 3:
      return Promise.resolve();
    case 4:
    case 5:
      return new Promise((r) => setImmediate(r));
    default:
      return sleep(rng.int(0, 4));
  }
}


// ------------------------------------------------------------------------------------------------
// Random values

const CHARS = ['a', 'Z', '0', ' ', '\u0000', '\u00e9', '\u4e2d', '\ud83d\ude00', '\ud800', '\udfff', '\udc00x', '"', '\\', '\n'];

function rstr(rng: Rng): string {
  let s = '';
  const n = rng.chance(0.1) ? rng.int(100, 3000) : rng.int(0, 12);
  for (let i = 0; i < n; i++) s += rng.pick(CHARS);
  return s;
}

function rnum(rng: Rng): number {
  return rng.pick([0, -0, 1, -1, 0.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 2 ** 53, -(2 ** 31), 2 ** 32 + 1, 1e-300, rng.int(0, 1e6), rng.u32() / 7]);
}

/** A random cloneable value; `sabs` collects the SharedArrayBuffers in it. */
function rvalue(rng: Rng, depth: number): unknown {
  const k = rng.int(0, depth > 2 ? 6 : 17);
  switch (k) {
    case 0:
    case 1:
      return rnum(rng);
    case 2:
    case 3:
      return rstr(rng);
    case 4:
      return rng.pick([true, false, null, undefined]);
    case 5:
      return BigInt(rng.int(0, 1e6)) * (rng.chance(0.5) ? -(2n ** 70n) : 1n);
    case 6:
      return rng.int(-1000, 1000);
    case 7: {
      const n = rng.chance(0.15) ? rng.int(200, 20000) : rng.int(0, 40);
      const ctor = rng.pick([Uint8Array, Int32Array, Float64Array, Uint16Array] as const);
      const a = new ctor(n);
      for (let i = 0; i < Math.min(n, 64); i++) a[i] = ctor === Float64Array ? rng.u32() / 3 : rng.u32();
      if (n > 64) a[n - 1] = 7;
      return rng.chance(0.3) && n > 2 ? a.subarray(1, n - 1) : a;
    }
    case 8: {
      const sab = new SharedArrayBuffer(rng.int(1, 64));
      new Uint8Array(sab)[0] = rng.int(0, 255);
      return rng.chance(0.5) ? sab : new Int8Array(sab);
    }
    case 9: {
      const ab = new ArrayBuffer(rng.int(0, 32));
      if (ab.byteLength > 0) new Uint8Array(ab)[0] = 9;
      return rng.chance(0.5) ? ab : new DataView(ab);
    }
    case 10:
      return new Date(rng.chance(0.1) ? Number.NaN : rng.int(0, 2e12));
    case 11: {
      const m = new Map<unknown, unknown>();
      for (let i = rng.int(0, 3); i > 0; i--) m.set(rvalue(rng, depth + 1), rvalue(rng, depth + 1));
      return rng.chance(0.5) ? m : new Set(m.keys());
    }
    case 12: {
      const E = rng.pick([Error, TypeError, RangeError, SyntaxError, EvalError, URIError, ReferenceError] as const);
      return new E(rstr(rng));
    }
    case 13:
    case 14: {
      const n = rng.int(0, 5);
      const a: unknown[] = [];
      for (let i = 0; i < n; i++) a.push(rvalue(rng, depth + 1));
      if (rng.chance(0.2)) a[n + 2] = 'after a hole';
      return a;
    }
    default: {
      const o: Record<string, unknown> = {};
      for (let i = rng.int(0, 5); i > 0; i--) o[rng.chance(0.8) ? `k${rng.int(0, 9)}` : rstr(rng)] = rvalue(rng, depth + 1);
      if (rng.chance(0.1)) o.self = rng.chance(0.5) ? o : [o];
      return o;
    }
  }
}

/** Values that cannot be cloned (postMessage refuses them). */
function unclonable(rng: Rng): unknown {
  switch (rng.int(0, 4)) {
    case 0:
      return () => 1;
    case 1:
      return Symbol('s');
    case 2:
      return new WeakMap();
    case 3:
      return Promise.resolve(1);
    default:
      return { nested: [1, { deep: () => 2 }] };
  }
}

// ------------------------------------------------------------------------------------------------
// Deep equality (what structured clone keeps)

function diff(got: unknown, want: unknown, path: string, seen = new Map<object, unknown>()): string | null {
  if (typeof want !== 'object' || want === null) {
    if (typeof got !== typeof want) return `${path}: type ${typeof got}, expected ${typeof want}`;
    if (typeof want === 'number' || typeof want === 'bigint' || typeof want === 'boolean' || want === undefined || want === null) {
      return Object.is(got, want) ? null : `${path}: ${String(got)}, expected ${String(want)}`;
    }
    if (typeof want === 'string') {
      if (got === want) return null;
      return `${path}: string differs (lengths ${(got as string).length} / ${want.length}; ${JSON.stringify((got as string).slice(0, 40))} vs ${JSON.stringify(want.slice(0, 40))})`;
    }
    return got === want ? null : `${path}: differs`;
  }
  if (typeof got !== 'object' || got === null) return `${path}: ${typeof got} ${String(got)}, expected an object`;
  if (seen.has(want)) return seen.get(want) === got ? null : `${path}: a cycle does not point back to the same object`;
  seen.set(want, got);
  const wp = Object.prototype.toString.call(want);
  const gp = Object.prototype.toString.call(got);
  if (wp !== gp) return `${path}: ${gp}, expected ${wp}`;
  if (want instanceof Error) {
    const g = got as Error;
    if (g.name !== want.name) return `${path}: error name ${g.name}, expected ${want.name}`;
    if (g.message !== want.message) return `${path}: error message ${JSON.stringify(g.message)}, expected ${JSON.stringify(want.message)}`;
    if ('cause' in want) {
      const d = diff((g as { cause?: unknown }).cause, want.cause, `${path}.cause`, seen);
      if (d) return d;
    }
    return null;
  }
  if (ArrayBuffer.isView(want)) {
    const w = want as unknown as ArrayLike<unknown> & ArrayBufferView;
    const g = got as ArrayLike<unknown> & ArrayBufferView;
    if (w.constructor.name !== g.constructor.name) return `${path}: ${g.constructor.name}, expected ${w.constructor.name}`;
    if (w.byteLength !== g.byteLength) return `${path}: byteLength ${g.byteLength}, expected ${w.byteLength}`;
    if ((w.buffer instanceof SharedArrayBuffer) !== (g.buffer instanceof SharedArrayBuffer)) return `${path}: buffer shared ${g.buffer instanceof SharedArrayBuffer}, expected ${w.buffer instanceof SharedArrayBuffer}`;
    const wb = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    const gb = new Uint8Array(g.buffer, g.byteOffset, g.byteLength);
    for (let i = 0; i < wb.length; i++) if (wb[i] !== gb[i]) return `${path}: byte ${i} is ${gb[i]}, expected ${wb[i]}`;
    return null;
  }
  if (want instanceof ArrayBuffer || want instanceof SharedArrayBuffer) {
    const w = new Uint8Array(want);
    const g = new Uint8Array(got as ArrayBuffer);
    if (w.length !== g.length) return `${path}: byteLength ${g.length}, expected ${w.length}`;
    for (let i = 0; i < w.length; i++) if (w[i] !== g[i]) return `${path}: byte ${i} is ${g[i]}, expected ${w[i]}`;
    return null;
  }
  if (want instanceof Date) return Object.is((got as Date).getTime(), want.getTime()) ? null : `${path}: date ${(got as Date).getTime()}, expected ${want.getTime()}`;
  if (want instanceof Map || want instanceof Set) {
    const w = [...(want as Map<unknown, unknown>).entries()];
    const g = [...(got as Map<unknown, unknown>).entries()];
    if (w.length !== g.length) return `${path}: size ${g.length}, expected ${w.length}`;
    for (let i = 0; i < w.length; i++) {
      const d = diff(g[i], w[i], `${path}[entry ${i}]`, seen);
      if (d) return d;
    }
    return null;
  }
  const wk = Object.keys(want);
  const gk = Object.keys(got);
  if (wk.join('\u0001') !== gk.join('\u0001')) return `${path}: keys [${gk.slice(0, 10).join(',')}], expected [${wk.slice(0, 10).join(',')}]`;
  if (Array.isArray(want) && (got as unknown[]).length !== want.length) return `${path}: length ${(got as unknown[]).length}, expected ${want.length}`;
  for (const k of wk) {
    const d = diff((got as Record<string, unknown>)[k], (want as Record<string, unknown>)[k], `${path}.${k}`, seen);
    if (d) return d;
  }
  return null;
}

// ------------------------------------------------------------------------------------------------
// The task catalog. Every shipped function uses only its arguments and globals; the ones that
// import are built from source text (vitest rewrites `import()` in this file).

/** What the model says a task does. */
type Expect =
  | { ok: true; value: unknown; check?: (v: unknown) => string | null }
  | { ok: false; code: string; error?: Error; messageHas?: string; core0Raw?: { value: unknown } };

const echo = (x: unknown): unknown => x;
const shape = (o: unknown, tag: string): unknown => ({ tag, o, isArray: Array.isArray(o), type: typeof o, json: (() => { try { return JSON.stringify(o)?.length ?? -1; } catch { return -2; } })() });
const asyncEcho = async (x: unknown, ms: number): Promise<unknown> => {
  await new Promise((r) => setTimeout(r, ms));
  return x;
};
const busy = (ms: number, x: unknown): unknown => {
  const end = Date.now() + ms;
  while (Date.now() < end);
  return x;
};
/** Builds the Error described by `d` (class, message, code, cause, errors) - on whichever core. */
const throwIt = (d: { cls: string; msg: string; code: string | null; cause: unknown; causeErr: string | null; agg: string[] | null }, when: number): unknown => {
  const make = (): Error => {
    const C = (globalThis as unknown as Record<string, ErrorConstructor>)[d.cls]!;
    const opts = d.causeErr !== null ? { cause: new TypeError(d.causeErr) } : d.cause !== undefined ? { cause: d.cause } : undefined;
    const e = d.agg !== null ? new AggregateError(d.agg.map((m) => new RangeError(m)), d.msg, opts) : new C(d.msg, opts);
    if (d.code !== null) (e as Error & { code?: string }).code = d.code;
    return e;
  };
  if (when === 0) throw make();
  return (async () => {
    await new Promise((r) => setTimeout(r, when - 1));
    throw make();
  })();
};
const returnError = (msg: string, causeMsg: string | null): Error => (causeMsg === null ? new RangeError(msg) : new TypeError(msg, { cause: new Error(causeMsg) }));
const throwNonError = (v: unknown, isAsync: boolean): unknown => {
  if (!isAsync) throw v;
  return Promise.resolve().then(() => {
    throw v;
  });
};
const badResult = (k: number): unknown => (k === 0 ? { f: () => 1 } : k === 1 ? new WeakMap() : k === 2 ? [Symbol('x')] : { p: Promise.resolve(2) });
/** Writes `val` into slot `slot` of the Int32Array and returns the previous value (0: fresh slot). */
const sabWrite = (view: Int32Array, slot: number, val: number): number => Atomics.exchange(view, slot, val);
const sabMake = (n: number, fill: number): unknown => {
  const s = new SharedArrayBuffer(n);
  new Uint8Array(s).fill(fill);
  return { s, v: new Uint8Array(s), again: s };
};
/** Waits for its signal (rejects with its reason) or `ms`. */
const cancellable = (ms: number, v: unknown, signal: AbortSignal): Promise<unknown> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => resolve(v), ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
/** Gets a signal (declares it) and ignores it. */
const ignoresSignal = (ms: number, v: unknown, _signal: AbortSignal): Promise<unknown> => new Promise((resolve) => setTimeout(() => resolve(v), ms));
/** Never settles by itself: only a cancel or the shutdown ends it (it honours its signal). */
const forever = (signal: AbortSignal): Promise<unknown> => new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
const crashFn = (mode: string): Promise<never> => {
  setImmediate(() => {
    if (mode === 'exit') process.exit(7);
    throw new Error(`fuzz crash (${mode})`);
  });
  return new Promise<never>(() => {});
};
const readFileTask = new Function(
  `return async (path, pos, n) => {
    const { File } = await import('@miniss/core');
    const f = await File.open(path, { read: true });
    try {
      const b = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        const r = await f.read(b.subarray(got), pos + got);
        if (r === 0) break;
        got += r;
      }
      return b.slice(0, got);
    } finally {
      await f.close();
    }
  }`,
)() as (path: string, pos: number, n: number) => Promise<Uint8Array>;
const nestedTask = new Function(
  `return async (k, xs, cancelIdx) => {
    const { spawn } = await import('@miniss/core');
    const { currentCore } = await import('@miniss/multicore');
    const hs = xs.map((x, i) => spawn(async () => { if (i % 2) await new Promise((r) => setTimeout(r, 1)); return x * k; }));
    if (cancelIdx >= 0 && cancelIdx < hs.length) hs[cancelIdx].cancel();
    const out = [];
    for (const h of hs) out.push(await h.then((v) => v, (e) => e.code));
    return { core: currentCore(), out };
  }`,
)() as (k: number, xs: number[], cancelIdx: number) => Promise<{ core: number; out: unknown[] }>;
const whoAmI = new Function(`return async (x) => { const { currentCore } = await import('@miniss/multicore'); return [currentCore(), x]; }`)() as (x: unknown) => Promise<[number, unknown]>;

/** structuredClone of `v` as the model's expectation; a DataCloneError means "cannot be sent". */
function cloneOrCode(v: unknown, code: string): Expect {
  try {
    return { ok: true, value: structuredClone(v) };
  } catch {
    return { ok: false, code };
  }
}

// ------------------------------------------------------------------------------------------------
// One seed

class FuzzFailure extends Error {
  readonly code = 'HANG';
}

interface Tracked {
  label: string;
  core: number; // -1: broadcast
  h: CoreTaskHandle<unknown> | null;
  expect: Expect;
  /** cancel() returned true (we cancelled it). */
  cancelled: boolean;
  /** Issued after (or while) shutdown began / crash: those widen the allowed codes. */
  settled: boolean;
  outcome?: { ok: true; value: unknown } | { ok: false; err: unknown };
  /** Extra check once fulfilled (SharedArrayBuffer effects). */
  after?: () => string | null;
}

class Ctx {
  readonly log: string[] = [];
  readonly failures: string[] = [];
  private readonly t0 = Date.now();
  readonly tracked: Tracked[] = [];
  readonly outcomes = new Map<string, number>();
  shutdownAt = -1; // Date.now() when shutdown began
  crashCore = -1;
  crashes: number[] = [];
  constructor(readonly seed: number) {}

  note(msg: string): void {
    this.log.push(`${String(Date.now() - this.t0).padStart(5)}ms ${msg}`);
  }
  fail(msg: string): void {
    this.note(`FAIL ${msg}`);
    this.failures.push(msg);
  }
  count(k: string): void {
    this.outcomes.set(k, (this.outcomes.get(k) ?? 0) + 1);
  }
  get pending(): Tracked[] {
    return this.tracked.filter((t) => !t.settled);
  }

  /** Follows a handle or promise to its outcome (exactly once). */
  follow(t: Tracked, p: PromiseLike<unknown>): void {
    this.tracked.push(t);
    let calls = 0;
    const done = (o: Tracked['outcome']): void => {
      calls++;
      if (calls > 1) {
        this.fail(`${t.label}: settled ${calls} times`);
        return;
      }
      t.settled = true;
      t.outcome = o;
      const code = o!.ok ? 'ok' : String((o!.err as { code?: unknown } | null)?.code);
      this.count(`${t.label.replace(/^#\d+ /, '').replace(/[ (@].*$/, '')} ${code.replace(/^E_FUZZ_\d+$/, 'E_FUZZ_n')}`);
      this.note(`  ${t.label} -> ${o!.ok ? 'ok' : `err ${code} ${String((o!.err as Error)?.message).slice(0, 100)}`}`);
      this.judge(t);
    };
    try {
      p.then(
        (value) => done({ ok: true, value }),
        (err: unknown) => done({ ok: false, err }),
      );
    } catch (e) {
      this.fail(`${t.label}: then() threw ${String(e)}`);
    }
  }

  /** Checks an outcome against the model. */
  private judge(t: Tracked): void {
    const o = t.outcome!;
    const x = t.expect;
    if (o.ok) {
      if (t.cancelled) return this.fail(`${t.label}: fulfilled although cancel() returned true`);
      if (!x.ok) return this.fail(`${t.label}: fulfilled, the model expected rejection ${x.code}`);
      const d = x.check ? x.check(o.value) : diff(o.value, x.value, 'result');
      if (d) return this.fail(`${t.label}: result differs from the model: ${d}`);
      const a = t.after?.();
      if (a) this.fail(`${t.label}: ${a}`);
      return;
    }
    if (!x.ok && x.core0Raw !== undefined && t.core === 0 && !t.cancelled && !(o.err instanceof Error)) {
      // On core 0 a thrown value reaches the handle as it was thrown (README), not as NON_ERROR_THROWN.
      if (o.err !== x.core0Raw.value) this.fail(`${t.label}: core 0 rejected with ${String(o.err)}, not the value thrown`);
      return;
    }
    const e = o.err as Error & { code?: unknown };
    if (!(e instanceof Error) || typeof e.code !== 'string') {
      return this.fail(`${t.label}: rejected with something that is not an Error with a string code: ${String(e)}`);
    }
    const code = e.code;
    if (t.cancelled) {
      if (code !== 'CANCELLED') this.fail(`${t.label}: cancel() returned true but it rejected ${code} (${e.message})`);
      return;
    }
    if (code === 'CANCELLED' || code === 'RUNTIME_SHUTDOWN') {
      if (this.shutdownAt < 0) this.fail(`${t.label}: rejected ${code} without cancel() and before any shutdown (${e.message})`);
      return;
    }
    if (code === 'CORE_CRASHED') {
      if (this.crashCore < 0 || (t.core !== this.crashCore && t.core !== -1)) this.fail(`${t.label}: CORE_CRASHED for core ${t.core}; crashed core ${this.crashCore} (${e.message})`);
      return;
    }
    if (x.ok) return this.fail(`${t.label}: rejected ${code} (${e.message}); the model expected a result`);
    if (code !== x.code) return this.fail(`${t.label}: rejected ${code} (${e.message}), the model expected ${x.code}`);
    if (x.messageHas !== undefined && !e.message.includes(x.messageHas)) this.fail(`${t.label}: message ${JSON.stringify(e.message)} lacks ${JSON.stringify(x.messageHas)}`);
    if (x.error !== undefined) {
      const d = diffError(e, x.error, 'error');
      if (d) this.fail(`${t.label}: thrown error differs: ${d}`);
    }
  }

  async settleAll(what: string, bound = SETTLE_BOUND_MS): Promise<void> {
    const until = Date.now() + bound;
    while (this.pending.length > 0 && Date.now() < until) await sleep(2);
    const left = this.pending;
    if (left.length > 0) {
      this.fail(`${what}: ${left.length} handle(s) still pending after ${bound} ms (hang): ${left.slice(0, 10).map((t) => t.label).join('; ')}`);
      for (const t of left) t.settled = true;
      throw new FuzzFailure('hang');
    }
  }
}

/** A rethrown Error keeps class name, message, code, cause and an AggregateError's errors. */
function diffError(got: Error, want: Error, path: string): string | null {
  if (got.name !== want.name) return `${path}: name ${got.name}, expected ${want.name}`;
  if (got.message !== want.message) return `${path}: message ${JSON.stringify(got.message.slice(0, 60))}, expected ${JSON.stringify(want.message.slice(0, 60))}`;
  const gc = (got as { code?: unknown }).code;
  const wc = (want as { code?: unknown }).code;
  if (wc !== undefined && gc !== wc) return `${path}: code ${String(gc)}, expected ${String(wc)}`;
  if ('cause' in want) {
    const c = (got as { cause?: unknown }).cause;
    if (want.cause instanceof Error) {
      if (!(c instanceof Error)) return `${path}.cause: ${String(c)}, expected an Error`;
      const d = diffError(c, want.cause, `${path}.cause`);
      if (d) return d;
    } else {
      const d = diff(c, structuredClone(want.cause), `${path}.cause`);
      if (d) return d;
    }
  }
  if (want instanceof AggregateError) {
    if (!(got instanceof AggregateError)) return `${path}: not an AggregateError`;
    if (got.errors.length !== want.errors.length) return `${path}.errors: ${got.errors.length}, expected ${want.errors.length}`;
    for (let i = 0; i < want.errors.length; i++) {
      const d = diffError(got.errors[i] as Error, want.errors[i] as Error, `${path}.errors[${i}]`);
      if (d) return d;
    }
  }
  return null;
}

let fileDir: string;
let seedFile: string;
let fileBytes: Uint8Array;

interface SeedConfig {
  backend: BackendName;
  cores: number;
  capacity: number | undefined;
  spinMs: number | undefined;
  awaitSpinMs: number | undefined;
  crash: null | { at: number; core: number; mode: 'throw' | 'exit' };
  shutdownAt: number; // op index of a midway shutdown, -1 for none
  graceMs: number;
  useBlockOn: boolean;
  ops: number;
}

function seedConfig(rng: Rng, seed: number, backends: BackendName[]): SeedConfig {
  const backend = ONLY ?? (seed % 3 === 0 || backends.length === 1 ? 'node' : rng.pick(backends.filter((b) => b !== 'node')));
  const cores = rng.int(2, 4);
  const ops = rng.int(6, 40);
  return {
    backend,
    cores,
    capacity: rng.pick([undefined, undefined, 1, 2, 4, 16]),
    spinMs: rng.pick([undefined, 0]),
    awaitSpinMs: rng.pick([undefined, 0]),
    crash: rng.chance(0.25) ? { at: rng.int(0, ops - 1), core: rng.int(1, cores - 1), mode: rng.pick(['throw', 'exit'] as const) } : null,
    shutdownAt: rng.chance(0.35) ? rng.int(0, ops) : -1,
    graceMs: rng.pick([0, 0, 1, 5, 30]),
    useBlockOn: rng.chance(0.25),
    ops,
  };
}

async function runSeed(ctx: Ctx, backends: BackendName[]): Promise<void> {
  const rng = new Rng(ctx.seed);
  const cfg = seedConfig(rng, ctx.seed, backends);
  ctx.note(`config ${JSON.stringify(cfg)}`);
  const fdBase = fdCount();
  const fdsBefore = fdTable();
  const mc = new MultiCoreRuntime({
    cores: cfg.cores,
    pin: false,
    backend: cfg.backend,
    workerExitTimeoutMs: WORKER_EXIT_MS,
    ...(cfg.capacity !== undefined ? { crossCpuChannelCapacity: cfg.capacity } : {}),
    ...(cfg.spinMs !== undefined ? { spinMs: cfg.spinMs } : {}),
    ...(cfg.awaitSpinMs !== undefined ? { awaitSpinMs: cfg.awaitSpinMs } : {}),
  });
  const workers = (mc as unknown as { workers: Array<{ threadId: number; once(ev: 'exit', f: () => void): void } | null> }).workers;
  let workersExited = 0;
  for (const w of workers) w?.once('exit', () => workersExited++);
  mc.onCoreCrash = (core, err) => {
    ctx.note(`onCoreCrash(${core}, ${String(err?.message).slice(0, 80)})`);
    ctx.crashes.push(core);
  };
  const effects = new Int32Array(new SharedArrayBuffer(4 * 4096));
  let nextSlot = 0;
  let shutdownP: Promise<void> | null = null;
  const waits: Array<Promise<unknown>> = [];
  let opNo = 0;

  /** spawn / spawnOn / broadcast (by `how`) of fn(args) with the model's expectation. */
  const issue = (r: Rng, name: string, fn: (...a: never[]) => unknown, args: unknown[], expect: Expect, opts: { after?: () => string | null; cancel?: boolean; noBroadcast?: boolean; core?: number } = {}): Tracked | null => {
    const n = opNo++;
    const roll = r.int(0, 9);
    const how = opts.core !== undefined ? 'spawnOn' : roll < 3 ? 'spawn' : roll === 3 && !opts.noBroadcast ? 'broadcast' : 'spawnOn';
    const core = opts.core ?? r.int(0, cfg.cores - 1);
    const label = `#${n} ${name} ${how}${how === 'spawnOn' ? `(${core})` : ''}`;
    const stopped = shutdownP !== null;
    if (how === 'broadcast') {
      let p: Promise<unknown[]>;
      try {
        p = mc.broadcast(fn as (...a: unknown[]) => unknown, ...args);
      } catch (e) {
        ctx.fail(`${label}: broadcast threw ${String(e)}`);
        return null;
      }
      ctx.note(label);
      const bx: Expect = stopped
        ? { ok: false, code: 'RUNTIME_SHUTDOWN' }
        : expect.ok
          ? { ok: true, value: null, check: (v) => (Array.isArray(v) && v.length === cfg.cores ? (v.map((x, i) => (expect.check ? expect.check(x) : diff(x, expect.value, `result[${i}]`))).find((d) => d) ?? null) : `broadcast result ${String(v)} is not one per core`) }
          : expect;
      const bt: Tracked = { label, core: -1, h: null, expect: bx, cancelled: false, settled: false, after: opts.after };
      ctx.follow(bt, p);
      return bt;
    }
    let h: CoreTaskHandle<unknown>;
    const knownCrashed = ctx.crashes.slice();
    try {
      h = how === 'spawn' ? mc.spawn(fn as (...a: unknown[]) => unknown, ...args) : mc.spawnOn(core, fn as (...a: unknown[]) => unknown, ...args);
    } catch (e) {
      const code = (e as { code?: string })?.code;
      ctx.note(`${label} threw ${code}`);
      ctx.count(`${name} threw ${code}`);
      if (!stopped || code !== 'RUNTIME_SHUTDOWN') ctx.fail(`${label}: threw ${code} (${(e as Error)?.message})${stopped ? '' : ' before shutdown'}`);
      return null;
    }
    if (stopped) ctx.fail(`${label}: did not throw RUNTIME_SHUTDOWN after shutdown began`);
    if (how === 'spawn' && knownCrashed.includes(h.core)) ctx.fail(`${label}: spawn placed the task on core ${h.core}, known crashed`);
    ctx.note(`${label} -> id ${h.id} on core ${h.core}`);
    const t: Tracked = { label: `${label}[core ${h.core}]`, core: h.core, h, expect, cancelled: false, settled: false, after: opts.after };
    ctx.follow(t, h);
    if (opts.cancel === false || !r.chance(0.3)) return t;
    // Cancel at some moment: same tick (before it starts), later, or after it settled.
    const afterSettle = r.chance(0.25);
    const when = r.pick(WHENS);
    const ms = r.int(0, 8);
    const doCancel = (): void => {
      const doneBefore = h.done;
      const ret = h.cancel(`fuzz cancel of ${label}`);
      ctx.note(`cancel ${label} (${afterSettle ? 'after settle' : when}) -> ${ret}${doneBefore ? ' (was done)' : ''}`);
      if (ret === doneBefore) ctx.fail(`${label}: cancel() returned ${ret} while done was ${doneBefore}`);
      if (!h.done) ctx.fail(`${label}: not done after cancel()`);
      if (ret) t.cancelled = true;
      if (h.cancel() !== false) ctx.fail(`${label}: a second cancel() returned true`);
    };
    if (afterSettle) waits.push(Promise.resolve(h).then(doCancel, doCancel));
    else waits.push(at(when, ms, doCancel));
    return t;
  };

  const oneOp = (r: Rng): void => {
    const k = r.int(0, 99);
    if (k < 10) {
      const v = rvalue(r, 0);
      issue(r, 'echo', echo, [v], cloneOrCode(v, 'INVALID_ARGUMENT'));
    } else if (k < 16) {
      const v = rvalue(r, 0);
      const tag = rstr(r);
      issue(r, 'shape', shape, [v, tag], cloneOrCode(v, 'INVALID_ARGUMENT').ok ? { ok: true, value: structuredClone(shape(structuredClone(v), tag)) } : { ok: false, code: 'INVALID_ARGUMENT' });
    } else if (k < 24) {
      const v = rvalue(r, 1);
      const ms = r.int(0, 15);
      issue(r, 'asyncEcho', asyncEcho, [v, ms], cloneOrCode(v, 'INVALID_ARGUMENT'));
    } else if (k < 28) {
      const v = r.int(0, 1000);
      issue(r, 'busy', busy, [r.int(0, 15), v], { ok: true, value: v });
    } else if (k < 36) {
      const causeKind = r.int(0, 3);
      const d = {
        cls: r.pick(['Error', 'TypeError', 'RangeError', 'SyntaxError', 'URIError']),
        msg: rstr(r),
        code: r.chance(0.6) ? `E_FUZZ_${r.int(0, 99)}` : null,
        cause: causeKind === 1 ? rvalue(r, 2) : causeKind === 2 ? { deep: [1, 'x'] } : undefined,
        causeErr: causeKind === 3 ? rstr(r) : null,
        agg: r.chance(0.15) ? [rstr(r), rstr(r)] : null,
      };
      if (!cloneOrCode(d.cause, '').ok) d.cause = undefined;
      let want: Error;
      try {
        throwIt(d, 0);
        throw new Error('unreachable');
      } catch (e) {
        want = e as Error;
      }
      // No code: thrown plain Errors reach the handle as they were (code undefined): not "a string code".
      if (d.code === null) d.code = 'E_FUZZ';
      (want as Error & { code?: string }).code = d.code;
      issue(r, 'throw', throwIt, [d, r.pick([0, 0, 1, 3])], { ok: false, code: d.code, error: want });
    } else if (k < 40) {
      const msg = rstr(r);
      const cause = r.chance(0.5) ? rstr(r) : null;
      issue(r, 'returnError', returnError, [msg, cause], { ok: true, value: structuredClone(returnError(msg, cause)) });
    } else if (k < 43) {
      const v = r.pick([42, 'str', null, undefined, 1.5, true]);
      issue(r, 'throwNonError', throwNonError, [v, r.chance(0.5)], { ok: false, code: 'NON_ERROR_THROWN', core0Raw: { value: v } }, { noBroadcast: true });
    } else if (k < 46) {
      issue(r, 'badResult', badResult, [r.int(0, 3)], { ok: false, code: 'RESULT_NOT_CLONEABLE' });
    } else if (k < 49) {
      issue(r, 'badArg', echo, [unclonable(r)], { ok: false, code: 'INVALID_ARGUMENT' });
    } else if (k < 51) {
      // Reads a variable of its defining scope: not shippable (found where it runs).
      const outer = r.int(1, 9);
      issue(r, 'closure', (x: number) => x + outer, [1], { ok: false, code: 'TASK_NOT_SHIPPABLE', messageHas: 'outer' });
    } else if (k < 52) {
      issue(r, 'native', Math.max as never, [1, 2], { ok: false, code: 'TASK_NOT_SHIPPABLE' });
    } else if (k < 60) {
      const slot = nextSlot++ % effects.length;
      const val = r.int(1, 2 ** 30);
      issue(r, 'sabWrite', sabWrite, [effects, slot, val], { ok: true, value: 0 }, {
        noBroadcast: true,
        after: () => (Atomics.load(effects, slot) === val ? null : `SharedArrayBuffer slot ${slot} is ${Atomics.load(effects, slot)} on core 0, the task wrote ${val}`),
      });
    } else if (k < 64) {
      const n = r.pick([1, 8, 100, 5000]);
      const fill = r.int(0, 255);
      issue(r, 'sabMake', sabMake, [n, fill], {
        ok: true,
        value: null,
        check: (v) => {
          const o = v as { s: unknown; v: Uint8Array; again: unknown };
          if (!(o?.s instanceof SharedArrayBuffer)) return `s is ${Object.prototype.toString.call(o?.s)}, not a SharedArrayBuffer`;
          if (o.v.buffer !== o.s || o.again !== o.s) return 'the view and the second reference do not share the one SharedArrayBuffer';
          if (o.s.byteLength !== n || o.v.some((b) => b !== fill)) return 'contents differ';
          return null;
        },
      });
    } else if (k < 72) {
      const v = rvalue(r, 2);
      const x = cloneOrCode(v, 'INVALID_ARGUMENT');
      issue(r, 'cancellable', cancellable, [r.int(0, 30), v], x);
    } else if (k < 77) {
      const v = r.int(0, 99);
      issue(r, 'ignoresSignal', ignoresSignal, [r.int(0, 25), v], { ok: true, value: v });
    } else if (k < 79) {
      // Never settles by itself: always cancelled (or ended by the shutdown).
      const n = opNo;
      const t = issue(r, 'forever', forever, [], { ok: false, code: 'CANCELLED' }, { cancel: false, noBroadcast: true });
      if (t !== null && t.h !== null) {
        const h = t.h;
        waits.push(
          sleep(r.int(0, 20)).then(() => {
            const was = h.done;
            const ret = h.cancel();
            ctx.note(`cancel #${n} forever -> ${ret}`);
            if (ret === was) ctx.fail(`#${n}: cancel() returned ${ret} while done was ${was}`);
            if (ret) t.cancelled = true;
          }),
        );
      }
    } else if (k < 85) {
      const pos = r.int(0, fileBytes.length);
      const n = r.int(0, 9000);
      issue(r, 'readFile', readFileTask, [seedFile, pos, n], { ok: true, value: fileBytes.slice(pos, Math.min(fileBytes.length, pos + n)) });
    } else if (k < 90) {
      const kk = r.int(-5, 5);
      const xs = Array.from({ length: r.int(0, 6) }, () => r.int(-100, 100));
      const ci = r.chance(0.4) ? r.int(0, xs.length) : -1;
      const want = xs.map((x, i) => (i === ci ? 'CANCELLED' : x * kk));
      issue(r, 'nested', nestedTask, [kk, xs, ci], {
        ok: true,
        value: null,
        check: (v) => {
          const o = v as { core: number; out: unknown[] };
          return diff(o?.out, want, 'out') ?? (typeof o.core === 'number' ? null : 'no core');
        },
      });
    } else if (k < 93) {
      const v = r.int(0, 9);
      const t = issue(r, 'whoAmI', whoAmI, [v], { ok: true, value: null, check: (x) => (Array.isArray(x) && x[1] === v && Number.isInteger(x[0]) && x[0] >= 0 && x[0] < cfg.cores ? null : `got ${JSON.stringify(x)}`) });
      // The task ran on the core its handle names (set before it can settle: the result comes later).
      if (t !== null && t.core >= 0 && !t.settled) {
        const c = t.core;
        const old = t.expect as { ok: true; value: unknown; check: (v: unknown) => string | null };
        t.expect = { ok: true, value: null, check: (x) => old.check(x) ?? ((x as number[])[0] === c ? null : `ran on core ${(x as number[])[0]}, handle says ${c}`) };
      }
    } else if (k < 96) {
      // A burst of small tasks (ring backlog with small capacities).
      const n = r.int(5, 120);
      const core = r.int(0, cfg.cores - 1);
      const base = r.int(0, 1000);
      ctx.note(`burst of ${n} to core ${core}`);
      for (let i = 0; i < n; i++) issue(r, 'burst', (x: number) => x + 1, [base + i], { ok: true, value: base + i + 1 }, { core, cancel: i % 7 === 3 });
    } else {
      // Misuse: thrown synchronously, or rejected for broadcast.
      const label = `#${opNo++} misuse`;
      const stopped = shutdownP !== null;
      const m = r.int(0, 2);
      try {
        if (m === 0) mc.spawnOn(r.pick([-1, cfg.cores, 1.5, Number.NaN]), () => 1);
        else if (m === 1) mc.spawn(42 as unknown as () => number);
        else {
          ctx.follow({ label: `${label} broadcast(non-function)`, core: -1, h: null, expect: { ok: false, code: stopped ? 'RUNTIME_SHUTDOWN' : 'INVALID_ARGUMENT' }, cancelled: false, settled: false }, mc.broadcast(null as unknown as () => number));
          return;
        }
        ctx.fail(`${label}: did not throw`);
      } catch (e) {
        const code = (e as { code?: string })?.code;
        ctx.note(`${label} threw ${code}`);
        ctx.count(`misuse threw ${code}`);
        if (code !== (stopped ? 'RUNTIME_SHUTDOWN' : 'INVALID_ARGUMENT')) ctx.fail(`${label}: threw ${code}`);
      }
    }
  };

  const doShutdown = (graceMs: number): Promise<void> => {
    ctx.note(`shutdown({ graceMs: ${graceMs} }) with ${ctx.pending.length} handle(s) pending`);
    ctx.shutdownAt = Date.now();
    shutdownP = mc.shutdown({ graceMs });
    if (mc.shutdown({ graceMs: 1 }) !== shutdownP) ctx.fail('a second shutdown() returned another promise');
    const p = shutdownP.then(
      () => {
        ctx.note('shutdown resolved');
        const left = ctx.tracked.filter((t) => t.h !== null && !t.h.done);
        if (left.length > 0) ctx.fail(`shutdown resolved with ${left.length} handle(s) not done: ${left.slice(0, 5).map((t) => t.label).join('; ')}`);
      },
      (e: unknown) => ctx.fail(`shutdown rejected: ${String(e)}`),
    );
    return p;
  };

  const work = async (): Promise<void> => {
    for (let i = 0; i < cfg.ops; i++) {
      if (i === cfg.shutdownAt && shutdownP === null) waits.push(doShutdown(cfg.graceMs));
      if (cfg.crash !== null && i === cfg.crash.at && shutdownP === null) {
        ctx.crashCore = cfg.crash.core;
        ctx.note(`crash core ${cfg.crash.core} (${cfg.crash.mode})`);
        issue(rng.sub(), 'crash', crashFn, [cfg.crash.mode], { ok: false, code: 'CORE_CRASHED' }, { core: cfg.crash.core, cancel: false });
      }
      oneOp(rng.sub());
      const w = pause(rng);
      if (w) await w;
    }
  };

  try {
    if (cfg.useBlockOn) {
      ctx.note('blockOn');
      const root = mc.blockOn(async () => {
        await work();
        await Promise.all(waits);
        await ctx.settleAll('inside blockOn');
        return 'root done';
      });
      const v = await Promise.race([root.then((x) => x, (e: unknown) => e), sleep(SEED_BOUND_MS).then(() => 'blockOn hang')]);
      if (v !== 'root done') {
        // A shutdown midway cancels the root task (it stops its own spawns with RUNTIME_SHUTDOWN).
        const code = (v as { code?: string })?.code;
        if (!(ctx.shutdownAt >= 0 && (code === 'CANCELLED' || code === 'RUNTIME_SHUTDOWN'))) ctx.fail(`blockOn: ${String(v)}`);
      }
      if (shutdownP === null) ctx.shutdownAt = Date.now();
      await Promise.all(waits);
      await ctx.settleAll('after blockOn');
    } else {
      await work();
      await Promise.all(waits);
      if (shutdownP === null) {
        // Everything issued settles before the shutdown (no shutdown: nothing may be cut off)...
        // except tasks of a crashed core, which settle too. Sometimes shut down with work in flight.
        if (rng.chance(0.6)) await ctx.settleAll('before the final shutdown');
        await doShutdown(rng.pick([0, 10]));
      } else await shutdownP;
      await Promise.all(waits);
      await ctx.settleAll('after shutdown');
    }
  } catch (e) {
    if (!(e instanceof FuzzFailure)) ctx.fail(`threw: ${(e as Error)?.stack ?? String(e)}`);
    await mc.shutdown().catch(() => {});
  }
  // Crashes: exactly the injected one (it may have been overtaken by a shutdown).
  if (ctx.crashes.length > 1 || ctx.crashes.some((c) => c !== ctx.crashCore)) ctx.fail(`onCoreCrash calls ${JSON.stringify(ctx.crashes)}, injected ${ctx.crashCore}`);
  if (ctx.crashCore >= 0 && ctx.shutdownAt < 0 && ctx.crashes.length !== 1) ctx.fail(`crash of core ${ctx.crashCore} injected, onCoreCrash calls ${JSON.stringify(ctx.crashes)}`);
  for (const c of ctx.crashes) if (mc.stats().perCore[c]!.state !== 'crashed' || mc.stats().perCore[c]!.crash === undefined) ctx.fail(`core ${c}: stats() does not show its crash`);
  const states = mc.stats().perCore.map((c) => c.state);
  if (states.some((s) => s !== 'exited' && s !== 'crashed')) ctx.fail(`after shutdown the cores are ${states.join(',')}`);
  // Worker threads gone.
  const until = Date.now() + 3000;
  while ((workersExited < cfg.cores - 1 || workers.some((w) => w !== null && w.threadId !== -1)) && Date.now() < until) await sleep(2);
  if (workersExited < cfg.cores - 1 || workers.some((w) => w !== null && w.threadId !== -1)) ctx.fail(`after shutdown ${cfg.cores - 1 - workersExited} worker thread(s) did not exit`);
  let fds = fdCount();
  while (fds > fdBase && Date.now() < until + 2000) {
    await sleep(5);
    fds = fdCount();
  }
  if (fds > fdBase) {
    const extra = [...fdTable()].filter(([fd, what]) => fdsBefore.get(fd) !== what);
    // Node itself leaks the fd of an fs operation in flight on a worker that dies of an uncaught
    // exception (reproduced without miniss: a worker doing fs.promises.readFile or a first
    // import() when it throws): a crashed core's module loading leaves such a regular file open.
    // Not miniss's to close; noted, not failed. Sockets, eventfds, io_uring and pipes still fail.
    const nodeLeak = ([, what]: [string, string]): boolean => ctx.crashes.length > 0 && what.startsWith('/') && !what.startsWith('/dev/');
    // (This fuzzer found an epoll leak in @miniss/core: a close a task started while its core's
    // Runtime shut down could still be queued when the backend closed. Fixed there, with a
    // regression test in packages/core/test/fuzz-regressions.test.ts; no leak is tolerated here.)
    const ours = extra.filter((e) => !nodeLeak(e));
    const shown = extra.map(([fd, what]) => `${fd} -> ${what}`).join(', ');
    if (ours.length > 0 || extra.length === 0) ctx.fail(`fd leak: ${fds} open, ${fdBase} before the seed (new or changed: ${shown})`);
    else {
      ctx.note(`files left open by Node after the crash of a worker (not miniss's): ${shown}`);
      ctx.count('known: fd left open by Node on a crashed worker');
    }
  }
}

// ------------------------------------------------------------------------------------------------

const backends = (['io_uring', 'epoll', 'node'] as BackendName[]).filter((b) => probeBackend(b).ok);

let current: Ctx | null = null;
const onUnhandled = (e: unknown): void => {
  current?.fail(`unhandled rejection: ${(e as Error)?.stack ?? String(e)}`);
};
const onWarning = (w: Error): void => {
  if (w.name === 'MinissUnobservedTaskError' || w.name === 'MinissCoreCrash') current?.fail(`process warning ${w.name}: ${w.message.slice(0, 200)}`);
};

beforeAll(() => {
  fileDir = mkdtempSync(join(tmpdir(), 'miniss-mcfuzz-'));
  seedFile = join(fileDir, 'data.bin');
  fileBytes = new Uint8Array(20000);
  for (let i = 0; i < fileBytes.length; i++) fileBytes[i] = (i * 31 + (i >> 8)) & 255;
  writeFileSync(seedFile, fileBytes);
  process.on('unhandledRejection', onUnhandled);
  process.on('warning', onWarning);
});
afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
  process.off('warning', onWarning);
  rmSync(fileDir, { recursive: true, force: true });
});

describe('MultiCoreRuntime sequence fuzzer', () => {
  it(
    `${SEEDS} seed(s) from ${BASE} (${ONLY ?? backends.join('/')}): handles settle once as the model says, nothing leaks`,
    async () => {
      const t0 = Date.now();
      const outcomes = new Map<string, number>();
      const failed: string[] = [];
      for (let seed = BASE; seed < BASE + SEEDS; seed++) {
        const ctx = new Ctx(seed);
        current = ctx;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const watchdog = new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            ctx.fail(`the seed did not finish within ${SEED_BOUND_MS} ms; still pending: ${ctx.pending.slice(0, 20).map((t) => t.label).join('; ')}`);
            resolve();
          }, SEED_BOUND_MS);
        });
        const ts = Date.now();
        await Promise.race([runSeed(ctx, backends), watchdog]);
        clearTimeout(timer);
        await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
        current = null;
        if (Date.now() - ts > 3000) console.log(`multicore fuzzer: seed ${seed} took ${Date.now() - ts} ms`);
        for (const [k, v] of ctx.outcomes) outcomes.set(k, (outcomes.get(k) ?? 0) + v);
        if (VERBOSE || ctx.failures.length > 0) {
          const header = `multicore sequence fuzzer: seed ${seed}: ${ctx.failures.length} failure(s)\nreplay: MINISS_FUZZ_SEED=${seed}${ONLY ? ` MINISS_FUZZ_BACKEND=${ONLY}` : ''} npx vitest run packages/multicore/test/fuzz-sequences.test.ts`;
          console.log(`${header}\n${ctx.failures.map((f) => `  * ${f}`).join('\n')}\n--- operation log ---\n${ctx.log.join('\n')}`);
          if (ctx.failures.length > 0) {
            failed.push(`seed ${seed}: ${ctx.failures.slice(0, 3).join(' | ')}`);
            if (SEEDS <= 50 || failed.length >= 5) break;
          }
        }
      }
      // A new runtime works after all of that.
      const mc = new MultiCoreRuntime({ cores: 2, pin: false });
      expect(await mc.blockOn(() => mc.broadcast((x: number) => x * 2, 21))).toEqual([42, 42]);
      if (failed.length > 0) expect.fail(`multicore sequence fuzzer: ${failed.length} failing seed(s) (logs above):\n${failed.join('\n')}`);
      const calls = [...outcomes.values()].reduce((a, b) => a + b, 0);
      console.log(
        `multicore sequence fuzzer: ${SEEDS} seeds from ${BASE}, ${calls} outcomes, ${((Date.now() - t0) / 1000).toFixed(1)} s` +
          (VERBOSE || SEEDS > 50 ? `\n  ${[...outcomes].sort().map(([k, v]) => `${k}: ${v}`).join('\n  ')}` : ''),
      );
    },
    Math.max(60_000, SEEDS * (UNDER_ASAN ? 8000 : 4000) + SEED_BOUND_MS),
  );
});
