import { afterEach, beforeEach, expect } from 'vitest';
import type { IoBackend } from '@miniss/core';
import { Driver, openFdCount } from './index.js';

/**
 * A fresh backend and Driver for every test of the enclosing describe, handed to `set`. After each
 * test: closes the fds pushed onto the returned list (errors ignored), closes the backend, and
 * checks that nothing is in flight and the process has exactly the fds it had before the test.
 */
export function perTestBackend<B extends IoBackend>(create: () => B, set: (b: B, d: Driver) => void): number[] {
  const toClose: number[] = [];
  let fdsBefore = 0;
  let cur: { b: B; d: Driver } | undefined;
  beforeEach(() => {
    fdsBefore = openFdCount();
    const b = create();
    const d = new Driver(b);
    cur = { b, d };
    set(b, d);
  });
  afterEach(async () => {
    if (cur === undefined) return; // create() threw: that test failed already
    const { b, d } = cur;
    cur = undefined;
    await Promise.all(toClose.splice(0).map((fd) => d.io({ op: 'close', fd }).catch(() => 0)));
    b.close();
    expect(b.inFlight).toBe(0);
    expect(openFdCount()).toBe(fdsBefore);
  });
  return toClose;
}
