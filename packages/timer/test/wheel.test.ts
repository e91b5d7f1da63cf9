import { describe, expect, it } from 'vitest';
import { MAX_TIMERS, ManualClock, TimerWheel, WHEEL_SPAN, type TimerId } from '@miniss/timer';
import { rng } from './helpers.js';

/**
 * Deterministic tests of the wheel alone, driven by a ManualClock and explicit ticks: no runtime,
 * no real time. Every firing is checked against the entry's own deadline.
 */

/** A target that records the tick at which it fired. */
function recorder(wheel: TimerWheel, log: Array<[string, number]>, name: string): () => void {
  return () => log.push([name, wheel.elapsed]);
}

describe('TimerWheel: placement and firing', () => {
  it('fires each timer exactly at its tick when polled tick by tick, across every level', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock });
    const deadlines = [1, 2, 63, 64, 65, 127, 128, 4095, 4096, 4097, 5000, 262143, 262144, 300_001];
    const fired = new Map<number, number>();
    for (const d of deadlines) wheel.insertAt(d, () => fired.set(d, wheel.elapsed));
    expect(wheel.size).toBe(deadlines.length);
    for (let t = 1; t <= 300_001; t++) wheel.poll(t);
    expect(wheel.size).toBe(0);
    for (const d of deadlines) expect(fired.get(d), `deadline ${d}`).toBe(d);
  });

  it('fires in deadline order when one poll covers a long jump (cascading through levels)', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const order: number[] = [];
    const ds = [70_000, 5, 4_100, 64, 1_000_000, 200, 63, 262_145];
    for (const d of ds) wheel.insertAt(d, () => order.push(d));
    expect(wheel.poll(2_000_000)).toBe(ds.length);
    expect(order).toEqual([...ds].sort((a, b) => a - b));
  });

  it('never fires early: polling just before the deadline fires nothing', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const rnd = rng(7);
    const entries: TimerId[] = [];
    for (let i = 0; i < 2000; i++) {
      const d = 1 + Math.floor(rnd() * 1_000_000);
      const id = wheel.insertAt(d, () => {
        expect(wheel.elapsed).toBeGreaterThanOrEqual(d);
      });
      entries.push(id);
    }
    // Walk time by the wheel's own next expiration, and one tick short of each deadline.
    let steps = 0;
    while (wheel.size > 0) {
      const next = wheel.nextExpiration();
      const minDeadline = Math.min(...entries.filter((id) => wheel.isActive(id)).map((id) => wheel.deadlineOf(id)));
      expect(next).toBeLessThanOrEqual(minDeadline);
      if (next - 1 > wheel.elapsed) expect(wheel.poll(next - 1)).toBe(0);
      wheel.poll(next);
      steps++;
    }
    expect(steps).toBeGreaterThan(0);
  });

  it('uses the occupied bitfield correctly at word edges (slots 0, 31, 32, 63)', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const log: Array<[string, number]> = [];
    for (const d of [31, 32, 63, 64 + 0, 64 * 32, 64 * 33, 64 * 63]) wheel.insertAt(d, recorder(wheel, log, `d${d}`));
    const seen: number[] = [];
    while (wheel.size > 0) {
      const n = wheel.nextExpiration();
      wheel.poll(n);
      seen.push(n);
    }
    expect(log.map(([, t]) => t)).toEqual([31, 32, 63, 64, 2048, 2112, 4032]);
    expect(seen.length).toBeGreaterThanOrEqual(7);
  });

  it('reuses freed indices with a new generation: stale ids are never confused with new timers', () => {
    const wheel = new TimerWheel({ clock: new ManualClock(), initialCapacity: 16 });
    let fires = 0;
    let id = -1;
    const ids = new Set<TimerId>();
    const target = () => {
      fires++;
      if (fires < 100) {
        id = wheel.insertAt(wheel.elapsed + 10, target);
        ids.add(id);
      }
    };
    id = wheel.insertAt(10, target);
    ids.add(id);
    const first = id;
    for (let t = 1; t <= 2000; t++) wheel.poll(t);
    expect(fires).toBe(100);
    expect(ids.size).toBe(100); // every re-arm got a fresh id
    expect(new Set([...ids].map((x) => x % MAX_TIMERS)).size).toBe(1); // all on one recycled index
    const late = wheel.insertAt(wheel.elapsed + 5, () => {});
    expect(wheel.cancel(first)).toBe(false); // a stale id of the same index
    expect(wheel.isActive(late)).toBe(true);
    expect(wheel.cancel(late)).toBe(true);
    for (const bad of [-1, NaN, 1.5, 2 ** 40, '3' as unknown as number]) expect(wheel.cancel(bad)).toBe(false);
  });

  it('grows its arrays past the initial capacity and keeps every timer', () => {
    const wheel = new TimerWheel({ clock: new ManualClock(), initialCapacity: 16 });
    const fired: number[] = [];
    for (let i = 0; i < 5000; i++) wheel.insertAt(1 + (i % 777), () => fired.push(i));
    expect(wheel.size).toBe(5000);
    wheel.poll(1000);
    expect(fired.length).toBe(5000);
  });

  it('a timer inserted by a callback, even one due now, never fires in that same poll', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    let inner = 0;
    wheel.insertAt(5, () => {
      wheel.insertAt(wheel.elapsed, () => inner++); // "now": becomes the next tick
    });
    expect(wheel.poll(5)).toBe(1);
    expect(inner).toBe(0);
    expect(wheel.poll(6)).toBe(1);
    expect(inner).toBe(1);
  });
});

