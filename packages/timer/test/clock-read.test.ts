import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock, TimerWheel, clearTimer, currentDriver, setTimer, sleep, type TimerId } from '@miniss/timer';
import { noRuntimeLeft, now, rng, timerRuntime, turn } from './helpers.js';

/**
 * `schedule` (and so `setTimer`, `sleep`, `timeout`) reads the clock on every call: a deadline is
 * `ceil(time of the call + delay)`, whatever ran before or after the call. The wheel used to read
 * the clock once per 32 schedules and, when time had moved on, move the timers of that "window"
 * to a deadline computed from the next reading, which could come tens of milliseconds (a long
 * synchronous stretch) or seconds (the next wake-up) later: a sleep(100) after a sleep(10) and
 * 50 ms of work fired after 151 ms; a sleep(2000) in a window opened 0.5 s before fired after
 * 2458 ms. These tests fail on that wheel.
 */

afterEach(noRuntimeLeft);

const noop = (): void => {};

/** Synchronous work: the event loop is blocked and nothing reads the wheel's clock. */
function busy(ms: number): void {
  const until = now() + ms;
  while (now() < until);
}

describe('TimerWheel reads the clock on every schedule', () => {
  it('computes every deadline from the time of its own call (reuseClock, deprecated, is ignored)', () => {
    for (const reuseClock of [undefined, true, false]) {
      const clock = new ManualClock();
      const wheel = new TimerWheel({ clock, reuseClock });
      const a = wheel.schedule(10, noop);
      clock.advance(0.1);
      const b = wheel.schedule(10, noop);
      clock.advance(4.9);
      const c = wheel.schedule(10, noop);
      expect([wheel.deadlineOf(a), wheel.deadlineOf(b), wheel.deadlineOf(c)]).toEqual([10, 11, 15]);
    }
  });

  it('a timer scheduled before a long synchronous stretch keeps its deadline (was moved 50 ms later)', () => {
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    const fired: Array<[string, number]> = [];
    wheel.schedule(10, () => fired.push(['a', clock.now()]));
    const b = wheel.schedule(100, () => fired.push(['b', clock.now()]));
    clock.advance(50); // synchronous work: nothing reads the clock
    wheel.poll(); // a (due at 10) fires at 50; b must stay due at 100
    expect(wheel.deadlineOf(b)).toBe(100);
    clock.set(99);
    wheel.poll();
    clock.set(100);
    wheel.poll();
    expect(fired).toEqual([
      ['a', 50],
      ['b', 100],
    ]);
  });

  it('with the monotonic clock: each deadline is between ceil(before + delay) and ceil(after + delay) of its call', () => {
    const wheel = new TimerWheel();
    const ids: TimerId[] = [];
    const bounds: Array<[number, number]> = [];
    for (let k = 0; k < 40; k++) {
      const delay = k * 7.5;
      const before = now() - wheel.origin;
      ids.push(wheel.schedule(delay, noop));
      const after = now() - wheel.origin;
      bounds.push([Math.ceil(before + delay), Math.ceil(after + delay)]);
      if (k % 8 === 3) busy(5); // time moves on between some of the schedules, unseen by the wheel
    }
    busy(20);
    for (let k = 0; k < ids.length; k++) {
      const d = wheel.deadlineOf(ids[k]!);
      expect(d, `timer ${k}`).toBeGreaterThanOrEqual(bounds[k]![0]);
      expect(d, `timer ${k}`).toBeLessThanOrEqual(bounds[k]![1]);
    }
  });

  it('random schedules, cancels and clock moves: each deadline is that of its own call, and fires at the first poll at or after it', () => {
    const rnd = rng(7);
    const clock = new ManualClock();
    const wheel = new TimerWheel({ clock, reuseClock: true });
    let wrongDeadline = 0;
    let early = 0;
    let late = 0;
    let fired = 0;
    const ids: TimerId[] = [];
    let scheduled = 0;
    let cancelled = 0;
    let prevPoll = -Infinity;
    let curPoll = -Infinity;
    for (let round = 0; round < 400; round++) {
      const k = Math.floor(rnd() * 100);
      for (let j = 0; j < k; j++) {
        // Time moves between schedules: mostly a little, sometimes a lot (a GC pause, an idle gap).
        const r = rnd();
        clock.advance(r < 0.9 ? rnd() * 0.02 : r < 0.98 ? rnd() * 2 : rnd() * 50);
        const at = clock.now();
        const delay = rnd() < 0.5 ? Math.floor(rnd() * 100) : rnd() * 100;
        let d = NaN;
        const id = wheel.schedule(delay, () => {
          fired++;
          if (clock.now() < at + delay) early++;
          if (Math.floor(prevPoll) >= d) late++; // it was due at the poll before the one firing it
        });
        d = wheel.deadlineOf(id);
        // ceil(at + delay), or the next tick when that is not after the wheel's current tick.
        if (d < Math.ceil(at + delay) || d > Math.max(Math.ceil(at + delay), Math.floor(at) + 1)) wrongDeadline++;
        ids.push(id);
        scheduled++;
        if (rnd() < 0.2 && wheel.cancel(ids[Math.floor(rnd() * ids.length)]!)) cancelled++;
      }
      clock.advance(rnd() * 3);
      prevPoll = curPoll;
      curPoll = clock.now();
      wheel.poll();
    }
    clock.advance(200);
    prevPoll = curPoll;
    curPoll = clock.now();
    wheel.poll();
    expect({ wrongDeadline, early, late }).toEqual({ wrongDeadline: 0, early: 0, late: 0 });
    expect(fired + cancelled).toBe(scheduled);
    expect(wheel.size).toBe(0);
  });
});

