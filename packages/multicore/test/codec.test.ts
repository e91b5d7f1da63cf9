import { describe, expect, it } from 'vitest';
import { RuntimeError } from '@miniss/core';
import { make, shutDownAfterEach, within } from './helpers.js';

shutDownAfterEach();

/** The rejection reason of `p` (bounded), or a failure if it resolved. */
async function rejection(p: PromiseLike<unknown>, what: string): Promise<Error & Record<string, unknown>> {
  return within(
    Promise.resolve(p).then(
      (v) => {
        throw new Error(`${what}: resolved with ${String(v)}`);
      },
      (e: Error & Record<string, unknown>) => e,
    ),
    2000,
    what,
  );
}

describe('strings across cores', () => {
  it('keeps lone surrogates (UTF-8 cannot carry them) as results of core 1 and core 0 and as arguments', async () => {
    const mc = make({ cores: 2, pin: false });
    const strings = ['\uD800abc', 'x\uDC00', '\uDC00\uD800', 'ok \uD83D\uDE00 héllo', '', 'plain'];
    for (const core of [1, 0]) {
      for (const s of strings) {
        // The result is made on the core (a string result takes the codec's text path).
        const made = await within(mc.spawnOn(core, (codes: number[]) => String.fromCharCode(...codes), Array.from({ length: s.length }, (_, i) => s.charCodeAt(i))), 2000, 'made');
        expect(made).toBe(s);
        // As the only argument, and returned as it came.
        expect(await within(mc.spawnOn(core, (x: string) => x, s), 2000, 'echo')).toBe(s);
      }
    }
  });
});

describe('values next to a bare SharedArrayBuffer', () => {
  it('travel exactly as they do without one: holes, array properties, boxed primitives, an own __proto__ key; the SAB is shared', async () => {
    const mc = make({ cores: 2, pin: false });
    const sab = new SharedArrayBuffer(8);
    const sparse = [1, , 3]; // eslint-disable-line no-sparse-arrays
    const withProps = Object.assign([1, 2], { extra: 'x' });
    const protoKey = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as Record<string, unknown>;
    const value = { sab, again: sab, view: new Int32Array(sab, 4, 1), sparse, withProps, num: new Number(5), str: new String('s'), protoKey, map: new Map([[{ k: 1 }, sab]]) };
    const r = await within(
      mc.spawnOn(1, (v: typeof value) => {
        new Int32Array(v.sab)[0] = 42; // written through the shared memory
        return {
          identity: [v.again === v.sab, v.view.buffer === v.sab, [...v.map.values()][0] === v.sab, v.sab instanceof SharedArrayBuffer],
          v,
        };
      }, value),
      2000,
      'round trip',
    );
    expect(r.identity).toEqual([true, true, true, true]);
    expect(new Int32Array(sab)[0]).toBe(42);
    const v = r.v;
    expect(v.sparse.length).toBe(3);
    expect(1 in v.sparse).toBe(false);
    expect(Array.from(v.withProps)).toEqual([1, 2]);
    expect(v.withProps.extra).toBe('x');
    expect(v.num).toBeInstanceOf(Number);
    expect(v.num.valueOf()).toBe(5);
    expect(v.str).toBeInstanceOf(String);
    expect(v.str.valueOf()).toBe('s');
    expect(Object.hasOwn(v.protoKey, '__proto__')).toBe(true);
    expect(v.protoKey.a).toBe(1);
    expect(Object.getPrototypeOf(v.protoKey)).toBe(Object.prototype);
    // The SAB came back to core 0: a new object over the same memory.
    expect(new Int32Array(v.sab)[0]).toBe(42);
    expect(v.again).toBe(v.sab);
    expect(v.view.buffer).toBe(v.sab);
  });

  it('what structured clone refuses is refused with a bare SAB too (INVALID_ARGUMENT), not turned into {}', async () => {
    const mc = make({ cores: 2, pin: false });
    const sab = new SharedArrayBuffer(8);
    for (const bad of [new WeakMap(), Promise.resolve(1), new WeakRef({})]) {
      const e = await rejection(mc.spawnOn(1, (x: unknown) => typeof x, { sab, bad }), String(bad));
      expect(e).toBeInstanceOf(RuntimeError);
      expect(e.code).toBe('INVALID_ARGUMENT');
    }
    // As a result as well.
    const e = await rejection(mc.spawnOn(1, () => ({ s: new SharedArrayBuffer(4), w: new WeakMap() })), 'result');
    expect(e.code).toBe('RESULT_NOT_CLONEABLE');
  });
});

