import { RuntimeError } from '@miniss/core';

const SLOT = Symbol.for('miniss.multicore.currentCore');
type Slot = { [SLOT]?: number };

/** @internal Records which core this thread is (set once per thread by the multicore runtime). */
export function setCurrentCore(core: number | undefined): void {
  (globalThis as Slot)[SLOT] = core;
}

/**
 * The core this code runs on: 0 on the thread that created the `MultiCoreRuntime`, 1..n-1 on
 * its worker threads. Throws `NO_RUNTIME` on a thread that is not a core.
 */
export function currentCore(): number {
  const c = (globalThis as Slot)[SLOT];
  if (c === undefined) {
    throw new RuntimeError('NO_RUNTIME', 'currentCore() was called on a thread that is not a core of a MultiCoreRuntime');
  }
  return c;
}
