// Helpers shared by the backend packages' tests (@miniss/backend-epoll, -kqueue, -iouring): a minimal
// Driver that runs one IoBackend the way core's Runtime does, TCP helpers made through the backend
// (listen, connect, sendAll, recvExactly), openFdCount for leak checks and eventually for polling.
import { constants, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import type { IoBackend, IoCompletion, IoOperation } from '@miniss/core';

const FD_DIR = existsSync('/proc/self/fd') ? '/proc/self/fd' : '/dev/fd';

/** Open descriptors of this process (Linux: /proc/self/fd; macOS and the BSDs: /dev/fd). */
export function openFdCount(): number {
  return readdirSync(FD_DIR).length;
}

/** Waits until `check()` is true, polling every few ms, up to `ms`. */
export async function eventually(check: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A minimal runtime over one backend, as core's Runtime drives it: submit, one flush per
 * microtask batch, reap from onReady with poll(0) until empty. Counts completions per id so a
 * test can assert each op completes exactly once.
 */
export class Driver {
  readonly completions = new Map<number, number>();
  readonly #pending = new Map<number, { resolve: (n: number) => void; reject: (e: unknown) => void }>();
  #flushScheduled = false;

  constructor(readonly backend: IoBackend) {
    backend.onReady(() => this.reap());
  }

  submit(op: IoOperation): { id: number; done: Promise<number> } {
    const id = this.backend.submit(op);
    const done = new Promise<number>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => {
        this.#flushScheduled = false;
        this.backend.flush();
      });
    }
    return { id, done };
  }

  io(op: IoOperation): Promise<number> {
    return this.submit(op).done;
  }

  reap(): void {
    for (;;) {
      const batch: IoCompletion[] = this.backend.poll(0);
      if (batch.length === 0) return;
      for (const c of batch) {
        this.completions.set(c.handle, (this.completions.get(c.handle) ?? 0) + 1);
        const p = this.#pending.get(c.handle);
        if (p === undefined) continue;
        this.#pending.delete(c.handle);
        if (typeof c.result === 'number') p.resolve(c.result);
        else p.reject(c.result);
      }
    }
  }

  /** Resolves to the error an operation rejects with (fails the test if it succeeds). */
  async error(op: IoOperation): Promise<Error & { code?: string; errno?: number; syscall?: string; fd?: number }> {
    try {
      const r = await this.io(op);
      throw new Error(`expected ${op.op} to fail, it returned ${r}`);
    } catch (err) {
      return err as Error & { code?: string };
    }
  }

  get pending(): number {
    return this.#pending.size;
  }
}

/** Writes `pages` 4 KiB pages to `path`, page k filled with the byte k (so a read shows which page it got). */
export function writeIndexedPages(path: string, pages: number): void {
  const data = Buffer.alloc(pages * 4096);
  for (let k = 0; k < pages; k++) data.fill(k, k * 4096, (k + 1) * 4096);
  writeFileSync(path, data);
}

/**
 * Batches of changing size (64, 3, 1, 0, 2, 40, ...) of reads, readvs of two buffers and NOPs,
 * each batch submitted at once (one flush), on a file in `dir` whose 4 KiB pages each hold their
 * own index: every read must land in its own buffers whatever the batch before it held (a
 * backend's driver hands a batch's buffers to its addon in a list reused from batch to batch).
 * Throws on the first buffer that holds another page.
 */
export async function checkChangingBatches(d: Driver, dir: string): Promise<void> {
  const path = join(dir, 'pages.bin');
  const pages = 256;
  writeIndexedPages(path, pages);
  const holds = (buf: Uint8Array, p: number, what: string): void => {
    if (!buf.every((x) => x === p)) throw new Error(`${what}: expected page ${p}, got bytes starting ${buf[0]}`);
  };
  const fd = await d.io({ op: 'open', path, flags: constants.O_RDONLY, mode: 0 });
  let seed = 99;
  const page = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) % pages;
  try {
    for (const size of [64, 3, 1, 0, 2, 40, 5, 1, 64, 2, 3, 0, 17]) {
      const checks: Array<Promise<void>> = [];
      // One batch (no await in between): reads, a readv of two buffers every 4th, NOPs between.
      for (let i = 0; i < size; i++) {
        const p = page();
        if (i % 4 === 3) {
          const a = new Uint8Array(4096);
          const c = new Uint8Array(4096);
          checks.push(
            d.io({ op: 'readv', fd, buffers: [a, c], offset: p * 4096 }).then((n) => {
              if (n !== (p + 1 < pages ? 8192 : 4096)) throw new Error(`readv at page ${p} returned ${n}`);
              holds(a, p, 'readv, first buffer');
              if (p + 1 < pages) holds(c, p + 1, 'readv, second buffer');
            }),
          );
        } else {
          const buf = new Uint8Array(4096);
          checks.push(
            d.io({ op: 'read', fd, buffer: buf, offset: p * 4096, len: 4096 }).then((n) => {
              if (n !== 4096) throw new Error(`read at page ${p} returned ${n}`);
              holds(buf, p, 'read');
            }),
          );
        }
        if (i % 5 === 0) checks.push(d.io({ op: 'nop' }).then(() => undefined));
      }
      if (size === 0) checks.push(d.io({ op: 'nop' }).then(() => undefined));
      await Promise.all(checks);
    }
  } finally {
    await d.io({ op: 'close', fd });
  }
}

/** A listening TCP socket on 127.0.0.1 (ephemeral port) made through the backend. */
export async function listen(d: Driver, opts: { backlog?: number; reusePort?: boolean; port?: number } = {}): Promise<{ fd: number; port: number }> {
  const fd = await d.io({ op: 'socket', family: 4 });
  await d.io({ op: 'listen', fd, addr: { host: '127.0.0.1', port: opts.port ?? 0 }, backlog: opts.backlog ?? 511, reusePort: opts.reusePort ?? false });
  return { fd, port: d.backend.address(fd, 'local').port };
}

export async function connect(d: Driver, port: number): Promise<number> {
  const fd = await d.io({ op: 'socket', family: 4 });
  await d.io({ op: 'connect', fd, addr: { host: '127.0.0.1', port } });
  return fd;
}

/** Sends all of `buf` with the backend (looping over short sends). */
export async function sendAll(d: Driver, fd: number, buf: Uint8Array): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const chunk = buf.subarray(off);
    off += await d.io({ op: 'send', fd, buffer: chunk, len: chunk.length });
  }
}

/** Receives exactly n bytes (or fewer at EOF). */
export async function recvExactly(d: Driver, fd: number, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const view = out.subarray(off);
    const r = await d.io({ op: 'recv', fd, buffer: view, len: view.length });
    if (r === 0) return out.subarray(0, off);
    off += r;
  }
  return out;
}

/**
 * Waits for a worker to end by itself, then terminates it. Node 20 sometimes takes seconds to end
 * a worker that used dynamic import() (seen with a one-line ESM file and no miniss code at all),
 * which made tests hit vitest's 30 s timeout now and then.
 */
export async function exitOrTerminate(w: Worker): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const exited = await Promise.race([
    new Promise<boolean>((r) => w.once('exit', () => r(true))),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), 2000);
    }),
  ]);
  clearTimeout(timer);
  if (!exited) await w.terminate();
}

/** Rejects when `p` has not settled within `ms` (naming `what`), so a hang fails one test quickly. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    }),
  ]);
}