describe('views over a growable SharedArrayBuffer', () => {
  it('a length-tracking view keeps tracking the length; a fixed-length one keeps its length', async () => {
    const mc = make({ cores: 2, pin: false });
    const gsab = new SharedArrayBuffer(8, { maxByteLength: 64 });
    const tracking = new Uint8Array(gsab);
    const trackingFrom2 = new Uint16Array(gsab, 2);
    const fixed = new Uint8Array(gsab, 0, 8); // ends at the buffer's end, but has a length
    const dv = new DataView(gsab);
    const r = await within(
      mc.spawnOn(1, (b: SharedArrayBuffer, t: Uint8Array, t2: Uint16Array, f: Uint8Array, d: DataView) => {
        b.grow(32);
        return [b.growable, b.byteLength, t.length, t2.length, t2.byteOffset, f.length, d.byteLength];
      }, gsab, tracking, trackingFrom2, fixed, dv),
      2000,
      'grow on core 1',
    );
    expect(r).toEqual([true, 32, 32, 15, 2, 8, 32]);
    expect(tracking.length).toBe(32);
    // A tracking view made on core 1 tracks on core 0.
    const back = await within(
      mc.spawnOn(1, () => new Float64Array(new SharedArrayBuffer(8, { maxByteLength: 80 }))),
      2000,
      'tracking view result',
    );
    expect(back.length).toBe(1);
    (back.buffer as SharedArrayBuffer).grow(80);
    expect(back.length).toBe(10);
  });
});

describe('errors from another core', () => {
  it('carry a cause that is not an Error as its structured clone (else its description); shared memory in it stays shared', async () => {
    const mc = make({ cores: 2, pin: false });
    const e1 = await rejection(mc.spawnOn(1, () => {
      throw new Error('x', { cause: 'just a string' });
    }), 'string cause');
    expect(e1.cause).toBe('just a string');
    const e2 = await rejection(mc.spawnOn(1, () => {
      throw new Error('x', { cause: { status: 404, when: new Date(0), big: 10n, list: [1, , 3] } }); // eslint-disable-line no-sparse-arrays
    }), 'object cause');
    const c2 = e2.cause as { status: number; when: Date; big: bigint; list: number[] };
    expect(c2.status).toBe(404);
    expect(c2.when).toBeInstanceOf(Date);
    expect(c2.big).toBe(10n);
    expect(1 in c2.list).toBe(false);
    const e3 = await rejection(mc.spawnOn(1, () => {
      throw new TypeError('x', { cause: function namedCause() {} });
    }), 'uncloneable cause');
    expect(e3).toBeInstanceOf(TypeError);
    expect(e3.cause).toBe('function namedCause');
    expect(await rejection(mc.spawnOn(1, () => {
      throw new Error('x', { cause: 0 });
    }), 'zero cause')).toMatchObject({ cause: 0 });
    // A cause holding a SharedArrayBuffer shares it.
    const sab = new SharedArrayBuffer(4);
    const e4 = await rejection(mc.spawnOn(1, (s: SharedArrayBuffer) => {
      throw new Error('x', { cause: { view: new Int32Array(s) } });
    }, sab), 'shared cause');
    (e4.cause as { view: Int32Array }).view[0] = 9;
    expect(new Int32Array(sab)[0]).toBe(9);
    // Error causes still come back as errors.
    const e5 = await rejection(mc.spawnOn(1, () => {
      throw new Error('outer', { cause: new RangeError('inner') });
    }), 'error cause');
    expect(e5.cause).toBeInstanceOf(RangeError);
    expect((e5.cause as Error).message).toBe('inner');
  });

  it("carry an AggregateError as one, with its errors (Errors and other values) and its cause", async () => {
    const mc = make({ cores: 2, pin: false });
    const agg = await rejection(mc.spawnOn(1, () => {
      const inner = new RangeError('b', { cause: 'deep' });
      (inner as RangeError & { code?: string }).code = 'E_B';
      throw new AggregateError([new Error('a'), inner, 'str', { n: 1 }], 'agg', { cause: 'why' });
    }), 'aggregate');
    expect(agg).toBeInstanceOf(AggregateError);
    expect(agg.message).toBe('agg');
    expect(agg.cause).toBe('why');
    const errors = (agg as unknown as AggregateError).errors;
    expect(errors).toHaveLength(4);
    expect(errors[0]).toBeInstanceOf(Error);
    expect(errors[0].message).toBe('a');
    expect(errors[1]).toBeInstanceOf(RangeError);
    expect(errors[1]).toMatchObject({ message: 'b', code: 'E_B', cause: 'deep' });
    expect(errors.slice(2)).toEqual(['str', { n: 1 }]);
  });
});
