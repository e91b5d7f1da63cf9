/**
 * Property-based fuzzing of one IoBackend at the native boundary (run as its own process, so that
 * closed fd numbers reused by the fuzz can only hit this process's own files, never a test runner's
 * pipes): `node dist/fuzz-backend.js <backend> <seed> <runs> <dir>`.
 *
 * Each fast-check run opens a few real files and a connected socket pair, then submits a random
 * sequence of operations over valid, closed and bogus fds (negative, huge), with random lengths and
 * offsets (negative, huge, unaligned, on an O_DIRECT file where the backend supports it), random
 * cancels, and closes racing in-flight operations. Properties checked per run:
 *  - `submit` either returns an id or throws an Error with a string `code`;
 *  - every submitted operation completes within a bound, with a number >= 0 or an Error with a `code`;
 *  - after everything is closed, /proc/self/fd holds no more entries than before the run.
 * Across all runs: RSS stays bounded. Prints one JSON line with the result and exits 0 only on success.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { NodeBackend, probeBackend, type BackendName, type IoBackend, type IoOperation } from '@miniss/core';

const [name, seedArg, runsArg, dir] = process.argv.slice(2) as [BackendName, string, string, string];
const seed = Number(seedArg);
const runs = Number(runsArg);

function createBackend(): IoBackend {
  if (name === 'node') return new NodeBackend();
  const p = probeBackend(name);
  if (!p.ok || !p.module) throw new Error(`backend ${name} does not load: ${p.reason}`);
  return p.module.createBackend();
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
const hasCode = (e: unknown): boolean => e instanceof Error && typeof (e as { code?: unknown }).code === 'string';

type FdKind = 'file' | 'direct' | 'sockA' | 'sockB' | 'closed' | 'negative' | 'huge';
type Step =
  | { kind: 'read' | 'write'; fd: FdKind; len: number; offset: number; bufSize: number; bufOffset: number }
  | { kind: 'recv' | 'send'; fd: FdKind; len: number; bufSize: number }
  | { kind: 'fsync' | 'close' | 'shutdown' | 'accept'; fd: FdKind }
  | { kind: 'cancel'; back: number }
  | { kind: 'nop' | 'timeout'; ms: number }
  | { kind: 'poll' };

const fdKind = fc.constantFrom<FdKind>('file', 'direct', 'sockA', 'sockB', 'closed', 'negative', 'huge');
const length = fc.oneof(
  fc.integer({ min: 0, max: 8192 }),
  fc.constantFrom(-1, -4096, 4096, 4095, 512, 2 ** 31, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER, 0.5, Number.NaN),
);
const offset = fc.oneof(
  fc.integer({ min: 0, max: 1 << 20 }),
  fc.constantFrom(-1, -2, 1, 511, 4096, 2 ** 40, 2 ** 53, Number.MAX_SAFE_INTEGER, 1.5, Number.POSITIVE_INFINITY),
);
const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constantFrom<'read' | 'write'>('read', 'write'),
    fd: fdKind,
    len: length,
    offset,
    bufSize: fc.integer({ min: 0, max: 8192 }),
    bufOffset: fc.integer({ min: 0, max: 17 }),
  }),
  fc.record({ kind: fc.constantFrom<'recv' | 'send'>('recv', 'send'), fd: fdKind, len: length, bufSize: fc.integer({ min: 0, max: 4096 }) }),
  fc.record({ kind: fc.constantFrom<'fsync' | 'close' | 'shutdown' | 'accept'>('fsync', 'close', 'shutdown', 'accept'), fd: fdKind }),
  fc.record({ kind: fc.constant<'cancel'>('cancel'), back: fc.integer({ min: 0, max: 8 }) }),
  fc.record({ kind: fc.constantFrom<'nop' | 'timeout'>('nop', 'timeout'), ms: fc.constantFrom(0, 1, 5, -1) }),
  fc.record({ kind: fc.constant<'poll'>('poll') }),
);

const BOUND_MS = 5000;
const stats = { submitted: 0, refused: 0, ok: 0, errors: {} as Record<string, number> };

async function runOnce(backend: IoBackend, steps: Step[], iter: number): Promise<void> {
  const before = openFds();
  // Real fds owned by this run: a file, an O_DIRECT file when supported, a connected socket pair.
  const path = join(dir, `f-${name}-${iter}`);
  const fileFd = fs.openSync(path, 'w+');
  fs.writeSync(fileFd, Buffer.alloc(16384, 7));
  let directFd = -1;
  if (backend.features.directIo) {
    try {
      directFd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    } catch {
      directFd = -1; // tmpfs refuses O_DIRECT: the 'direct' kind then means the plain file
    }
  }
  const [sockA, sockB] = await socketPair(backend);
  // A just-closed fd number (taken after the sockets, so none of the run's live fds reuses it).
  const closedFd = fs.openSync(path, 'r');
  fs.closeSync(closedFd);
  const fds: Record<FdKind, number> = {
    file: fileFd,
    direct: directFd >= 0 ? directFd : fileFd,
    sockA,
    sockB,
    closed: closedFd,
    negative: -1,
    huge: 1_000_000,
  };
  const closedByFuzz = new Set<number>();
  const confirmedClosed = new Set<number>();
  const closeOps = new Map<number, number>();
  const pending = new Map<number, { op: string; at: number }>();
  const ids: number[] = [];
  const problems: string[] = [];
  const reap = (): void => {
    for (const c of backend.poll(0)) {
      const p = pending.get(c.handle);
      if (!p) {
        problems.push(`completion for unknown handle ${c.handle}`);
        continue;
      }
      pending.delete(c.handle);
      const closing = closeOps.get(c.handle);
      if (closing !== undefined && c.result === 0) confirmedClosed.add(closing);
      if (typeof c.result === 'number') {
        stats.ok++;
        if (!(c.result >= 0) || !Number.isInteger(c.result)) problems.push(`${p.op}: bad result ${c.result}`);
      } else if (hasCode(c.result)) {
        stats.errors[(c.result as unknown as { code: string }).code] = (stats.errors[(c.result as unknown as { code: string }).code] ?? 0) + 1;
      } else {
        problems.push(`${p.op}: error without a code: ${String(c.result)}`);
      }
    }
  };
  const submit = (op: IoOperation): void => {
    try {
      const id = backend.submit(op);
      if (op.op === 'close') closeOps.set(id, op.fd);
      pending.set(id, { op: op.op, at: Date.now() });
      stats.submitted++;
      ids.push(id);
    } catch (e) {
      stats.refused++;
      if (!hasCode(e)) problems.push(`submit ${op.op} threw without a code: ${String(e)}`);
    }
  };
  for (const s of steps) {
    switch (s.kind) {
      case 'read':
      case 'write': {
        const fd = fds[s.fd];
        if (closedByFuzz.has(fd) && s.fd !== 'closed') break; // its number may be reused by now
        const buf = new Uint8Array(s.bufSize + s.bufOffset).subarray(s.bufOffset);
        submit({ op: s.kind, fd, buffer: buf, offset: s.offset, len: s.len });
        break;
      }
      case 'recv':
      case 'send': {
        const fd = fds[s.fd];
        if (closedByFuzz.has(fd)) break;
        submit({ op: s.kind, fd, buffer: new Uint8Array(s.bufSize), len: s.len });
        break;
      }
      case 'fsync':
      case 'shutdown':
      case 'accept': {
        const fd = fds[s.fd];
        if (closedByFuzz.has(fd)) break;
        if (s.kind === 'fsync') submit({ op: 'fsync', fd });
        else if (s.kind === 'shutdown') submit({ op: 'shutdown', fd, how: 2 });
        else submit({ op: 'accept', fd });
        break;
      }
      case 'close': {
        // Close one of the run's own fds while operations on it may be in flight; never twice,
        // and never a number that is not ours (closed/bogus numbers get a close op only when bogus).
        const fd = fds[s.fd];
        if (s.fd === 'closed' || closedByFuzz.has(fd)) break;
        if (s.fd === 'negative' || s.fd === 'huge') {
          submit({ op: 'close', fd });
          break;
        }
        closedByFuzz.add(fd);
        submit({ op: 'close', fd });
        break;
      }
      case 'cancel': {
        const id = ids[ids.length - 1 - s.back];
        if (id !== undefined) {
          const r = backend.cancel(id);
          if (typeof r !== 'boolean') problems.push(`cancel returned ${String(r)}`);
        }
        break;
      }
      case 'nop':
        submit({ op: 'nop' });
        break;
      case 'timeout':
        submit({ op: 'timeout', ms: s.ms });
        break;
      case 'poll':
        backend.flush();
        reap();
        break;
    }
  }
  backend.flush();
  // Unblock operations that wait on the sockets (recv/accept) by shutting the pair down, then reap.
  for (const fd of [sockA, sockB]) if (!closedByFuzz.has(fd)) submit({ op: 'shutdown', fd, how: 2 });
  backend.flush();
  const deadline = Date.now() + BOUND_MS;
  while (pending.size > 0 && Date.now() < deadline) {
    reap();
    if (pending.size > 0) await new Promise((r) => setTimeout(r, 1));
  }
  if (pending.size > 0) {
    // An accept on a connected socket (EINVAL on Linux) settles; anything left is a hang.
    problems.push(`${pending.size} operations did not settle within ${BOUND_MS} ms: ${[...pending.values()].map((p) => p.op).join(',')}`);
  }
  // Own fds whose close op did not succeed (cancelled, or never submitted) are closed here: the
  // sockets through the backend (the node backend keeps a libuv handle behind each), files with fs.
  for (const fd of [sockA, sockB]) {
    if (confirmedClosed.has(fd)) continue;
    const id = backend.submit({ op: 'close', fd });
    backend.flush();
    const until = Date.now() + BOUND_MS;
    let settled = false;
    while (!settled && Date.now() < until) {
      for (const c of backend.poll(0)) if (c.handle === id) settled = true;
      if (!settled) await new Promise((r) => setTimeout(r, 1));
    }
    if (!settled) problems.push(`closing socket ${fd} did not settle`);
  }
  for (const fd of new Set([fileFd, directFd])) {
    if (fd < 0 || confirmedClosed.has(fd)) continue;
    try {
      fs.closeSync(fd);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EBADF') problems.push(`closing own fd ${fd}: ${String(e)}`);
    }
  }
  fs.rmSync(path, { force: true });
  const after = openFds();
  if (after > before) problems.push(`fd growth: ${before} -> ${after}`);
  if (problems.length > 0) throw new Error(problems.join('; '));
}

/** A connected TCP pair on loopback, made through the backend itself. */
async function socketPair(backend: IoBackend): Promise<[number, number]> {
  const done = new Map<number, number | Error>();
  const wait = async (id: number, what: string): Promise<number> => {
    backend.flush();
    const deadline = Date.now() + BOUND_MS;
    while (!done.has(id)) {
      for (const c of backend.poll(0)) done.set(c.handle, c.result);
      if (done.has(id)) break;
      if (Date.now() > deadline) throw new Error(`${what} did not complete within ${BOUND_MS} ms`);
      await new Promise((r) => setTimeout(r, 1));
    }
    const r = done.get(id)!;
    if (typeof r !== 'number') throw r;
    return r;
  };
  const lfd = await wait(backend.submit({ op: 'socket', family: 4 }), 'socket');
  await wait(backend.submit({ op: 'listen', fd: lfd, addr: { host: '127.0.0.1', port: 0 }, backlog: 4, reusePort: false }), 'listen');
  const port = backend.address(lfd, 'local').port;
  const cfd = await wait(backend.submit({ op: 'socket', family: 4 }), 'socket');
  const acceptId = backend.submit({ op: 'accept', fd: lfd });
  await wait(backend.submit({ op: 'connect', fd: cfd, addr: { host: '127.0.0.1', port } }), 'connect');
  const sfd = await wait(acceptId, 'accept');
  await wait(backend.submit({ op: 'close', fd: lfd }), 'close');
  return [cfd, sfd];
}

