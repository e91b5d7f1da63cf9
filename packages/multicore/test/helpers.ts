import { afterEach } from 'vitest';
import { MultiCoreRuntime, type MultiCoreConfig } from '@miniss/multicore';

// One runtime per thread: a test that fails half-way must not leave its runtime running for the next.
const open: MultiCoreRuntime[] = [];

/** A MultiCoreRuntime shut down after the test (see `shutDownAfterEach`) whatever its outcome. */
export function make(config: MultiCoreConfig): MultiCoreRuntime {
  const mc = new MultiCoreRuntime(config);
  open.push(mc);
  return mc;
}

/** Registers the afterEach that shuts down every runtime `make` created in the test. */
export function shutDownAfterEach(): void {
  afterEach(async () => {
    for (const mc of open.splice(0)) await mc.shutdown().catch(() => {});
  });
}

/** Settles `p` within `ms`, or fails naming the step (a hang must fail the test, not time it out). */
export async function within<T>(p: PromiseLike<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: still pending after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
