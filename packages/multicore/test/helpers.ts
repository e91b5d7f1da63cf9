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

/** The parts of a runtime's internals a few regression tests reach into (not public API). */
export interface Node0Internals {
  nextId: number;
  nextBatch: number;
  inn: Array<{ sabs: Map<number, SharedArrayBuffer[]>; discard: Set<number>; parked: unknown[] } | null>;
}

/** Core 0's CoreNode of `mc` (internal). */
export function node0Of(mc: MultiCoreRuntime): Node0Internals {
  return (mc as unknown as { node0: Node0Internals }).node0;
}

/**
 * Delays every message core 0 receives from core `from`'s port (SharedArrayBuffer batches) by
 * `ms`: they then arrive well after the ring records that refer to them, as they may by chance.
 */
export function delayPortMessages(mc: MultiCoreRuntime, from: number, ms: number): void {
  const node0 = node0Of(mc) as unknown as { onPortMessage(c: number, m: unknown): void };
  const deliver = node0.onPortMessage.bind(node0);
  node0.onPortMessage = (c: number, m: unknown): void => {
    if (c !== from) deliver(c, m);
    else setTimeout(() => deliver(c, m), ms);
  };
}

/** Polls `cond` every 2 ms until it holds (true) or `ms` passed (false). */
export async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 2));
  }
  return true;
}

/**
 * Blocks core `core`'s thread for good (a task that spins forever) and resolves once it is
 * spinning: shutdown then has to terminate that worker. Resolves with the task's handle in an
 * object (a handle is a thenable: an async function returning it would wait for it to settle,
 * which it never does by itself; its rejection at shutdown is ignored).
 */
export async function blockCore(mc: MultiCoreRuntime, core: number): Promise<{ handle: PromiseLike<unknown> }> {
  const started = new SharedArrayBuffer(4);
  const stuck = mc.spawnOn(core, (s: SharedArrayBuffer) => {
    Atomics.store(new Int32Array(s), 0, 1);
    for (;;);
  }, started);
  stuck.then(undefined, () => {});
  if (!(await until(() => Atomics.load(new Int32Array(started), 0) === 1, 5000))) throw new Error(`core ${core} did not start spinning`);
  return { handle: stuck };
}
