// Operations that change after submit (which validated them): flush, poll and cancel read them
// again, and a getter that throws, or a field that is no longer what it was, must cost that
// operation alone. Before, flush threw and dropped the whole queued batch (never completed,
// counted in flight forever), and poll or cancel threw after releasing the slots they had taken,
// losing the other operations' completions.
import { openSync, closeSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackend, isSupported, type EpollBackend } from '@miniss/backend-epoll';
import type { IoCompletion, IoOperation } from '@miniss/core';
import { perTestBackend } from '@miniss/backend-testkit/suites';

const support = isSupported();
if (!support.ok) console.warn(`epoll changed-operation tests skipped: ${support.reason}`);

type Outcome = number | string;

describe.runIf(support.ok)('epoll backend: operations changed after submit', () => {
  let b: EpollBackend;
  let dir = '';
  let file = '';
  perTestBackend(createBackend, (nb) => {
    b = nb;
    b.onReady(null); // these tests poll by hand, catching what poll throws
  });

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'miniss-epoll-changed-'));
    file = join(dir, 'data.bin');
    writeFileSync(file, 'abcdefghijklmnop');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Polls (and flushes) until every id has completed or `ms` passed; a poll that throws is recorded. */
  async function collect(ids: number[], ms = 2000): Promise<{ got: Map<number, IoCompletion>; threw: string[] }> {
    const got = new Map<number, IoCompletion>();
    const threw: string[] = [];
    const end = Date.now() + ms;
    while (Date.now() < end && !ids.every((id) => got.has(id))) {
      try {
        b.flush();
        for (const c of b.poll(0)) got.set(c.handle, c);
      } catch (e) {
        threw.push((e as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    return { got, threw };
  }

  const outcome = (c: IoCompletion | undefined): Outcome | undefined =>
    c === undefined ? undefined : typeof c.result === 'number' ? c.result : ((c.result as { code?: string }).code ?? c.result.message);

  /** A read of `fd` whose fields become throwing getters once `arm()` is called. */
  function trapRead(fd: number, buf: Uint8Array, field: 'buffer' | 'fd'): { op: IoOperation; arm: () => void } {
    let armed = false;
    const op = {
      op: 'read' as const,
      len: buf.length,
      offset: 0,
      get fd(): number {
        if (armed && field === 'fd') throw new Error('the fd getter throws');
        return fd;
      },
      get buffer(): Uint8Array {
        if (armed && field === 'buffer') throw new Error('the buffer getter throws');
        return buf;
      },
    };
    return { op, arm: () => (armed = true) };
  }

  it('flush: an operation that no longer encodes fails alone with EINVAL; the rest of the batch runs', async () => {
    const fd = openSync(file, 'r');
    try {
      const good1 = b.submit({ op: 'nop' });
      const bad = trapRead(fd, new Uint8Array(4), 'buffer');
      const badId = b.submit(bad.op);
      const buf = new Uint8Array(4);
      const good2 = b.submit({ op: 'read', fd, buffer: buf, offset: 2, len: 4 });
      bad.arm();
      expect(() => b.flush()).not.toThrow();
      const { got, threw } = await collect([good1, badId, good2]);
      expect(threw).toEqual([]);
      expect([outcome(got.get(good1)), outcome(got.get(badId)), outcome(got.get(good2))]).toEqual([0, 'EINVAL', 4]);
      expect(Buffer.from(buf).toString()).toBe('cdef');
      expect(b.inFlight).toBe(0);
      // Still usable.
      const later = b.submit({ op: 'nop' });
      expect(outcome((await collect([later])).got.get(later))).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('flush: a readv whose buffer list throws half-way leaves nothing behind for the next operation of the batch', async () => {
    const fd = openSync(file, 'r');
    try {
      let armed = false;
      const buffers = [new Uint8Array(2), new Uint8Array(2)];
      const iterate = buffers[Symbol.iterator].bind(buffers);
      Object.defineProperty(buffers, Symbol.iterator, {
        value: function* () {
          let i = 0;
          for (const x of iterate()) {
            if (armed && i++ === 1) throw new Error('the buffer list throws');
            yield x;
          }
        },
      });
      const badId = b.submit({ op: 'readv', fd, buffers, offset: 0 });
      const buf = new Uint8Array(3);
      const next = b.submit({ op: 'read', fd, buffer: buf, offset: 10, len: 3 });
      armed = true;
      expect(() => b.flush()).not.toThrow();
      const { got, threw } = await collect([badId, next]);
      expect(threw).toEqual([]);
      expect([outcome(got.get(badId)), outcome(got.get(next))]).toEqual(['EINVAL', 3]);
      expect(Buffer.from(buf).toString()).toBe('klm');
      expect(buffers[0]!.every((x) => x === 0)).toBe(true);
      expect(b.inFlight).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('poll: one operation whose getter throws does not lose the completions reaped with it', async () => {
    const fd = openSync(file, 'r');
    try {
      const ids = [b.submit({ op: 'nop' })];
      const okRead = trapRead(fd, new Uint8Array(8), 'buffer');
      ids.push(b.submit(okRead.op));
      const failed = trapRead(-1, new Uint8Array(8), 'fd'); // EBADF: its error names the fd
      ids.push(b.submit(failed.op));
      ids.push(b.submit({ op: 'nop' }));
      b.flush();
      okRead.arm();
      failed.arm();
      await new Promise((r) => setTimeout(r, 20));
      const { got, threw } = await collect(ids);
      expect(threw).toEqual([]);
      expect(ids.map((id) => outcome(got.get(id)))).toEqual([0, 8, 'EBADF', 0]);
      expect(got.get(ids[2]!)!.result).toMatchObject({ code: 'EBADF', syscall: 'read' });
      expect(b.inFlight).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('cancel: a queued operation whose getter throws is still cancelled, and completes once', async () => {
    const trap = trapRead(0, new Uint8Array(4), 'buffer');
    const id = b.submit(trap.op);
    const other = b.submit({ op: 'nop' });
    trap.arm();
    expect(b.cancel(id)).toBe(true);
    const { got, threw } = await collect([id, other]);
    expect(threw).toEqual([]);
    expect([outcome(got.get(id)), outcome(got.get(other))]).toEqual(['ECANCELED', 0]);
    expect(b.inFlight).toBe(0);
  });
});
