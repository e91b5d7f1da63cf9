import type { Runtime } from '@miniss/core';
import { PIN_CPU, PIN_ERRNO, PIN_FAILED, PIN_NONE } from './layout.js';

type Pinnable = { setAffinity?(cpu: number): void };

/**
 * Pins the calling thread to `cpu` through the native backend's `setAffinity`
 * (`sched_setaffinity(0, ...)` on this thread). Records the outcome in the control block:
 * PIN_CPU = the CPU, PIN_NONE when not asked or the backend cannot pin (node backend), PIN_FAILED
 * with PIN_ERRNO when the kernel refused.
 */
export function pinThread(runtime: Runtime, cpu: number, ctl: Int32Array, base: number): void {
  const b = runtime.backend as unknown as Pinnable;
  if (cpu < 0 || typeof b.setAffinity !== 'function') {
    Atomics.store(ctl, base + PIN_CPU, PIN_NONE);
    return;
  }
  try {
    b.setAffinity(cpu);
    Atomics.store(ctl, base + PIN_CPU, cpu);
  } catch (err) {
    Atomics.store(ctl, base + PIN_CPU, PIN_FAILED);
    const errno = (err as { errno?: number }).errno;
    Atomics.store(ctl, base + PIN_ERRNO, typeof errno === 'number' ? errno : -1);
  }
}
