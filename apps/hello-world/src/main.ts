#!/usr/bin/env node
/**
 * hello-world: the seeds' basic usage. Creates a runtime (backend from `--backend`, MINISS_BACKEND,
 * or auto), spawns a few tasks that compute and sleep on I/O, writes a file and reads it back
 * through the runtime's backend, and prints what happened and the runtime's stats.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { File, Runtime, spawn, type BackendChoice } from '@miniss/core';

const arg = process.argv.indexOf('--backend');
const backend = (arg >= 0 ? process.argv[arg + 1] : undefined) as BackendChoice | undefined;

const runtime = new Runtime(backend ? { backend } : {});
console.log(`miniss hello-world on the '${runtime.backend.name}' backend`);

const result = await runtime.blockOn(async () => {
  // Tasks run concurrently on this thread's run queue.
  const squares = [1, 2, 3, 4].map((n) => spawn(() => n * n));
  const total = (await Promise.all(squares)).reduce((a, b) => a + b, 0);
  console.log(`4 tasks computed squares summing to ${total}`);

  // File I/O through the backend: write, fsync, read back.
  const dir = await mkdtemp(join(tmpdir(), 'miniss-hello-'));
  try {
    const path = join(dir, 'hello.txt');
    const text = new TextEncoder().encode('Hello, World!\n');
    const out = await File.open(path, { write: true, create: true, truncate: true });
    const written = await out.write(text, 0);
    await out.fsync();
    await out.close();
    const inp = await File.open(path);
    const buf = new Uint8Array(64);
    const read = await inp.read(buf, 0);
    await inp.close();
    const back = new TextDecoder().decode(buf.subarray(0, read));
    console.log(`wrote ${written} bytes and read back ${JSON.stringify(back)}`);
    return { total, back };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const s = runtime.stats();
console.log(
  `done: ${s.tasksSpawned} tasks spawned, ${s.tasksCompleted} completed; ${s.ioSubmitted} I/O operations submitted, ${s.ioCompleted} completed`,
);
if (result.total !== 30 || result.back !== 'Hello, World!\n') process.exitCode = 1;
