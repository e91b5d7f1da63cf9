// The readiness-model file suite (tools/backend-testkit/src/files.ts) on kqueue, plus its own tests
// (allocateBuffer without O_DIRECT, the IOV_MAX limit).
import { randomBytes } from 'node:crypto';
import { constants, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { createBackend, isSupported } from '@miniss/backend-kqueue';
import { fileSuite } from '@miniss/backend-testkit/suites';

fileSuite({
  name: 'kqueue',
  createBackend,
  isSupported,
  checkReadPath: (b, reads) => {
    // No preadv2(RWF_NOWAIT) on the BSDs: every regular-file read ran on the thread pool.
    expect(b.stats().pool).toBeGreaterThanOrEqual(reads + 10);
  },
  extraTests: (ctx) => {
    it('reads into allocateBuffer memory (zeroed native memory); directIo is not claimed', async () => {
      const { b, d, dir } = ctx();
      expect(b.features.directIo).toBe(false);
      const path = join(dir, 'native-buf.bin');
      const data = randomBytes(64 * 1024);
      writeFileSync(path, data);
      const buf = b.allocateBuffer(64 * 1024, 4096);
      expect(buf.byteLength).toBe(64 * 1024);
      expect(buf.every((x) => x === 0)).toBe(true);
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR, mode: 0 });
      expect(await d.io({ op: 'read', fd, buffer: buf, offset: 0, len: buf.length })).toBe(data.length);
      expect(Buffer.from(buf).equals(data)).toBe(true);
      buf.fill(0xab, 0, 4096);
      expect(await d.io({ op: 'write', fd, buffer: buf, offset: 4096, len: 4096 })).toBe(4096);
      await d.io({ op: 'fsync', fd });
      expect(readFileSync(path).subarray(4096, 8192).every((x) => x === 0xab)).toBe(true);
      expect(() => b.allocateBuffer(100, 3)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      await d.io({ op: 'close', fd });
    });
  },
  moreTests: (ctx) => {
    it('readv/writev take up to IOV_MAX (1024) buffers; more are refused at submit', async () => {
      const { b, d, dir } = ctx();
      const path = join(dir, 'iov.txt');
      writeFileSync(path, 'abc');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR, mode: 0 });
      try {
        const many = Array.from({ length: 1025 }, () => new Uint8Array(1));
        expect(() => b.submit({ op: 'readv', fd, buffers: many, offset: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
        expect(await d.io({ op: 'readv', fd, buffers: many.slice(0, 1024), offset: 0 })).toBe(3);
        expect(Buffer.concat(many.slice(0, 3)).toString()).toBe('abc');
      } finally {
        await d.io({ op: 'close', fd });
      }
    });
  },
});
