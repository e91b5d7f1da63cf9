/**
 * Scheduling cost: `spawn` + await of a trivial task against a plain async function call + await,
 * measured in the same run. Goal (issue: foundation) <= 150 ns per task.
 *
 *   node tools/bench/dist/runtime.bench.js
 */
import { Runtime, spawn } from '@miniss/core';
import { isMain, nsPerOp, printSuite, type BenchSuite } from './lib.js';

async function trivialAsync(): Promise<number> {
  return 1;
}
function trivialSync(): number {
  return 1;
}

export async function run(opts: { n?: number; runs?: number } = {}): Promise<BenchSuite> {
  const n = opts.n ?? 1_000_000;
  const runs = opts.runs ?? 7;
  const rt = new Runtime({ backend: 'node' });
  const rows = await rt.blockOn(async () => {
    // Warm both paths so the JIT has compiled them before timing.
    for (let i = 0; i < 200_000; i++) {
      await trivialAsync();
      await spawn(trivialAsync);
      await spawn(trivialSync);
      await spawn(() => i);
      await (async () => i)();
    }
    const baseline = await nsPerOp(n, runs, async (k) => {
      for (let i = 0; i < k; i++) await trivialAsync();
    });
    const spawnAsync = await nsPerOp(n, runs, async (k) => {
      for (let i = 0; i < k; i++) await spawn(trivialAsync);
    });
    const spawnSync = await nsPerOp(n, runs, async (k) => {
      for (let i = 0; i < k; i++) await spawn(trivialSync);
    });
    // A new closure per spawn (`spawn(() => work(x))`, the common shape in servers): the runtime's
    // one-entry memo of "does fn take the signal" misses every time, so this row pays the
    // `fn.length` lookup the rows above skip. The baseline makes and calls a closure too.
    const closureBaseline = await nsPerOp(n, runs, async (k) => {
      for (let i = 0; i < k; i++) await (async () => i)();
    });
    const spawnClosure = await nsPerOp(n, runs, async (k) => {
      for (let i = 0; i < k; i++) await spawn(() => i);
    });
    const batch = 1000;
    // The same shape on both sides: start 1000, then await each in order.
    const baselineBatch = await nsPerOp(n, runs, async (k) => {
      const ps: Promise<number>[] = new Array(batch);
      for (let i = 0; i < k; i += batch) {
        for (let j = 0; j < batch; j++) ps[j] = trivialAsync();
        for (let j = 0; j < batch; j++) await ps[j];
      }
    });
    const spawnBatch = await nsPerOp(n, runs, async (k) => {
      const hs = new Array(batch);
      for (let i = 0; i < k; i += batch) {
        for (let j = 0; j < batch; j++) hs[j] = spawn(trivialAsync);
        for (let j = 0; j < batch; j++) await hs[j];
      }
    });
    return [
      { name: 'spawn + await, async task', unit: 'ns/task', lowerIsBetter: true, miniss: spawnAsync, baselineName: 'async fn call + await', baseline, goal: '<= 150' },
      { name: 'spawn + await, sync task', unit: 'ns/task', lowerIsBetter: true, miniss: spawnSync, baselineName: 'async fn call + await', baseline, goal: '<= 150' },
      {
        name: 'spawn + await, a new closure each time',
        unit: 'ns/task',
        lowerIsBetter: true,
        miniss: spawnClosure,
        baselineName: 'new async closure, call + await',
        baseline: closureBaseline,
      },
      {
        name: 'spawn 1000 then await each',
        unit: 'ns/task',
        lowerIsBetter: true,
        miniss: spawnBatch,
        baselineName: '1000 async calls, then await each',
        baseline: baselineBatch,
      },
    ];
  });
  return { subsystem: 'runtime: task scheduling', command: 'node tools/bench/dist/runtime.bench.js', rows };
}

if (isMain(import.meta.url)) printSuite(await run());
