import { describe, expect, it } from 'vitest';
import { MultiCoreRuntime, RingReader, RingWriter, SpscRing, createRing } from '@miniss/multicore';

describe('SPSC byte ring (the transport)', () => {
  it('carries records of every size across the wrap, in order; a full ring refuses without writing', () => {
    const sab = createRing(8); // 512 data bytes
    const w = new RingWriter(sab);
    const r = new RingReader(sab);
    let sent = 0;
    let got = 0;
    for (let round = 0; round < 2000; round++) {
      // Write until full (or 7 records), publish once, read everything back.
      let k = 0;
      for (; k < 7; k++) {
        const len = (sent * 13) % 100;
        const off = w.begin(1 + (sent % 5), sent & 0xff, sent & 0xffff, sent, sent * 3, len);
        if (off < 0) break;
        for (let b = 0; b < len; b++) w.u8[off + b] = (sent + b) & 0xff;
        sent++;
      }
      expect(r.hasData()).toBe(false); // nothing is visible before publish
      w.publish();
      while (r.next()) {
        const len = (got * 13) % 100;
        expect([r.type, r.flags, r.kind, r.id, r.aux, r.bodyLen]).toEqual([1 + (got % 5), got & 0xff, got & 0xffff, got, got * 3, len]);
        for (let b = 0; b < len; b++) if (r.u8[r.bodyOffset + b] !== ((got + b) & 0xff)) throw new Error(`record ${got} byte ${b}`);
        got++;
      }
      r.release();
    }
    expect(got).toBe(sent);
    expect(sent).toBeGreaterThan(10_000);
    // Full: with the reader not releasing, begin() returns -1 and writes nothing.
    let n = 0;
    while (w.begin(1, 0, 0, n, 0, 8) >= 0) n++;
    expect(n).toBe(Math.floor(512 / 24)); // 24-byte records in 512 bytes
    w.publish();
    let seen = 0;
    while (r.next()) seen++;
    expect(seen).toBe(n);
    r.release();
  });
});

