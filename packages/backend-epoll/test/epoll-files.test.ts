// The readiness-model file suite (tools/backend-testkit/src/files.ts) on epoll, plus the epoll-only
// tests (page-cache misses on the pool, O_DIRECT). MINISS_TEST_DIR should name a directory on a
// real disk file system (not tmpfs), so O_DIRECT and page-cache eviction work.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { createBackend, isSupported } from '@miniss/backend-epoll';
import { fileSuite } from '@miniss/backend-testkit/suites';

fileSuite({
  name: 'epoll',
  createBackend,
  isSupported,
  checkReadPath: (b) => {
    // Page-cache hits were served on the loop thread by preadv2(RWF_NOWAIT).
    expect(b.stats().nowaitReads).toBeGreaterThan(0);
  },
  extraTests: (ctx) => {
    it('readv/writev fail with EFAULT when a buffer was detached or shrunk between submit and flush', async () => {
      const { d, dir } = ctx();
      const path = join(dir, 'vectored.bin');
      writeFileSync(path, 'zzzzzzzzzzzz');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR, mode: 0 });
      const enc = (t: string): Uint8Array => new TextEncoder().encode(t);
      // Detached (transferred) after submit, before the driver's flush: it used to be skipped,
      // as a 0-length buffer, and the call wrote "AAAACCCC".
      const mid = enc('BBBB');
      const w = d.error({ op: 'writev', fd, buffers: [enc('AAAA'), mid, enc('CCCC')], offset: 0 });
      structuredClone(mid.buffer, { transfer: [mid.buffer as ArrayBuffer] });
      expect((await w).code).toBe('EFAULT');
      // Shrunk: a length-tracking view of a resizable ArrayBuffer.
      const resizable = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(4, {
        maxByteLength: 8,
      });
      const shrinking = new Uint8Array(resizable);
      const r = d.error({ op: 'readv', fd, buffers: [new Uint8Array(4), shrinking], offset: 0 });
      resizable.resize(2);
      expect((await r).code).toBe('EFAULT');
      const gone = new Uint8Array(4);
      const r2 = d.error({ op: 'readv', fd, buffers: [gone], offset: 0 });
      structuredClone(gone.buffer, { transfer: [gone.buffer as ArrayBuffer] });
      expect((await r2).code).toBe('EFAULT');
      expect(readFileSync(path, 'latin1')).toBe('zzzzzzzzzzzz');
      // Untouched buffers, zero-length ones included, still work.
      expect(await d.io({ op: 'writev', fd, buffers: [enc('AB'), new Uint8Array(0), enc('CD')], offset: 0 })).toBe(4);
      expect(readFileSync(path, 'latin1')).toBe('ABCDzzzzzzzz');
      await d.io({ op: 'close', fd });
    });

    it('reads through the thread pool on a page-cache miss (file evicted with fadvise DONTNEED)', async () => {
      const { b, d, dir } = ctx();
      const path = join(dir, 'cold.bin');
      const data = randomBytes(8 * 1024 * 1024);
      writeFileSync(path, data);
      execFileSync('sync', [path]);
      // GNU dd's iflag=nocache calls posix_fadvise(POSIX_FADV_DONTNEED) on the whole file.
      execFileSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      const poolBefore = b.stats().pool;
      const out = new Uint8Array(data.length);
      const n = await d.io({ op: 'read', fd, buffer: out, offset: 0, len: out.length });
      // A regular-file read may be short; finish it.
      let got = n;
      while (got < data.length) {
        const view = out.subarray(got);
        const r = await d.io({ op: 'read', fd, buffer: view, offset: got, len: view.length });
        expect(r).toBeGreaterThan(0);
        got += r;
      }
      expect(Buffer.from(out).equals(data)).toBe(true);
      expect(b.stats().pool).toBeGreaterThan(poolBefore);
      await d.io({ op: 'close', fd });
    });

    it('reads and writes with O_DIRECT through allocateBuffer (4096-aligned native memory)', async () => {
      const { b, d, dir } = ctx();
      const path = join(dir, 'direct.bin');
      const data = randomBytes(64 * 1024);
      writeFileSync(path, data);
      const buf = b.allocateBuffer(64 * 1024, 4096);
      expect(buf.byteLength).toBe(64 * 1024);
      expect(buf.every((x) => x === 0)).toBe(true);
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR | constants.O_DIRECT, mode: 0 });
      const n = await d.io({ op: 'read', fd, buffer: buf, offset: 0, len: buf.length });
      expect(n).toBe(data.length);
      expect(Buffer.from(buf).equals(data)).toBe(true);
      // O_DIRECT write of an aligned block, then read back with node:fs.
      buf.fill(0xab, 0, 4096);
      expect(await d.io({ op: 'write', fd, buffer: buf, offset: 4096, len: 4096 })).toBe(4096);
      await d.io({ op: 'fsync', fd });
      const back = readFileSync(path);
      expect(back.subarray(4096, 8192).every((x) => x === 0xab)).toBe(true);
      // A misaligned length is refused by the kernel with EINVAL: a coded error, not a crash.
      const err = await d.error({ op: 'read', fd, buffer: buf, offset: 1, len: 100 });
      expect(err.code).toBe('EINVAL');
      await d.io({ op: 'close', fd });
    });
  },
});
