// Helpers shared by the backend packages' tests (@miniss/backend-epoll, -kqueue, -iouring): a minimal
// Driver that runs one IoBackend the way core's Runtime does, TCP helpers made through the backend
// (listen, connect, sendAll, recvExactly), openFdCount for leak checks and eventually for polling.
import { existsSync, readdirSync } from 'node:fs';
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
