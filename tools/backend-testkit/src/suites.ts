// Test suites shared by the readiness-model backends, over a backend factory (imports vitest, so
// it is a separate entry point from the plain helpers in index.ts).
export { fileSuite, type FileCase } from './files.js';
export { perTestBackend } from './per-test.js';
export { lifecycleSuite, type LifecycleCase } from './lifecycle.js';
export { socketSuite, type ReadinessBackend, type ReadinessBackendCase } from './sockets.js';
export { poolSuite, type PoolCase } from './pool.js';
