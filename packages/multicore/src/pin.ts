import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { availableParallelism } from 'node:os';
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

/** The calling thread's CPU affinity as the kernel lists it (`Cpus_allowed_list`, e.g. "0-3,6"), or null off Linux. */
export function threadAffinity(): string | null {
  try {
    const m = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'));
    return m ? m[1]! : null;
  } catch {
    return null;
  }
}

/**
 * The CPUs the calling thread may run on, in ascending order: its `Cpus_allowed_list` (the
 * affinity mask `taskset` or a container's cpuset leaves it). Where that cannot be read (off
 * Linux), CPUs 0..availableParallelism()-1.
 */
export function allowedCpus(): number[] {
  const list = threadAffinity();
  const cpus = list === null ? null : parseCpuList(list);
  return cpus ?? Array.from({ length: availableParallelism() }, (_, i) => i);
}

/** CPUs of a `Cpus_allowed_list` ("0-2,5" -> [0, 1, 2, 5]); null if it does not parse. */
export function parseCpuList(list: string): number[] | null {
  const out: number[] = [];
  for (const part of list.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (m === null) return null;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a || b - a > 4096) return null;
    for (let c = a; c <= b; c++) out.push(c);
  }
  return out.length > 0 ? out : null;
}

/**
 * Gives the calling thread back the affinity `list` it had before {@link pinThread}. The
 * backends' `setAffinity` takes one CPU, so a one-CPU list is restored through it; a wider list
 * is restored with `taskset -p -c LIST TID` (util-linux) on this very thread, when that program
 * is installed. Returns how it went: 'restored', 'unchanged' (still the same), or 'failed'.
 */
export function restoreAffinity(runtime: Runtime, list: string): 'restored' | 'unchanged' | 'failed' {
  const now = threadAffinity();
  if (now === null || now === list) return 'unchanged';
  const cpus = parseCpuList(list);
  if (cpus === null) return 'failed';
  const b = runtime.backend as unknown as Pinnable;
  if (cpus.length === 1 && typeof b.setAffinity === 'function') {
    try {
      b.setAffinity(cpus[0]!);
      return 'restored';
    } catch {
      return 'failed';
    }
  }
  try {
    const tid = /task\/(\d+)$/.exec(readlinkSync('/proc/thread-self'))?.[1];
    if (tid === undefined) return 'failed';
    execFileSync('taskset', ['-p', '-c', list, tid], { stdio: 'ignore', timeout: 2000 });
  } catch {
    return 'failed';
  }
  return threadAffinity() === list ? 'restored' : 'failed';
}
