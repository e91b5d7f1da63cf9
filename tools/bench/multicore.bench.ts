/**
 * Cross-core messaging against MessagePort.postMessage, measured in the same run:
 *  1. one-way throughput of small (8-byte) messages from core 0 to core 1 through the SPSC byte
 *     ring (batched publication, one Atomics.store per 64 messages), ns/message;
 *  2. round trip of `spawnOn(1, () => 1)`: to a busy core (back-to-back, the core is polling) and
 *     to an idle core (20 ms apart, the core sleeps on its doorbell and must be woken).
 *
 *   node tools/bench/dist/multicore.bench.js
 */
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { MultiCoreRuntime, RingWriter, createRing } from '@miniss/multicore';
import { isMain, median, printSuite, type BenchSuite } from './lib.js';

const PORT_WORKER = `
const { parentPort } = require('node:worker_threads');
let n = 0;
parentPort.on('message', (m) => {
  if (m === 'ping') { parentPort.postMessage('pong'); return; }
  if (typeof m === 'number') { if (m < 0) { parentPort.postMessage(n); n = 0; } else n++; }
});
`;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function run(opts: { messages?: number; trips?: number } = {}): Promise<BenchSuite> {
  const N = opts.messages ?? 2_000_000;
  const trips = opts.trips ?? 100;
  const mc = new MultiCoreRuntime({ cores: 2 });
  const port = new Worker(PORT_WORKER, { eval: true });
  try {
    // 1. Ring throughput: core 1 runs a consumer task that spins on the ring until N messages.
    const ring = createRing(4096);
    const w = new RingWriter(ring);
    const started = new Int32Array(new SharedArrayBuffer(4));
    const consumer = mc.spawnOn(1, async (sab: SharedArrayBuffer, n: number, flag: Int32Array) => {
      const { RingReader } = await import('@miniss/multicore');
      const r = new RingReader(sab);
      Atomics.store(flag, 0, 1);
      let got = 0;
      let sum = 0;
      while (got < n) {
        while (r.next()) {
          sum += r.dv.getUint32(r.bodyOffset, true);
          got++;
        }
        r.release();
      }
      return sum;
    }, ring, N, started);
    // The producer below spins synchronously: the task must have reached core 1 before it starts.
    for (let i = 0; i < 5000 && Atomics.load(started, 0) === 0; i++) await sleep(1);
    if (Atomics.load(started, 0) === 0) throw new Error('the consumer task did not start on core 1');
    const body = new Uint8Array(8);
    const t0 = performance.now();
    let expected = 0;
    for (let i = 0; i < N; i++) {
      let off = w.begin(1, 0, 0, i, 0, 8);
      while (off < 0) {
        w.publish();
        off = w.begin(1, 0, 0, i, 0, 8);
      }
      w.dv.setUint32(off, i & 0xff, true);
      expected += i & 0xff;
      if ((i & 63) === 63) w.publish();
    }
    w.publish();
    const sum = await consumer;
    const ringNs = ((performance.now() - t0) * 1e6) / N;
    if (sum !== expected) throw new Error(`ring bench lost data: sum ${sum} != ${expected}`);
    void body;

    // Baseline 1: postMessage of a small number, one-way, then one reply with the count.
    const M = Math.min(N, 300_000);
    const t1 = performance.now();
    for (let i = 0; i < M; i++) port.postMessage(i);
    port.postMessage(-1);
    const count = await new Promise<number>((r) => port.once('message', r));
    const portNs = ((performance.now() - t1) * 1e6) / M;
    if (count !== M) throw new Error(`postMessage bench lost messages: ${count} != ${M}`);

    // 2a. Busy round trip: back-to-back spawnOn keeps core 1 polling.
    for (let i = 0; i < 2000; i++) await mc.spawnOn(1, () => 1);
    const B = 20_000;
    const t2 = performance.now();
    for (let i = 0; i < B; i++) await mc.spawnOn(1, () => 1);
    const busyUs = ((performance.now() - t2) * 1e3) / B;
    const t3 = performance.now();
    for (let i = 0; i < B; i++) {
      port.postMessage('ping');
      await new Promise((r) => port.once('message', r));
    }
    const portBusyUs = ((performance.now() - t3) * 1e3) / B;

    // 2b. Idle round trip: 20 ms apart, so the core (and the port's worker) sleeps each time.
    const idle: number[] = [];
    const portIdle: number[] = [];
    for (let i = 0; i < trips; i++) {
      await sleep(20);
      let s = performance.now();
      await mc.spawnOn(1, () => 1);
      idle.push((performance.now() - s) * 1e3);
      await sleep(20);
      s = performance.now();
      port.postMessage('ping');
      await new Promise((r) => port.once('message', r));
      portIdle.push((performance.now() - s) * 1e3);
    }
    const pinned = mc.stats().pinned ? 'pinned' : 'unpinned';
    const backend = mc.runtime.backend.name;
    return {
      subsystem: 'multicore: cross-core messaging',
      command: 'node tools/bench/dist/multicore.bench.js',
      rows: [
        { name: 'one-way small message core 0 -> core 1', unit: 'ns/msg', lowerIsBetter: true, miniss: ringNs, baselineName: 'MessagePort.postMessage', baseline: portNs, goal: '<= 35', note: `SPSC byte ring, publish per 64, ${N} msgs (postMessage: ${M})` },
        { name: 'round trip spawnOn to a busy core', unit: 'us', lowerIsBetter: true, miniss: busyUs, baselineName: 'postMessage ping-pong, back-to-back', baseline: portBusyUs, goal: '<= 2', note: `${backend} backend, ${pinned}` },
        { name: 'round trip spawnOn to an idle core (median)', unit: 'us', lowerIsBetter: true, miniss: median(idle), baselineName: 'postMessage ping-pong to an idle worker (median)', baseline: median(portIdle), goal: '<= half of postMessage', note: `${trips} trips 20 ms apart; doorbell: ${backend === 'epoll' ? 'eventfd' : 'Atomics.waitAsync'}` },
      ],
    };
  } finally {
    await port.terminate();
    await mc.shutdown();
  }
}

if (isMain(import.meta.url)) printSuite(await run());