async function main(): Promise<void> {
  const backend = createBackend();
  let iter = 0;
  let failure: string | undefined;
  // Warm-up run with no fuzz steps: lazily created process-wide fds (libuv's threadpool and
  // signal pipes) appear here once, not as growth inside a property run.
  await runOnce(backend, [], -1).catch(() => {});
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const rss0 = process.memoryUsage().rss;
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 40 }), async (steps) => {
        await runOnce(backend, steps, iter++);
      }),
      { seed, numRuns: runs, endOnFailure: true },
    );
  } catch (e) {
    const cause = (e as { cause?: unknown }).cause;
    failure = `${e instanceof Error ? e.message : String(e)}${cause ? `\ncause: ${cause instanceof Error ? cause.message : String(cause)}` : ''}`;
  }
  backend.close();
  gc?.();
  const rss1 = process.memoryUsage().rss;
  // Bounded memory: buffers of <= 8 KiB per op, 40 ops per run; 64 MiB of growth would be a leak.
  const rssGrowthMiB = (rss1 - rss0) / 2 ** 20;
  // Under the AddressSanitizer job (MINISS_UNDER_ASAN=1) freed memory sits in ASan's quarantine
  // (256 MiB by default), so RSS says nothing about leaks there: only the fd checks apply.
  if (!failure && rssGrowthMiB > 64 && !process.env.MINISS_UNDER_ASAN) failure = `RSS grew by ${rssGrowthMiB.toFixed(1)} MiB over ${iter} runs`;
  const heapMiB = process.memoryUsage().heapUsed / 2 ** 20;
  process.stdout.write(`${JSON.stringify({ backend: name, seed, runs: iter, ok: !failure, failure, rssGrowthMiB, heapMiB, stats })}\n`);
  process.exitCode = failure ? 1 : 0;
}

void main();