describe('TimerWheel: cancellation', () => {
  it('cancel before its slot is reached, twice, and after firing', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    let fired = 0;
    const a = wheel.schedule(100, () => fired++);
    const b = wheel.schedule(100, () => fired++);
    expect(wheel.cancel(a)).toBe(true);
    expect(wheel.cancel(a)).toBe(false);
    expect(wheel.isActive(a)).toBe(false);
    wheel.poll(100);
    expect(fired).toBe(1);
    expect(wheel.cancel(b)).toBe(false);
    expect(wheel.size).toBe(0);
    expect(wheel.cancelled).toBe(1);
    expect(wheel.fired).toBe(1);
  });

  it('a callback can cancel another timer due in the same poll', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const log: string[] = [];
    let b = -1;
    wheel.insertAt(10, () => {
      log.push('a');
      expect(wheel.cancel(b)).toBe(true);
    });
    b = wheel.insertAt(10, () => log.push('b'));
    wheel.insertAt(11, () => log.push('c'));
    wheel.poll(20);
    expect(log).toEqual(['a', 'c']);
    expect(wheel.size).toBe(0);
  });

  it('empties the occupied bit when the last entry of a slot goes (nextExpiration moves on)', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const a = wheel.insertAt(10, () => {});
    wheel.insertAt(20, () => {});
    expect(wheel.nextExpiration()).toBe(10);
    wheel.cancel(a);
    expect(wheel.nextExpiration()).toBe(20);
  });

  it('reports an empty wheel and an earlier deadline to its driver hooks', () => {
    const events: string[] = [];
    const wheel = new TimerWheel({
      clock: new ManualClock(),
      onEarlier: (t) => events.push(`earlier ${t}`),
      onEmpty: () => events.push('empty'),
    });
    const a = wheel.schedule(50, () => {});
    const b = wheel.schedule(30, () => {});
    wheel.cancel(wheel.schedule(40, () => {})); // not earlier than 30: no event; not empty
    wheel.cancel(a);
    wheel.cancel(b);
    expect(events).toEqual(['earlier 50', 'earlier 30', 'empty']);
  });

  it('clear(reason) drops every entry and tells each one', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const reasons: Error[] = [];
    const target = { fire: () => {}, drop: (reason: Error) => reasons.push(reason) };
    for (const d of [1, 100, 10_000, 2 ** 40]) wheel.insertAt(d, target);
    wheel.insertAt(50, () => {}); // a plain function: dropped silently
    const why = new Error('shutdown');
    expect(wheel.clear(why)).toBe(5);
    expect(reasons).toEqual([why, why, why, why]);
    expect(wheel.size).toBe(0);
    expect(wheel.nextExpiration()).toBe(Infinity);
    expect(wheel.poll(2 ** 41)).toBe(0);
  });

  it('clear(reason) calls the onDrop of a function target (kept by reschedule); fire never calls it', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const log: string[] = [];
    wheel.insertAt(5, () => log.push('fired 5'), (r) => log.push(`dropped 5 ${r.message}`));
    const b = wheel.insertAt(70, () => log.push('fired 70'), (r) => log.push(`dropped 70 ${r.message}`));
    wheel.insertAt(80, () => log.push('fired 80')); // no onDrop: dropped silently
    expect(wheel.poll(10)).toBe(1);
    expect(wheel.reschedule(b, 5_000)).not.toBe(-1);
    expect(wheel.clear(new Error('bye'))).toBe(2);
    expect(log).toEqual(['fired 5', 'dropped 70 bye']);
    // Indices are reused: a new timer in a freed index has no stale onDrop.
    wheel.insertAt(100, () => log.push('fired 100'));
    expect(wheel.clear(new Error('again'))).toBe(1);
    expect(log).toEqual(['fired 5', 'dropped 70 bye']);
  });

  it('an emptied wheel hands out indices from 0 again, in order, and old ids stay stale', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const mask = 2 ** 24 - 1;
    const old = [10, 20, 30].map((d) => wheel.insertAt(d, () => {}));
    expect(old.map((id) => id & mask)).toEqual([0, 1, 2]);
    for (const k of [2, 0, 1]) expect(wheel.cancel(old[k]!)).toBe(true);
    let fired = 0;
    const fresh = [10, 20, 30].map((d) => wheel.insertAt(d, () => fired++));
    expect(fresh.map((id) => id & mask)).toEqual([0, 1, 2]); // not the free list's 1, 0, 2
    for (const id of old) {
      expect(wheel.isActive(id)).toBe(false);
      expect(wheel.cancel(id)).toBe(false);
    }
    expect(fresh.every((id) => wheel.isActive(id))).toBe(true);
    expect(wheel.poll(30)).toBe(3);
    expect(fired).toBe(3);
    // Emptied by firing too: the next timer takes index 0 with a newer id than any before.
    const again = wheel.insertAt(40, () => {});
    expect(again & mask).toBe(0);
    expect(again).not.toBe(fresh[0]);
    expect(again).not.toBe(old[0]);
    expect(wheel.cancel(fresh[0]!)).toBe(false);
    expect(wheel.isActive(again)).toBe(true);
  });

  it('poll(now, maxFire) fires at most maxFire; the rest stays due (hasDue, nextExpiration = now) and can still be cancelled', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const fired: number[] = [];
    const ids = Array.from({ length: 10 }, (_, k) => wheel.insertAt(5 + (k % 2), () => fired.push(k)));
    wheel.insertAt(100, () => fired.push(100));
    expect(wheel.poll(10, 4)).toBe(4);
    expect(wheel.hasDue).toBe(true);
    expect(wheel.nextExpiration()).toBe(10);
    expect(wheel.cancel(ids[9]!)).toBe(true); // due but not fired yet: still cancellable
    expect(wheel.poll(10, 4)).toBe(4); // same tick: the rest is fired anyway
    expect(wheel.poll(10)).toBe(1);
    expect(wheel.hasDue).toBe(false);
    expect(fired.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(wheel.nextExpiration()).toBe(64); // the level-1 slot holding tick 100 cascades at 64
    expect(wheel.poll(100)).toBe(1);
    expect(wheel.size).toBe(0);
  });

  it('a target that schedules enough timers to grow the arrays mid-poll does not disturb the rest of the firing list', () => {
    const wheel = new TimerWheel({ clock: new ManualClock(), initialCapacity: 16 });
    const fired: number[] = [];
    const later: number[] = [];
    for (let k = 0; k < 10; k++) {
      wheel.insertAt(3, () => {
        fired.push(k);
        if (k === 0) for (let j = 0; j < 5_000; j++) wheel.insertAt(10 + (j % 50), () => later.push(j));
        if (k === 1) wheel.cancel(cancelMe);
      });
    }
    const cancelMe = wheel.insertAt(3, () => fired.push(-1));
    expect(wheel.poll(3)).toBe(10);
    expect(fired.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(wheel.size).toBe(5_000);
    expect(wheel.poll(100)).toBe(5_000);
    expect(later.length).toBe(5_000);
    expect(wheel.size).toBe(0);
  });
});