describe('in a runtime: setTimer / sleep deadlines do not depend on what ran between schedules', () => {
  it('a sleep(100) scheduled right after a sleep(10), then 150 ms of synchronous work, is due before a sleep(50) scheduled after the work', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const order: string[] = [];
      const a = sleep(10).then(() => order.push('10'));
      const b = sleep(100).then(() => order.push('100'));
      busy(150); // b is due at +100, long before the work ends
      const c = sleep(50).then(() => order.push('50 after the work'));
      await Promise.all([a, b, c]);
      expect(order).toEqual(['10', '100', '50 after the work']);
    });
  });

  it('setTimer right after another and before synchronous work: its deadline is ceil(time of the call + delay)', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      await sleep(1);
      const wheel = currentDriver().wheel;
      const first = setTimer(10, noop);
      const before = now() - wheel.origin;
      const id = setTimer(100, noop);
      const after = now() - wheel.origin;
      busy(30);
      const d = wheel.deadlineOf(id);
      expect(d).toBeGreaterThanOrEqual(Math.ceil(before + 100));
      expect(d).toBeLessThanOrEqual(Math.ceil(after + 100)); // was about after + 130
      clearTimer(first);
      clearTimer(id);
    });
  });

  it('a timer scheduled turns after the previous schedule keeps its deadline however long nothing reads the wheel', async () => {
    const rt = timerRuntime();
    await rt.blockOn(async () => {
      const wheel = currentDriver().wheel;
      const armed = setTimer(1_000, noop); // the earliest deadline: the wake-up is armed for it
      await turn();
      const later = setTimer(5_000, noop); // later than the armed one: nothing re-arms or reads the wheel
      await new Promise((r) => setTimeout(r, 60)); // Node's own timer: the wheel is not touched
      const before = now() - wheel.origin;
      const id = setTimer(2_000, noop); // not earlier than the armed one either
      const after = now() - wheel.origin;
      await new Promise((r) => setTimeout(r, 60));
      const d = wheel.deadlineOf(id);
      expect(d).toBeGreaterThanOrEqual(Math.ceil(before + 2_000));
      expect(d).toBeLessThanOrEqual(Math.ceil(after + 2_000)); // was about after + 60
      for (const t of [armed, later, id]) clearTimer(t);
    });
  });
});
