/**
 * The control block: one SharedArrayBuffer every core maps, holding what cores must read about
 * each other without sending a message (is it asleep, how do I wake it, how loaded is it, is it
 * alive). Each core's words live in their own 64-byte cache line so that a core updating its
 * counters never invalidates the line another core's flags live in.
 *
 * Layout (Int32 words):
 *
 *   [GLOBAL_WORDS]                      global words (shutdown flag)
 *   per core c, at coreBase(c), 16 words (one cache line):
 *     SLEEPING     1 while the core is asleep (or about to be) and wants a doorbell ring
 *     BELL         the doorbell counter `Atomics.waitAsync` waits on (node backend)
 *     FD           the eventfd number of the core's doorbell, or -1 (atomics doorbell)
 *     ACTIVE       tasks from any core accepted by this core and not settled yet
 *     COMPLETED    tasks this core ran to an end (success, failure or cancellation)
 *     PIN_CPU      the CPU the core is pinned to, -1 unpinned, -2 pinning failed
 *     PIN_ERRNO    errno of a failed pinning (positive), 0 otherwise
 *     STATE        CoreState
 *     MSGS_IN      messages received
 *     MSGS_OUT     messages sent
 *     SLEEPS       times the core went to sleep
 *     WAKEUPS      doorbell rings sent by this core to others
 *     BACKLOG      messages queued locally because a ring was full
 *   per (core c, sender s), at activeByBase(cores) + c * cores + s:
 *     tasks sent by s that c accepted and has not settled (for placement: `ACTIVE` minus the
 *     caller's own share is what *other* cores have put there).
 */

export const CACHE_LINE = 64;
const WORDS_PER_LINE = CACHE_LINE / 4;

export const GLOBAL_SHUTDOWN = 0;
const GLOBAL_WORDS = WORDS_PER_LINE;

export const SLEEPING = 0;
export const BELL = 1;
export const FD = 2;
export const ACTIVE = 3;
export const COMPLETED = 4;
export const PIN_CPU = 5;
export const PIN_ERRNO = 6;
export const STATE = 7;
export const MSGS_IN = 8;
export const MSGS_OUT = 9;
export const SLEEPS = 10;
export const WAKEUPS = 11;
export const BACKLOG = 12;
/** The core runtime's tasksActive and openResources, published by the core (for coreStats). */
export const TASKS_ACTIVE = 13;
export const OPEN_RESOURCES = 14;

/** A core's lifecycle, as other cores see it. */
export const CoreState = {
  Starting: 0,
  Running: 1,
  Stopping: 2,
  Exited: 3,
  Crashed: 4,
} as const;
export type CoreState = (typeof CoreState)[keyof typeof CoreState];

export const PIN_NONE = -1;
export const PIN_FAILED = -2;

export function coreBase(core: number): number {
  return GLOBAL_WORDS + core * WORDS_PER_LINE;
}

function activeByBase(cores: number): number {
  return GLOBAL_WORDS + cores * WORDS_PER_LINE;
}

export function activeByIndex(cores: number, core: number, sender: number): number {
  return activeByBase(cores) + core * cores + sender;
}

export function createControlBlock(cores: number): SharedArrayBuffer {
  const words = activeByBase(cores) + cores * cores;
  const sab = new SharedArrayBuffer(Math.ceil((words * 4) / CACHE_LINE) * CACHE_LINE);
  const i32 = new Int32Array(sab);
  for (let c = 0; c < cores; c++) {
    i32[coreBase(c) + FD] = -1;
    i32[coreBase(c) + PIN_CPU] = PIN_NONE;
  }
  return sab;
}
