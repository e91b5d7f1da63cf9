/**
 * Reads and writes without a position: the file keeps its own position (io_uring's offset -1 is
 * not reliable after a short write), queues such calls so each starts where the last ended, and
 * falls back to the kernel's position on fds that cannot seek.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { File, Runtime, probeBackend, type BackendName } from '@miniss/core';

const root = fileURLToPath(new URL('../../..', import.meta.url));
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'miniss-cursor-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const backends = (['node', 'io_uring', 'epoll'] as BackendName[]).map((name) => ({ name, probe: probeBackend(name) }));

describe.each(backends)('position-less file I/O on the $name backend', ({ name, probe }) => {
  const run = <T>(fn: () => Promise<T>): Promise<T> => new Runtime({ backend: name }).blockOn(fn);

  it.runIf(probe.ok)(`concurrent calls run in call order, each after the last (${probe.reason ?? 'available'})`, async () => {
    const path = join(dir, `order-${name}.bin`);
    const got = await run(async () => {
      const f = await File.open(path, { read: true, write: true, create: true, truncate: true });
      const parts = ['one-', 'two-', 'three-', 'four'].map((t) => Buffer.from(t));
      const ns = await Promise.all([f.write(parts[0]!), f.writev([parts[1]!, parts[2]!]), f.write(parts[3]!, -1)]);
      // A positioned call neither uses nor moves the position.
      await f.write(Buffer.from('X'), 100);
      const a = Buffer.alloc(4);
      const b = Buffer.alloc(3);
      const reads = await Promise.all([f.read(a, 0), f.read(Buffer.alloc(1)), f.readv([a, b], 0)]);
      await f.close();
      return { ns, reads, a: a.toString(), b: b.toString() };
    });
    expect(got.ns).toEqual([4, 10, 4]);
    expect(fs.readFileSync(path).subarray(0, 18).toString()).toBe('one-two-three-four');
    // The position-less read is at the end of what was written (18), before the 'X' at 100: a hole of zeros.
    expect(got.reads).toEqual([4, 1, 7]);
    expect(got.a + got.b).toBe('one-two');
  });

  it.runIf(probe.ok)(`an abort while queued rejects at once and the next call still starts in place (${probe.reason ?? 'available'})`, async () => {
    const path = join(dir, `abort-${name}.bin`);
    const got = await run(async () => {
      const f = await File.open(path, { write: true, create: true, truncate: true });
      const ac = new AbortController();
      const first = f.write(Buffer.from('first-'));
      const aborted = f.write(Buffer.from('never'), undefined, { signal: ac.signal }).then(
        () => 'written',
        (e: Error & { code?: string }) => `${e.code}: ${e.message}`,
      );
      const third = f.write(Buffer.from('third'));
      ac.abort(new Error('stop'));
      const r = [await first, await aborted, await third];
      await f.close();
      return r;
    });
    expect(got).toEqual([6, 'CANCELLED: the operation was aborted: stop', 5]);
    expect(fs.readFileSync(path, 'utf8')).toBe('first-third');
  });

  it.runIf(probe.ok)(`calls queued behind a close reject with EBADF (${probe.reason ?? 'available'})`, async () => {
    const codes = await run(async () => {
      const f = await File.open(join(dir, `close-${name}.bin`), { write: true, create: true, truncate: true });
      const calls = [f.write(Buffer.from('a')), f.write(Buffer.from('b')), f.write(Buffer.from('c'))].map((p) =>
        p.then(
          (n) => n,
          (e: { code?: string }) => e.code,
        ),
      );
      await f.close();
      return Promise.all(calls);
    });
    // The first had started: it finishes, or the close cancels it (the native backends can).
    expect([1, 'ECANCELED']).toContain(codes[0]);
    expect(codes.slice(1)).toEqual(['EBADF', 'EBADF']);
  });

  it.runIf(probe.ok && process.platform === 'linux')(`a FIFO (no position) is read in order through the kernel's position (${probe.reason ?? 'available'})`, async () => {
    const fifo = join(dir, `fifo-${name}`);
    spawnSync('mkfifo', [fifo]);
    // O_RDWR on a FIFO opens without waiting for the other end (Linux), and keeps it open.
    const w = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      fs.writeSync(w, 'abcdef');
      const got = await run(async () => {
        const f = await File.open(fifo, { read: true });
        const a = Buffer.alloc(3);
        const b = Buffer.alloc(3);
        const ns = [await f.read(a), await f.read(b)];
        await f.close();
        return { ns, s: a.toString() + b.toString() };
      });
      expect(got).toEqual({ ns: [3, 3], s: 'abcdef' });
    } finally {
      fs.closeSync(w);
    }
  });

  it.runIf(probe.ok && process.platform === 'linux')(`writeAll stops with EFBIG at the file size limit, never overwriting (${probe.reason ?? 'available'})`, () => {
    const path = join(dir, `limit-${name}.bin`);
    const code = `
      import { File, Runtime } from '@miniss/core';
      const rt = new Runtime({ backend: '${name}' });
      const out = await rt.blockOn(async () => {
        const f = await File.open(${JSON.stringify(path)}, { read: true, write: true, create: true, truncate: true });
        const first = await f.write(Buffer.alloc(20000, 0x61));
        const after = await f.read(new Uint8Array(100));
        const all = await f.writeAll(Buffer.alloc(20000, 0x62)).then(() => 'resolved', (e) => e.code);
        await f.close();
        return [first, after, all].join(' ');
      });
      console.log(out);
    `;
    // A file size limit of 8 KiB (ulimit -f counts 1 KiB blocks); Node ignores SIGXFSZ, so the write fails with EFBIG.
    const r = spawnSync('bash', ['-c', `ulimit -f 8 && exec "${process.execPath}" --input-type=module -e "$0"`, code], {
      cwd: root,
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toBe('');
    // The short write moved the position: the read there finds the end of the file, and
    // writeAll's next write fails instead of overwriting the same 8 KiB again.
    expect(r.stdout.trim()).toBe('8192 0 EFBIG');
    expect(fs.statSync(path).size).toBe(8192);
  });
});
