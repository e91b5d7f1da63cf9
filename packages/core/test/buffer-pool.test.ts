import { describe, expect, it } from 'vitest';
import { BufferPool, DEFAULT_BUFFER_POOL_CONFIG, Runtime } from '@miniss/core';

const KiB = 1024;

describe('BufferPool', () => {
  it('defaults to nine size classes 4 KiB..1 MiB, 4096 alignment', () => {
    expect(DEFAULT_BUFFER_POOL_CONFIG.sizeClasses).toEqual([4, 8, 16, 32, 64, 128, 256, 512, 1024].map((k) => k * KiB));
    expect(DEFAULT_BUFFER_POOL_CONFIG.alignment).toBe(4096);
    const pool = new BufferPool();
    expect(pool.maxSize).toBe(1024 * KiB);
  });

  it('rounds up to the smallest class that fits and reuses freed storage', () => {
    const pool = new BufferPool();
    const a = pool.allocate(5000)!;
    expect(a.size).toBe(5000);
    expect(a.capacity).toBe(8 * KiB);
    expect(a.bytes.byteLength).toBe(5000);
    a.bytes[0] = 42;
    pool.deallocate(a);
    const b = pool.allocate(8 * KiB)!;
    expect(b.bytes.buffer).toBe(a.bytes.buffer);
    const s = pool.stats();
    expect(s.hits).toBe(1);
    expect(s.misses).toBe(1);
    expect(s.allocated).toBe(1);
    expect(s.bytesInUse).toBe(8 * KiB);
    pool.deallocate(b);
    expect(pool.stats().free).toBe(1);
  });

  it('a second deallocate throws DOUBLE_FREE, even after the storage was reused', () => {
    const pool = new BufferPool();
    const a = pool.allocate(100)!;
    pool.deallocate(a);
    const b = pool.allocate(100)!;
    expect(() => pool.deallocate(a)).toThrow(expect.objectContaining({ code: 'DOUBLE_FREE' }));
    pool.deallocate(b);
    expect(() => pool.deallocate(b)).toThrow(expect.objectContaining({ code: 'DOUBLE_FREE' }));
    expect(pool.stats().allocated).toBe(0);
  });

  it('refuses foreign handles and bad sizes with INVALID_ARGUMENT', () => {
    const p1 = new BufferPool();
    const p2 = new BufferPool();
    const h = p1.allocate(10)!;
    expect(() => p2.deallocate(h)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => p1.deallocate({ bytes: new Uint8Array(1), size: 1, capacity: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    for (const bad of [0, -1, 1.5, Number.NaN, 2 * 1024 * KiB]) {
      expect(() => p1.allocate(bad)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    p1.deallocate(h);
  });

  it('never exceeds maxMemory: evicts free buffers of other classes, then returns null', () => {
    const pool = new BufferPool({ maxMemory: 64 * KiB });
    const small = Array.from({ length: 8 }, () => pool.allocate(4 * KiB)!);
    for (const h of small) pool.deallocate(h);
    expect(pool.stats().bytesReserved).toBe(32 * KiB);
    // 64 KiB needs the 32 KiB of free 4 KiB buffers released.
    const big = pool.allocate(64 * KiB);
    expect(big).not.toBeNull();
    expect(pool.stats().bytesReserved).toBeLessThanOrEqual(64 * KiB);
    expect(pool.allocate(4 * KiB)).toBeNull();
    expect(pool.stats().exhausted).toBe(1);
    pool.deallocate(big!);
    expect(pool.allocate(4 * KiB)).not.toBeNull();
  });

  it('prealloc fills a class up to the budget; preallocCount fills every class', () => {
    const pool = new BufferPool({ maxMemory: 40 * KiB });
    expect(pool.prealloc(16 * KiB, 5)).toBe(2);
    expect(pool.stats().free).toBe(2);
    expect(() => pool.prealloc(3000, 1)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const p2 = new BufferPool({ sizeClasses: [4096, 8192], preallocCount: 3 });
    expect(p2.stats().free).toBe(6);
    expect(p2.stats().bytesReserved).toBe(3 * (4096 + 8192));
    expect(p2.trim()).toBe(3 * (4096 + 8192));
    expect(p2.stats().bytesReserved).toBe(0);
  });

  it('bad config values fail with INVALID_CONFIG naming the key', () => {
    expect(() => new BufferPool({ sizeClasses: [3000] })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => new BufferPool({ sizeClasses: [8192, 4096] })).toThrow(/ascending/);
    expect(() => new BufferPool({ maxMemory: -1 })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => new BufferPool({ alignment: 3 })).toThrow(/alignment/);
    expect(() => new BufferPool({ preallocCount: -2 })).toThrow(/preallocCount/);
    expect(() => new BufferPool({ bogus: 1 } as never)).toThrow(/unknown key 'bogus'/);
    expect(() => new Runtime({ backend: 'node', bufferPool: { maxMemory: 0 } })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });

  it('uses a native allocator when given one, and checks what it returns', () => {
    const calls: Array<[number, number]> = [];
    const pool = new BufferPool({}, (cap, align) => {
      calls.push([cap, align]);
      return new Uint8Array(cap);
    });
    expect(pool.aligned).toBe(true);
    const h = pool.allocate(4096)!;
    expect(calls).toEqual([[4096, 4096]]);
    pool.deallocate(h);
    const bad = new BufferPool({}, () => new Uint8Array(10));
    expect(() => bad.allocate(4096)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });

  it('a runtime has one pool, configured from RuntimeConfig.bufferPool', async () => {
    const rt = new Runtime({ backend: 'node', bufferPool: { maxMemory: 1024 * KiB, sizeClasses: [4096, 65536] } });
    await rt.blockOn(async () => {
      expect(rt.bufferPool).toBe(rt.bufferPool);
      expect(rt.bufferPool.config.maxMemory).toBe(1024 * KiB);
      expect(rt.bufferPool.aligned).toBe(rt.backend.features.directIo);
    });
  });
});
