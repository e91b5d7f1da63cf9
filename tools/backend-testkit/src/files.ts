// The file tests every readiness-model backend (epoll, kqueue) must pass, over a backend factory.
// Test names carry the backend's name (describe title).
import { randomBytes } from 'node:crypto';
import { constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IoError } from '@miniss/core';
import { Driver, checkChangingBatches } from './index.js';
import { perTestBackend } from './per-test.js';
import type { ReadinessBackend } from './sockets.js';

/** One readiness-model backend under the file suite. */
export interface FileCase<B extends ReadinessBackend> {
  /** Backend name as it appears in test names: 'epoll', 'kqueue'. */
  name: string;
  createBackend(): B;
  isSupported(): { ok: boolean; reason?: string };
  /** After `reads` positional reads and a sequential pass over a cached file: where did they run? */
  checkReadPath(b: B, reads: number): void;
  /** More tests right after the first one (same per-test backend, driver and fd-leak check). */
  extraTests?(ctx: () => { b: B; d: Driver; dir: string }): void;
  /** More tests before the last one (same per-test backend, driver and fd-leak check). */
  moreTests?(ctx: () => { b: B; d: Driver; dir: string }): void;
}

export function fileSuite<B extends ReadinessBackend>(k: FileCase<B>): void {
  const support = k.isSupported();
  if (!support.ok) console.warn(`${k.name} file tests skipped: ${support.reason}`);

  // MINISS_TEST_DIR: a directory on a real disk file system (not tmpfs), so O_DIRECT and page-cache
  // eviction work (epoll's extra tests).
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(process.env.MINISS_TEST_DIR ?? tmpdir(), `miniss-${k.name}-`));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe.runIf(support.ok)(`${k.name} backend: files`, () => {
    let b: B;
    let d: Driver;
    perTestBackend(() => k.createBackend(), (nb, nd) => {
      b = nb;
      d = nd;
    });

    it('reads a file byte-for-byte as node:fs sees it, at offsets and at the current position', async () => {
      const path = join(dir, 'data.bin');
      const data = randomBytes(1024 * 1024 + 123);
      writeFileSync(path, data);
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      // Positional reads of uneven chunks, many in flight at once.
      const chunk = 65536 + 7;
      const parts: Promise<number>[] = [];
      const out = new Uint8Array(data.length);
      for (let off = 0; off < data.length; off += chunk) {
        const view = out.subarray(off, Math.min(off + chunk, data.length));
        parts.push(d.io({ op: 'read', fd, buffer: view, offset: off, len: view.length }));
      }
      const got = await Promise.all(parts);
      expect(got.reduce((a, n) => a + n, 0)).toBe(data.length);
      expect(Buffer.from(out).equals(data)).toBe(true);
      // Sequential reads at the current position (offset -1), one at a time.
      const seq = new Uint8Array(data.length);
      let pos = 0;
      for (;;) {
        const view = seq.subarray(pos, Math.min(pos + 100_000, seq.length));
        const n = await d.io({ op: 'read', fd, buffer: view, offset: -1, len: view.length });
        if (n === 0) break;
        pos += n;
      }
      expect(pos).toBe(data.length);
      expect(Buffer.from(seq).equals(data)).toBe(true);
      // At EOF: 0.
      expect(await d.io({ op: 'read', fd, buffer: new Uint8Array(10), offset: data.length, len: 10 })).toBe(0);
      // Where the reads ran (epoll: page-cache hits on the loop thread; kqueue: all on the pool).
      k.checkReadPath(b, parts.length);
      await d.io({ op: 'close', fd });
    });

    k.extraTests?.(() => ({ b, d, dir }));

    it('writes, appends at the current position, writev/readv, fsync and datasync', async () => {
      const path = join(dir, 'w.txt');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, mode: 0o644 });
      const enc = new TextEncoder();
      expect(await d.io({ op: 'write', fd, buffer: enc.encode('hello '), offset: -1, len: 6 })).toBe(6);
      expect(await d.io({ op: 'write', fd, buffer: enc.encode('world'), offset: -1, len: 5 })).toBe(5);
      expect(await d.io({ op: 'writev', fd, buffers: [enc.encode('!'), enc.encode(' and'), enc.encode(' more')], offset: -1 })).toBe(10);
      expect(await d.io({ op: 'write', fd, buffer: enc.encode('HELLO'), offset: 0, len: 5 })).toBe(5);
      await d.io({ op: 'fsync', fd });
      await d.io({ op: 'fsync', fd, datasync: true });
      expect(readFileSync(path, 'utf8')).toBe('HELLO world! and more');
      const a = new Uint8Array(6);
      const c = new Uint8Array(100);
      expect(await d.io({ op: 'readv', fd, buffers: [a, c], offset: 0 })).toBe(21);
      expect(Buffer.from(a).toString()).toBe('HELLO ');
      expect(Buffer.from(c.subarray(0, 15)).toString()).toBe('world! and more');
      await d.io({ op: 'close', fd });
    });

    it('reports open errors with code, errno, syscall and path', async () => {
      const path = join(dir, 'does-not-exist');
      const err = await d.error({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      expect(err).toBeInstanceOf(IoError);
      expect(err.code).toBe('ENOENT');
      expect(err.errno).toBe(-osConstants.errno.ENOENT);
      expect(err.syscall).toBe('open');
      expect((err as IoError).path).toBe(path);
    });

    it('closes no fd it does not own: reading a closed or bogus fd is EBADF', async () => {
      const path = join(dir, 'x.txt');
      writeFileSync(path, 'abc');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      await d.io({ op: 'close', fd });
      // Right after the close, in one batch (one flush, no await in between), so nothing else in
      // this process can have been handed the number again.
      const onClosed = await Promise.all(
        [
          { op: 'read', fd, buffer: new Uint8Array(3), offset: 0, len: 3 },
          { op: 'write', fd, buffer: new Uint8Array(3), offset: 0, len: 3 },
          { op: 'fsync', fd },
          { op: 'read', fd, buffer: new Uint8Array(3), offset: -1, len: 3 },
        ].map((op) => d.error(op as never)),
      );
      expect(onClosed.map((e) => e.code)).toEqual(['EBADF', 'EBADF', 'EBADF', 'EBADF']);
      for (const bad of [-1, 987654, 2 ** 40]) {
        const e1 = await d.error({ op: 'read', fd: bad, buffer: new Uint8Array(3), offset: 0, len: 3 });
        expect(e1.code).toBe('EBADF');
        const e2 = await d.error({ op: 'write', fd: bad, buffer: new Uint8Array(3), offset: 0, len: 3 });
        expect(e2.code).toBe('EBADF');
        const e3 = await d.error({ op: 'fsync', fd: bad });
        expect(e3.code).toBe('EBADF');
        const e4 = await d.error({ op: 'close', fd: bad });
        expect(e4.code).toBe('EBADF');
      }
    });

    it('refuses a buffer detached between submit and flush with EFAULT instead of touching it', async () => {
      const path = join(dir, 'y.txt');
      writeFileSync(path, 'abcdef');
      const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
      const buf = new Uint8Array(6);
      const p = d.io({ op: 'read', fd, buffer: buf, offset: 0, len: 6 });
      structuredClone(buf.buffer, { transfer: [buf.buffer] }); // detaches before the flush microtask
      await expect(p).rejects.toMatchObject({ code: 'EFAULT' });
      await d.io({ op: 'close', fd });
    });

    it('batches of changing size hand every operation its own buffers (the reused object list)', async () => {
      await checkChangingBatches(d, dir);
    });

    k.moreTests?.(() => ({ b, d, dir }));

    it('rejects malformed operations at submit with INVALID_ARGUMENT', () => {
      expect(() => b.submit({ op: 'read', fd: 0, buffer: new Uint8Array(4), offset: 0, len: 5 })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      );
      expect(() => b.submit({ op: 'read', fd: 0, buffer: new Uint8Array(4), offset: -2, len: 1 })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      );
      expect(() => b.submit({ op: 'bogus' } as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      expect(b.inFlight).toBe(0);
    });
  });
}
