// Shared by the sequence fuzzers (packages/core/test/fuzz-sequences.test.ts and
// packages/multicore/test/fuzz-sequences.test.ts) and core's fuzz-regressions: seeded randomness,
// "run this at that moment" timing, and the process's fd table (Linux /proc/self/fd).
import { readdirSync, readlinkSync } from 'node:fs';

/** Seeded randomness (mulberry32): the same seed gives the same operations. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [a, b]. */
  int(a: number, b: number): number {
    return a + (this.u32() % (b - a + 1));
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.u32() % xs.length]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      b[i] = v;
      if (i + 1 < n) b[i + 1] = v >>> 8;
      if (i + 2 < n) b[i + 2] = v >>> 16;
      if (i + 3 < n) b[i + 3] = v >>> 24;
    }
    return b;
  }
  /** A length: mostly up to 48 KiB, sometimes tiny, sometimes a page multiple. */
  len(): number {
    const k = this.int(0, 9);
    if (k < 3) return this.int(1, 64);
    if (k < 5) return 4096 * this.int(1, 8);
    return this.int(1, 48 * 1024);
  }
  /** An independent stream, seeded from this one. */
  sub(): Rng {
    return new Rng(this.u32());
  }
}

/** When an abort, a cancel, a close or a crash happens relative to the call. */
export type When = 'sync' | 'micro' | 'immediate' | 'timer';
export const WHENS: readonly When[] = ['sync', 'micro', 'immediate', 'timer'];

/** Runs `fn` at `when` (`ms` for 'timer'); the promise resolves once it has run. */
export function at(when: When, ms: number, fn: () => void): Promise<void> {
  if (when === 'sync') {
    fn();
    return Promise.resolve();
  }
  return new Promise<void>((resolve) => {
    const run = (): void => {
      try {
        fn();
      } finally {
        resolve();
      }
    };
    if (when === 'micro') queueMicrotask(run);
    else if (when === 'immediate') setImmediate(run);
    else setTimeout(run, ms);
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** How many fds the process has open. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** The process's open fds and what each is (a path, socket:[inode], anon_inode:[io_uring], ...). */
export function fdTable(): Map<string, string> {
  const m = new Map<string, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      m.set(fd, readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      /* the readdir's own fd, gone */
    }
  }
  return m;
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, got ${v}`);
  return n;
}

/**
 * A fuzzer's budget from the environment: `MINISS_FUZZ_SEED` (replay one seed), `MINISS_FUZZ_SEEDS`
 * (how many; `defaultSeeds` otherwise), `MINISS_FUZZ_BASE` (the first), `MINISS_FUZZ_BACKEND` (only
 * that backend), `MINISS_FUZZ_VERBOSE=1` (every seed's log).
 */
export function fuzzBudget(defaultSeeds: number): { oneSeed: number | undefined; seeds: number; base: number; only: string | undefined; verbose: boolean } {
  const oneSeed = envInt('MINISS_FUZZ_SEED');
  return {
    oneSeed,
    seeds: oneSeed !== undefined ? 1 : (envInt('MINISS_FUZZ_SEEDS') ?? defaultSeeds),
    base: oneSeed ?? envInt('MINISS_FUZZ_BASE') ?? 1,
    only: process.env.MINISS_FUZZ_BACKEND,
    verbose: process.env.MINISS_FUZZ_VERBOSE === '1',
  };
}