describe('TimerWheel: far deadlines and wrap-around', () => {
  it('parks deadlines beyond the top level (> 2^36 ms) and fires them exactly on time', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const far = [WHEEL_SPAN - 1, WHEEL_SPAN, WHEEL_SPAN + 12_345, 3 * WHEEL_SPAN + 7, 2 ** 45 + 3];
    const fired: Array<[number, number]> = [];
    for (const d of far) wheel.insertAt(d, () => fired.push([d, wheel.elapsed]));
    let polls = 0;
    while (wheel.size > 0) {
      const n = wheel.nextExpiration();
      // The next expiration is never past the earliest remaining deadline.
      const remaining = far.filter((d) => !fired.some(([f]) => f === d));
      expect(n).toBeLessThanOrEqual(Math.min(...remaining));
      wheel.poll(n);
      polls++;
      expect(polls).toBeLessThan(10_000);
    }
    expect(fired).toEqual(far.map((d) => [d, d]));
  });

  it('keeps working when time crosses the 2^32 and 2^36 boundaries (wrap-around of every level)', () => {
    for (const start of [2 ** 32 - 100, WHEEL_SPAN - 100, 5 * WHEEL_SPAN - 3]) {
      const wheel = new TimerWheel({ clock: new ManualClock() });
      wheel.poll(start);
      expect(wheel.elapsed).toBe(start);
      const fired: Array<[number, number]> = [];
      const deltas = [1, 50, 99, 100, 101, 4096, 70_000, 2 ** 31, WHEEL_SPAN + 5];
      for (const k of deltas) wheel.insertAt(start + k, () => fired.push([start + k, wheel.elapsed]));
      // Step tick by tick across the boundary, then jump by next expirations.
      for (let t = start + 1; t <= start + 300; t++) wheel.poll(t);
      while (wheel.size > 0) wheel.poll(wheel.nextExpiration());
      expect(fired).toEqual(deltas.map((k) => [start + k, start + k]));
    }
  });

  it('matches a reference model under random inserts, cancels and polls (100k operations)', () => {
    const problems: string[] = [];
    let fires = 0;
    for (const seed of [1, 2, 3]) {
      const rnd = rng(seed);
      const clock = new ManualClock();
      const wheel = new TimerWheel({ clock });
      const live = new Map<TimerId, number>(); // id -> deadline
      const firedAt = new Map<TimerId, number>();
      let now = 0;
      for (let op = 0; op < 100_000; op++) {
        const r = rnd();
        if (r < 0.5) {
          // Mostly near deadlines, some far ones, a few beyond the wheel's span.
          const k = rnd();
          const delta = k < 0.7 ? 1 + Math.floor(rnd() * 300) : k < 0.97 ? 1 + Math.floor(rnd() * 10_000_000) : Math.floor(rnd() * 4 * WHEEL_SPAN);
          const when = now + Math.max(1, delta);
          let id = -1;
          id = wheel.insertAt(when, () => {
            fires++;
            firedAt.set(id, wheel.elapsed);
          });
          live.set(id, when);
        } else if (r < 0.7 && live.size > 0) {
          const it = live.keys();
          const skip = Math.floor(rnd() * Math.min(live.size, 20));
          for (let i = 0; i < skip; i++) it.next();
          const id = it.next().value as TimerId;
          if (!wheel.cancel(id)) problems.push(`seed ${seed} op ${op}: cancel of a waiting timer failed`);
          live.delete(id);
        } else {
          const k = rnd();
          const step = k < 0.8 ? Math.floor(rnd() * 50) : k < 0.99 ? Math.floor(rnd() * 100_000) : Math.floor(rnd() * WHEEL_SPAN);
          now += step;
          firedAt.clear();
          wheel.poll(now);
          // Exactly the entries due by now fired, none early. (Plain checks: expect() per entry
          // per poll would dominate the run time.)
          for (const [e, when] of live) {
            if (when <= now) {
              if (!firedAt.has(e)) problems.push(`seed ${seed} op ${op}: deadline ${when} not fired at ${now}`);
              live.delete(e);
            } else if (!wheel.isActive(e) || firedAt.has(e)) {
              problems.push(`seed ${seed} op ${op}: deadline ${when} fired early at ${now}`);
            }
          }
          for (const [e, at] of firedAt) {
            if (!(live.get(e) === undefined)) problems.push(`seed ${seed} op ${op}: fired timer still live`);
            void at;
          }
          if (wheel.size !== live.size) problems.push(`seed ${seed} op ${op}: size ${wheel.size} != ${live.size}`);
          if (live.size > 0) {
            let min = Infinity;
            for (const w of live.values()) if (w < min) min = w;
            if (wheel.nextExpiration() > min) problems.push(`seed ${seed} op ${op}: next expiration past ${min}`);
          }
          if (problems.length > 0) break;
        }
      }
    }
    expect(problems).toEqual([]);
    expect(fires).toBeGreaterThan(10_000);
  });
});

