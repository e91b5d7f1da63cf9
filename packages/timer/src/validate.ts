import { InvalidArgumentError } from '@miniss/core';

/**
 * Durations are checked before anything is scheduled: a NaN, negative or infinite delay, or a
 * zero period, is a bug in the caller that would otherwise turn into a timer that never fires or
 * a loop that never sleeps. Each fails with `INVALID_ARGUMENT` naming what was wrong.
 */

/** The longest delay accepted: beyond 2^53 ms (285,000 years) a deadline is no longer exact. */
export const MAX_DELAY_MS = Number.MAX_SAFE_INTEGER;

function describe(v: unknown): string {
  return typeof v === 'number' ? String(v) : `${typeof v} ${String(v)}`;
}

/** A delay: a finite number of milliseconds, 0 <= ms <= 2^53 - 1. */
export function checkDelay(ms: unknown, what: string): asserts ms is number {
  if (typeof ms !== 'number' || !(ms >= 0) || ms > MAX_DELAY_MS) {
    throw new InvalidArgumentError(
      `${what} must be a finite number of milliseconds between 0 and ${MAX_DELAY_MS}, got ${describe(ms)}`,
    );
  }
}

/** A period: a finite number of milliseconds > 0 (a period of 0 would be a busy loop). */
export function checkPeriod(ms: unknown, what: string): asserts ms is number {
  if (typeof ms !== 'number' || !(ms > 0) || ms > MAX_DELAY_MS) {
    throw new InvalidArgumentError(
      `${what} must be a finite number of milliseconds greater than 0 (a period of 0 would never sleep), got ${describe(ms)}`,
    );
  }
}
