/**
 * Entry point of cores 1..n-1: one worker thread per core, each with its own {@link Runtime}
 * (backend, timer wheel, buffer pool) and its {@link CoreNode} endpoint on the shared rings.
 */
import { workerData, parentPort, type MessagePort } from 'node:worker_threads';
import { Runtime, RuntimeError, type RuntimeConfig } from '@miniss/core';
import { CoreNode } from './core-node.js';
import { CoreState, PIN_CPU, PIN_ERRNO, PIN_FAILED, STATE, OPEN_RESOURCES, TASKS_ACTIVE, coreBase } from './layout.js';
import { setCurrentCore } from './current.js';
import { pinThread } from './pin.js';

export interface WorkerInit {
  core: number;
  cores: number;
  control: SharedArrayBuffer;
  rings: Array<SharedArrayBuffer | null>;
  ports: Array<MessagePort | null>;
  config: RuntimeConfig;
  spinMs: number;
  awaitSpinMs: number;
  /** CPU to pin to, or -1 for none. */
  pinCpu: number;
}

const init = workerData as WorkerInit;
const ctl = new Int32Array(init.control);
const base = coreBase(init.core);
setCurrentCore(init.core);

const runtime = new Runtime(init.config);
pinThread(runtime, init.pinCpu, ctl, base);

// The runtime's load for coreStats(), published by the core's loop (before it sleeps, and at
// most every 20 ms while it is awake): an idle core is not woken by a timer for it.
const publish = (): void => {
  const s = runtime.stats();
  Atomics.store(ctl, base + TASKS_ACTIVE, s.tasksActive);
  Atomics.store(ctl, base + OPEN_RESOURCES, s.openResources);
};
// A core must stay alive while it waits for work from other cores, which no handle of its own
// loop represents (a pending Atomics.waitAsync does not hold a thread): a listener on the parent
// port does, without ever waking the thread. Removed when the core stops.
const keepAlive = (): void => {};
parentPort?.on('message', keepAlive);

let stopping = false;
const node: CoreNode = new CoreNode({
  core: init.core,
  cores: init.cores,
  control: init.control,
  rings: init.rings,
  ports: init.ports,
  runtime,
  spinMs: init.spinMs,
  awaitSpinMs: init.awaitSpinMs,
  onPublish: publish,
  onShutdownRequest: (graceMs) => void stop(graceMs),
});

async function stop(graceMs: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  Atomics.store(ctl, base + STATE, CoreState.Stopping);
  node.refuse();
  // The eventfd doorbell lives in the backend that the runtime is about to close.
  node.detachBackend();
  try {
    await runtime.shutdown({ graceMs });
  } catch {
    /* plugin close failures are this core's business; the core still exits */
  }
  publish();
  // Results of the tasks that finished or were cancelled must reach their cores.
  await node.drainOutgoing(1000);
  Atomics.store(ctl, base + STATE, CoreState.Exited);
  node.stop(new RuntimeError('RUNTIME_SHUTDOWN', `core ${init.core} has shut down`));
  parentPort?.postMessage({ type: 'exited', core: init.core });
  parentPort?.off('message', keepAlive);
}

Atomics.store(ctl, base + STATE, CoreState.Running);
node.start();
void PIN_CPU;
void PIN_ERRNO;
void PIN_FAILED;
