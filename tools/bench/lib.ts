/**
 * Shared shape of every benchmark: each `<subsystem>.bench.ts` exports `run()` returning rows
 * that pair a miniss figure with its competitor's, measured in the same process and run, plus
 * the command that reproduces it. `run-all.ts` collects them into docs/benchmarks.md.
 */
import { performance } from 'node:perf_hooks';

export interface BenchRow {
  /** What is measured, e.g. "spawn + await of a trivial task". */
  name: string;
  /** The unit of `miniss` and `baseline`, e.g. "ns/op", "ops/s", "us". */
  unit: string;
  /** true when a smaller number is better (latency, cost); false for throughput. */
  lowerIsBetter: boolean;
  miniss: number;
  /** What miniss is compared against, e.g. "async fn call + await". */
  baselineName: string;
  baseline: number;
  /** The goal from the issue, in `unit`, if one was set (e.g. "<= 150"). */
  goal?: string;
  /** Free text: backend, parameters, caveats. */
  note?: string;
}

export interface BenchSuite {
  subsystem: string;
  /** The shell command that reproduces this suite alone. */
  command: string;
  rows: BenchRow[];
}

/** miniss's advantage as a factor (> 1 means miniss is better), whatever the unit's direction. */
export function advantage(row: BenchRow): number {
  return row.lowerIsBetter ? row.baseline / row.miniss : row.miniss / row.baseline;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Times `fn` (which performs `n` operations) `runs` times and returns the median ns per op. */
export async function nsPerOp(n: number, runs: number, fn: (n: number) => unknown | Promise<unknown>): Promise<number> {
  const samples: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    await fn(n);
    samples.push(((performance.now() - t0) * 1e6) / n);
  }
  return median(samples);
}

export function printSuite(suite: BenchSuite): void {
  console.log(`\n## ${suite.subsystem}\n(reproduce: ${suite.command})`);
  for (const r of suite.rows) {
    const f = advantage(r);
    console.log(
      `${r.name}: miniss ${fmt(r.miniss)} ${r.unit} vs ${r.baselineName} ${fmt(r.baseline)} ${r.unit}` +
        ` -> ${f.toFixed(2)}x ${f >= 1 ? 'better' : 'worse'}${r.goal ? ` (goal ${r.goal})` : ''}${r.note ? ` [${r.note}]` : ''}`,
    );
  }
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/** True when this module is the process's entry point (so a bench file runs alone with node). */
export function isMain(importMetaUrl: string): boolean {
  return process.argv[1] !== undefined && importMetaUrl === new URL(`file://${process.argv[1]}`).href;
}