describe('TimerWheel: time from its clock', () => {
  it('rounds delays up to whole ticks and never schedules at or before the processed tick', () => {
    const clock = new ManualClock(1000.25); // any origin
    const wheel = new TimerWheel({ clock });
    clock.advance(10.5); // now = tick 10.5 since origin
    const e = wheel.schedule(3.2, () => {});
    expect(wheel.deadlineOf(e)).toBe(14); // ceil(10.5 + 3.2)
    const z = wheel.schedule(0, () => {});
    expect(wheel.deadlineOf(z)).toBe(11); // the next tick, as setTimeout(fn, 0) means 1 ms
    expect(wheel.poll()).toBe(0); // floor(10.5) = 10: nothing due
    clock.advance(0.5);
    expect(wheel.poll()).toBe(1);
    clock.advance(2.9); // 13.9
    expect(wheel.poll()).toBe(0);
    clock.advance(0.1);
    expect(wheel.poll()).toBe(1);
  });

  it('rejects bad delays with INVALID_ARGUMENT', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    for (const bad of [-1, NaN, Infinity, -Infinity, '5' as unknown as number]) {
      expect(() => wheel.schedule(bad, () => {})).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(() => wheel.insertAt(NaN, () => {})).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => new ManualClock().advance(-1)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(wheel.size).toBe(0);
  });

  it('fires every other timer when a callback throws, then rethrows the first error', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    let ok = 0;
    const boom = new Error('boom');
    wheel.insertAt(5, () => ok++);
    wheel.insertAt(5, () => {
      throw boom;
    });
    wheel.insertAt(6, () => ok++);
    expect(() => wheel.poll(10)).toThrow(boom);
    expect(ok).toBe(2);
    expect(wheel.size).toBe(0);
  });

  it('holds 100k timers, cancels half in O(1) each and fires the rest', () => {
    const wheel = new TimerWheel({ clock: new ManualClock() });
    const rnd = rng(42);
    const ids: TimerId[] = [];
    let fired = 0;
    const cb = () => fired++;
    for (let i = 0; i < 100_000; i++) ids.push(wheel.schedule(1 + Math.floor(rnd() * 10_000), cb));
    expect(wheel.size).toBe(100_000);
    for (let i = 0; i < ids.length; i += 2) expect(wheel.cancel(ids[i]!)).toBe(true);
    expect(wheel.size).toBe(50_000);
    wheel.poll(10_000);
    expect(fired).toBe(50_000);
    expect(wheel.size).toBe(0);
  });
});

