import { describe, expect, it } from 'vitest';
import type { MultiCoreRuntimeLike } from '@miniss/core';
import { MultiCoreRuntime } from '../src/index.js';

// core's createRuntime is typed to return MultiCoreRuntimeLike for features: ['multicore'] (core
// cannot import this package's types): the class must keep satisfying it. The check is the
// typecheck of this file (`tsc -p packages/multicore/tsconfig.json`, part of the build of tests);
// the test below keeps the names honest at run time too.
type Satisfies<T extends MultiCoreRuntimeLike> = T;
export type MultiCoreRuntimeIsLike = Satisfies<MultiCoreRuntime>;

describe('MultiCoreRuntimeLike', () => {
  it('names methods MultiCoreRuntime has', () => {
    for (const m of ['blockOn', 'spawn', 'spawnOn', 'broadcast', 'shutdown', 'coreStats', 'stats'] as const) {
      expect(typeof MultiCoreRuntime.prototype[m]).toBe('function');
    }
    expect(Object.getOwnPropertyDescriptor(MultiCoreRuntime.prototype, 'runtime')?.get).toBeTypeOf('function');
  });
});