describe('RingWriter.begin limits', () => {
  it('throws INVALID_ARGUMENT for a record that could never fit (more than maxRecord) or a bad length; one of maxRecord fits at any position', () => {
    const sab = createRing(1); // 256 data bytes, maxRecord 128
    const w = new RingWriter(sab);
    const r = new RingReader(sab);
    expect(w.maxRecord).toBe(128);
    for (const bad of [300, 113, 256, -1, 1.5, Number.NaN]) {
      expect(() => w.begin(1, 0, 0, 1, 0, bad)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(r.hasData()).toBe(false); // nothing was written
    // A full ring says -1 (room comes back once the consumer frees it)...
    let n = 0;
    while (w.begin(1, 0, 0, n, 0, 112) >= 0) n++;
    expect(n).toBe(2);
    expect(w.begin(1, 0, 0, n, 0, 112)).toBe(-1);
    w.publish();
    while (r.next());
    r.release();
    // ...and a maxRecord-sized record fits wherever the tail stands once the ring is empty (each
    // round moves the tail by 128 + 24 bytes: it visits every 8-byte position of the ring).
    for (let k = 0; k < 32; k++) {
      expect(w.begin(1, 0, 0, k, 0, 112)).toBeGreaterThanOrEqual(0);
      w.publish();
      expect(r.next()).toBe(true);
      expect(r.bodyLen).toBe(112);
      r.release();
      // Move the tail on by a small record.
      expect(w.begin(2, 0, 0, 0, 0, 8)).toBeGreaterThanOrEqual(0);
      w.publish();
      while (r.next());
      r.release();
    }
  });
});

describe('SpscRing argument checks', () => {
  it('popBatch: a typed array takes at most its length (the rest stays queued); a bad max throws and takes nothing', () => {
    const s = new SpscRing(8);
    for (let i = 1; i <= 6; i++) s.push(i);
    const out = new Float64Array(2);
    expect(s.popBatch(out, 6)).toBe(2);
    expect(Array.from(out)).toEqual([1, 2]);
    expect(s.size).toBe(4);
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '2']) {
      expect(() => s.popBatch(new Float64Array(4), bad as number)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(() => s.popBatch(new DataView(new ArrayBuffer(8)) as unknown as Float64Array)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(s.size).toBe(4);
    const arr: number[] = [];
    expect(s.popBatch(arr, 10)).toBe(4); // an array grows
    expect(arr).toEqual([3, 4, 5, 6]);
    expect(s.pop()).toBeUndefined();
  });

  it('pushBatch: from/to outside 0..values.length, reversed or not integers throw and push nothing', () => {
    const s = new SpscRing(8);
    for (const [from, to] of [
      [0, 5],
      [-1, 1],
      [2, 1],
      [0.5, 2],
      [0, Number.NaN],
    ] as const) {
      expect(() => s.pushBatch([1, 2], from, to)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(s.size).toBe(0);
    expect(s.pushBatch([1, 2, 3], 1)).toBe(2);
    expect(s.pushBatch([1, 2, 3], 3, 3)).toBe(0);
    const out = new Float64Array(8);
    expect(Array.from(out.subarray(0, s.popBatch(out)))).toEqual([2, 3]);
  });
});

describe('SpscRing (typed float64 channel)', () => {
  it('rounds capacity up, refuses when full, keeps order; attach validates its buffer', () => {
    const ring = new SpscRing(5);
    expect(ring.capacity).toBe(8);
    for (let i = 0; i < 8; i++) expect(ring.push(i)).toBe(true);
    expect(ring.push(99)).toBe(false);
    const view = SpscRing.attach(ring.buffer);
    expect(view.pop()).toBe(0);
    const out = new Float64Array(16);
    expect(view.popBatch(out)).toBe(7);
    expect(Array.from(out.subarray(0, 7))).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(view.pop()).toBeUndefined();
    expect(() => new SpscRing(0)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => SpscRing.attach(new SharedArrayBuffer(100))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it('streams 200k values from core 0 to a consumer task on core 1 without loss', async () => {
    const mc = new MultiCoreRuntime({ cores: 2, pin: false });
    try {
      const ring = new SpscRing(1024);
      const N = 200_000;
      // Built with `new Function` so the test runner leaves its import() alone (shipped by source).
      const consume = new Function(
        `return async (sab, n) => {
          const { SpscRing } = await import('@miniss/multicore');
          const r = SpscRing.attach(sab);
          const out = new Float64Array(128);
          let got = 0, sum = 0, last = -1, ordered = true;
          const deadline = Date.now() + 10000;
          while (got < n && Date.now() < deadline) {
            const k = r.popBatch(out);
            for (let j = 0; j < k; j++) { if (out[j] !== last + 1) ordered = false; last = out[j]; sum += out[j]; }
            got += k;
            if (k === 0) await new Promise((res) => setImmediate(res));
          }
          return { got, sum, ordered };
        }`,
      )() as (sab: SharedArrayBuffer, n: number) => Promise<{ got: number; sum: number; ordered: boolean }>;
      const consumer = mc.spawnOn(1, consume, ring.buffer, N);
      const batch = new Float64Array(100);
      const deadline = Date.now() + 10000;
      for (let i = 0; i < N && Date.now() < deadline; ) {
        for (let j = 0; j < 100; j++) batch[j] = i + j;
        let done = 0;
        while (done < 100 && Date.now() < deadline) {
          const k = ring.pushBatch(batch, done, 100);
          done += k;
          if (k === 0) await new Promise((res) => setImmediate(res));
        }
        i += 100;
      }
      expect(await consumer).toEqual({ got: N, sum: (N * (N - 1)) / 2, ordered: true });
    } finally {
      await mc.shutdown();
    }
  });
});