describe('TimerWheel: barrier targets (what timeout uses)', () => {
  const barrier = (log: string[], name: string) => ({ barrier: true, fire: () => void log.push(name) });

  it('fires a barrier only first in a poll; a poll with barrierFirst = false stops before any barrier', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock });
    const log: string[] = [];
    wheel.schedule(2, () => log.push('a@2'));
    wheel.schedule(5, barrier(log, 'T1@5'));
    wheel.schedule(5, barrier(log, 'T2@5'));
    wheel.schedule(7, () => log.push('b@7'));
    const cancelled = wheel.schedule(6, barrier(log, 'T3@6'));
    clock.set(10);
    expect(wheel.poll()).toBe(1); // a, then stops before T1: it stays due
    expect(log).toEqual(['a@2']);
    expect(wheel.hasDue).toBe(true);
    expect(wheel.barrierDue).toBe(true);
    expect(wheel.nextExpiration()).toBe(10);
    expect(wheel.poll(undefined, Infinity, false)).toBe(0); // not at a boundary: nothing fires
    expect(wheel.poll()).toBe(1); // T1 first, then stops before T2
    expect(wheel.cancel(cancelled)).toBe(true); // a due barrier can still be cancelled (work settled)
    expect(wheel.poll()).toBe(2); // T2, then b (T3 was cancelled)
    expect(log).toEqual(['a@2', 'T1@5', 'T2@5', 'b@7']);
    expect(wheel.hasDue).toBe(false);
    expect(wheel.barrierDue).toBe(false);
    expect(wheel.size).toBe(0);
  });

  it('clear(reason) drops a due barrier waiting for its poll', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock });
    const log: string[] = [];
    wheel.schedule(1, () => log.push('a'));
    wheel.schedule(1, { barrier: true, fire: () => void log.push('fired'), drop: (r: Error) => void log.push(`dropped: ${r.message}`) });
    clock.set(3);
    wheel.poll();
    expect(wheel.barrierDue).toBe(true);
    expect(wheel.clear(new Error('shutdown'))).toBe(1);
    expect(log).toEqual(['a', 'dropped: shutdown']);
    expect(wheel.hasDue).toBe(false);
  });
});
