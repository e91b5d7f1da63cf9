export { MultiCoreRuntime, type MultiCoreConfig, type CoreStat } from './multicore-runtime.js';
export { currentCore } from './current.js';
export { CoreTaskHandle } from './handle.js';
// The transport itself, for benchmarks and for users who want a raw cross-core byte channel.
export { createRing, RingReader, RingWriter } from './byte-ring.js';
// A typed (float64) SPSC channel over shared memory, for streaming numbers between cores.
export { SpscRing } from './spsc-ring.js';
