import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  FlushObjects,
  IoError,
  NATIVE_OP_CODES,
  OP_SLOT_BITS,
  OP_SLOT_MASK,
  OpSlots,
  RuntimeError,
  bufferHandleOf,
  checkAllocateBuffer,
  int32OrBad,
  ioErrorForOperation,
  nativeSocketAddress,
  positiveIntOption,
  requireNativeAddon,
  type IoOperation,
} from '@miniss/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** `kName = N` entries of `enum <name> : int32_t` in a C++ header, names lower-cased without prefix. */
function nativeEnum(path: string, name: string, prefix: string): Record<string, number> {
  const text = readFileSync(join(root, path), 'utf8');
  const body = new RegExp(`enum ${name} : int32_t \\{([\\s\\S]*?)\\};`).exec(text)?.[1];
  expect(body, `enum ${name} in ${path}`).toBeDefined();
  const out: Record<string, number> = {};
  for (const m of body!.matchAll(new RegExp(`\\b${prefix}(\\w+) = (\\d+)`, 'g'))) out[m[1]!.toLowerCase()] = Number(m[2]);
  return out;
}

describe('helpers for native backends', () => {
  it('NATIVE_OP_CODES is what both native enums say (native-common op.h, io_uring.h), and frozen', () => {
    const js = Object.fromEntries(Object.entries(NATIVE_OP_CODES));
    for (const [path, name, prefix] of [
      ['packages/native-common/include/miniss/op.h', 'OpCode', 'k'],
      ['packages/backend-iouring/native/io_uring.h', 'RingOp', 'kOp'],
    ] as const) {
      const native = nativeEnum(path, name, prefix);
      // Each JS op has the native number of the same name; the native side may have more (counts, cancel).
      for (const [name, code] of Object.entries(js)) expect(native[name], `${name} in ${path}`).toBe(code);
    }
    expect(Object.isFrozen(NATIVE_OP_CODES)).toBe(true);
  });

  it('int32OrBad passes 32-bit fds through and turns anything else into -1 (EBADF from the kernel)', () => {
    expect(int32OrBad(0)).toBe(0);
    expect(int32OrBad(2 ** 31 - 1)).toBe(2 ** 31 - 1);
    expect(int32OrBad(-1)).toBe(-1);
    expect(int32OrBad(2 ** 31)).toBe(-1);
    expect(int32OrBad(1.5)).toBe(-1);
    expect(int32OrBad(NaN)).toBe(-1);
  });

  it('ioErrorForOperation names what failed: the path, the address, or the fd', () => {
    const open = ioErrorForOperation({ op: 'open', path: '/nope', flags: 0, mode: 0 } as unknown as IoOperation, -2) as IoError;
    expect(open).toBeInstanceOf(IoError);
    expect(open).toMatchObject({ code: 'ENOENT', syscall: 'open', path: '/nope' });
    const conn = ioErrorForOperation({ op: 'connect', fd: 7, addr: { host: '127.0.0.1', port: 9 } } as unknown as IoOperation, -111);
    expect(conn).toMatchObject({ code: 'ECONNREFUSED', syscall: 'connect', address: '127.0.0.1', port: 9 });
    expect(ioErrorForOperation({ op: 'nop' }, -125)).toMatchObject({ code: 'ECANCELED', syscall: 'nop' });
    expect(ioErrorForOperation({ op: 'recv', fd: 5 } as unknown as IoOperation, -9)).toMatchObject({ code: 'EBADF', syscall: 'recv', fd: 5 });
  });

  it('checkAllocateBuffer refuses what no allocator should try', () => {
    expect(() => checkAllocateBuffer(4096, 4096)).not.toThrow();
    expect(() => checkAllocateBuffer(0, 1)).not.toThrow();
    for (const [cap, align] of [
      [-1, 4096],
      [2 ** 30 + 1, 4096],
      [1.5, 4096],
      [4096, 0],
      [4096, 3],
      [4096, 2 ** 21],
    ]) {
      let err: unknown;
      try {
        checkAllocateBuffer(cap!, align!);
      } catch (e) {
        err = e;
      }
      expect(err, `${cap}, ${align}`).toBeInstanceOf(RuntimeError);
      expect((err as RuntimeError).code).toBe('INVALID_ARGUMENT');
    }
  });

  it('nativeSocketAddress checks its arguments, maps the tuple, and throws the errno with the right syscall', () => {
    const calls: [number, boolean][] = [];
    const native = (fd: number, peer: boolean): [4 | 6, number, string] | number => {
      calls.push([fd, peer]);
      return fd === 3 ? [4, 8080, '127.0.0.1'] : fd < 0 ? -9 : -107; // as the kernel: EBADF, ENOTCONN
    };
    expect(nativeSocketAddress(native, 3, 'local')).toEqual({ family: 4, port: 8080, host: '127.0.0.1' });
    expect(() => nativeSocketAddress(native, 4, 'peer')).toThrow(expect.objectContaining({ code: 'ENOTCONN', syscall: 'getpeername', fd: 4 }));
    expect(() => nativeSocketAddress(native, 2 ** 40, 'local')).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(calls).toEqual([
      [3, false],
      [4, true],
      [-1, false],
    ]);
    expect(() => nativeSocketAddress(native, 3, 'remote' as 'peer')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => nativeSocketAddress(native, 3.5, 'local')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(calls).toHaveLength(3);
  });
});

describe('more helpers for native backends', () => {
  it('bufferHandleOf returns the BufferHandle of a one-buffer op, nothing for a Uint8Array or other ops', () => {
    const handle = { bytes: new Uint8Array(8) } as unknown as import('@miniss/core').BufferHandle;
    expect(bufferHandleOf({ op: 'read', fd: 3, buffer: handle, offset: 0, len: 8 } as unknown as IoOperation)).toBe(handle);
    expect(bufferHandleOf({ op: 'send', fd: 3, buffer: handle, len: 8 } as unknown as IoOperation)).toBe(handle);
    expect(bufferHandleOf({ op: 'recv', fd: 3, buffer: new Uint8Array(8), len: 8 } as unknown as IoOperation)).toBeUndefined();
    expect(bufferHandleOf({ op: 'readv', fd: 3, buffers: [new Uint8Array(8)], offset: 0 } as unknown as IoOperation)).toBeUndefined();
    expect(bufferHandleOf({ op: 'nop' })).toBeUndefined();
  });

  it('positiveIntOption gives the default for undefined and refuses anything outside 1..max', () => {
    expect(positiveIntOption(undefined, 'entries', 256, 4096)).toBe(256);
    expect(positiveIntOption(4096, 'entries', 256, 4096)).toBe(4096);
    for (const v of [0, -1, 4097, 1.5, '8', null]) {
      expect(() => positiveIntOption(v, 'entries', 256, 4096)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
  });

  it('requireNativeAddon loads build/Release of the package, or lists every path it tried and why', () => {
    // The epoll package's own addon (built by npm install here).
    const epollDist = pathToFileURL(join(root, 'packages', 'backend-epoll', 'dist', 'index.js')).href;
    const ok = requireNativeAddon<{ probe(): number }>(epollDist, 'miniss_epoll.node');
    expect('addon' in ok && typeof ok.addon.probe).toBe('function');
    const missing = requireNativeAddon(epollDist, 'no_such_addon.node');
    expect(missing).toEqual({
      tried: [
        `${join(root, 'packages', 'backend-epoll', 'build', 'Release', 'no_such_addon.node')} (not found)`,
        `${join(root, 'packages', 'backend-epoll', 'build', 'Debug', 'no_such_addon.node')} (not found)`,
      ],
    });
  });
});

describe('OpSlots (the live-operation table of the native drivers)', () => {
  it('ids are generation * 2^20 + slot: recycled slots get a new generation, stale and foreign ids are refused', () => {
    const t = new OpSlots<{ n: number }>('test');
    const a = { n: 1 };
    const b = { n: 2 };
    const ia = t.add(a);
    const ib = t.add(b);
    expect(ia & OP_SLOT_MASK).toBe(0);
    expect(ib & OP_SLOT_MASK).toBe(1);
    expect(ia >>> OP_SLOT_BITS).toBe(1);
    expect(t.get(ia)).toBe(a);
    expect(t.ops[ib & OP_SLOT_MASK]).toBe(b);
    expect(t.live).toBe(2);
    expect(t.release(ia)).toBe(a);
    expect(t.release(ia)).toBeUndefined(); // once only
    expect(t.get(ia)).toBeUndefined();
    const c = { n: 3 };
    const ic = t.add(c); // slot 0 again, next generation
    expect(ic & OP_SLOT_MASK).toBe(0);
    expect(ic).not.toBe(ia);
    expect(t.get(ia)).toBeUndefined(); // the stale id does not reach the new operation
    expect(t.release(ia)).toBeUndefined();
    expect(t.get(ic)).toBe(c);
    for (const bad of [0, -1, 1.5, NaN, 2 ** 31, 2 ** 40, OP_SLOT_MASK, '1' as unknown as number]) expect(t.get(bad)).toBeUndefined();
    expect(t.live).toBe(2);
    t.clear();
    expect(t.live).toBe(0);
    expect(t.get(ic)).toBeUndefined();
  });

  it('generations wrap below 2^10, so ids stay small integers (< 2^30)', () => {
    const t = new OpSlots<object>('test');
    const seen = new Set<number>();
    for (let i = 0; i < 3000; i++) {
      const id = t.add({});
      expect(id).toBeGreaterThan(OP_SLOT_MASK);
      expect(id).toBeLessThan(2 ** 30);
      seen.add(id);
      t.release(id);
    }
    expect(seen.size).toBe(1023); // every generation 1..1023 of slot 0, then again
  });

  it('past 2^20 operations in flight: TOO_MANY_OPERATIONS naming the backend, and the table still works', () => {
    const t = new OpSlots<object>('epoll');
    const op = {};
    for (let i = 0; i <= OP_SLOT_MASK; i++) t.add(op);
    let err: unknown;
    try {
      t.add(op);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RuntimeError);
    expect((err as RuntimeError).code).toBe('TOO_MANY_OPERATIONS');
    expect((err as Error).message).toContain('epoll backend');
    expect(t.live).toBe(OP_SLOT_MASK + 1);
    const last = (1 << OP_SLOT_BITS) + OP_SLOT_MASK; // generation 1 of the last slot
    expect(t.release(last)).toBe(op);
    expect(t.add(op) & OP_SLOT_MASK).toBe(OP_SLOT_MASK);
  });
});

describe('FlushObjects (the flush batch list of the native drivers)', () => {
  it('numbers a batch from 0, trims only for a whole-list call, and drops references when cleared', () => {
    const fo = new FlushObjects();
    const a = new Uint8Array(1);
    const b = new Uint8Array(2);
    expect(fo.push(a)).toBe(0);
    expect(fo.push('path')).toBe(1);
    expect(fo.push(b)).toBe(2);
    expect(fo.count).toBe(3);
    expect(fo.exact()).toEqual([a, 'path', b]);
    fo.clear();
    expect(fo.count).toBe(0);
    // The list keeps its length (no slow length store) but holds nothing from the last batch.
    expect(fo.list.length).toBe(3);
    expect(fo.list.every((x) => x === undefined)).toBe(true);
    expect(fo.push(b)).toBe(0);
    expect(fo.list[0]).toBe(b);
    expect(fo.exact()).toEqual([b]);
    expect(fo.list.length).toBe(1);
  });
});
