#!/usr/bin/env node
/**
 * The seeds' multicore example: 8 tasks spread over 4 cores, each incrementing one shared atomic
 * counter (an Int32Array over a SharedArrayBuffer, shared by every core, not copied).
 */
import { MultiCoreRuntime } from '@miniss/multicore';

const cores = Number(process.argv[2] ?? 4);
const tasks = 8;
const mc = new MultiCoreRuntime({ cores });
const counter = new SharedArrayBuffer(4);

const placed = await mc.blockOn(async () => {
  const handles = [];
  for (let i = 0; i < tasks; i++) {
    handles.push(
      mc.spawn(async (buf: SharedArrayBuffer, task: number) => {
        // Runs on another thread, from this function's source: imports go inside it.
        const { currentCore } = await import('@miniss/multicore');
        Atomics.add(new Int32Array(buf), 0, 1);
        return { task, core: currentCore() };
      }, counter, i),
    );
  }
  return Promise.all(handles);
});

for (const p of placed) console.log(`task ${p.task} ran on core ${p.core}`);
const total = Atomics.load(new Int32Array(counter), 0);
console.log(`counter = ${total} (expected ${tasks}) over ${cores} cores`);
process.exitCode = total === tasks ? 0 : 1;
