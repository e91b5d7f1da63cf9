/**
 * Defects the sequence fuzzer (fuzz-sequences.test.ts) found, each reduced to a small case. Every
 * case runs on every backend that loads here.
 *
 * 1. A resource made while the runtime shuts down leaked its fd on the native backends: a
 *    File.open (or a connect, an accept) that completed after shutdown's one pass over the open
 *    resources became a tracked File nobody closed, and the epoll/io_uring backends do not close
 *    the descriptors they handed out when they close. Shutdown now closes, in rounds, what
 *    operations in flight made while it was closing the rest.
 * 2. TcpStream.connect's socket, between its `socket` and `connect` operations, was no resource:
 *    a shutdown closing the backend under the connect refused the clean-up's close
 *    (RUNTIME_SHUTDOWN) and the socket leaked. It is now tracked until it is a TcpStream (the
 *    shutdown closes it, cancelling the connect, which then rejects with RUNTIME_SHUTDOWN).
 * 3. (Found by the multicore sequence fuzzer, packages/multicore/test/fuzz-sequences.test.ts.) A
 *    close the caller started itself while the runtime shut down (a task's `finally` closing its
 *    File) was no longer tracked, so shutdown did not wait for it: on epoll it could still be
 *    queued for the file thread pool when the backend closed, was refused with RUNTIME_SHUTDOWN,
 *    resolved, and the fd leaked. Shutdown now waits for every close in flight.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { File, Runtime, TcpListener, TcpStream, probeBackend, type BackendName } from '@miniss/core';
import { fdTable } from './fuzz-kit.js';

/** Fds open now that were not (or were something else) in `before`, once closes have had time to land. */
async function newFds(before: Map<string, string>, match: (what: string) => boolean): Promise<string[]> {
  let extra: string[] = [];
  for (let i = 0; i < 50; i++) {
    extra = [...fdTable()].filter(([fd, what]) => before.get(fd) !== what && match(what)).map(([fd, what]) => `${fd} -> ${what}`);
    if (extra.length === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  return extra;
}

const backends = (['node', 'epoll', 'io_uring'] as BackendName[]).map((name) => ({ name, probe: probeBackend(name) }));

describe.each(backends)('fuzzer regressions on the $name backend', ({ name, probe }) => {
  const avail = probe.reason ?? 'available';

  it.runIf(probe.ok)(`a file opened while the runtime shuts down is closed by the shutdown, not leaked (${avail})`, async () => {
    const path = fs.realpathSync('/etc/hostname');
    const before = fdTable();
    const files: File[] = [];
    const outcomes: string[] = [];
    for (let i = 0; i < 20; i++) {
      const rt = new Runtime({ backend: name });
      let opened: Promise<void> | undefined;
      await rt
        .blockOn(async () => {
          await (await File.open(path)).close();
          const keep = await File.open(path); // one for the shutdown's first pass to close
          void keep;
          void rt.shutdown();
          const open = (): void => {
            opened = File.open(path).then(
              (f) => {
                files.push(f);
                outcomes.push('opened');
              },
              (e: { code?: string }) => {
                outcomes.push(e.code ?? 'uncoded');
              },
            );
          };
          // Now, and a turn later: the open completes after the shutdown's pass over the resources.
          if (i % 2 === 0) open();
          else setImmediate(open);
        })
        .catch(() => undefined);
      await opened;
    }
    expect(outcomes.every((o) => o === 'opened' || o === 'RUNTIME_SHUTDOWN' || o === 'NO_RUNTIME')).toBe(true);
    expect(outcomes).toContain('opened');
    // Every File the runtime handed out is closed once its runtime has shut down...
    expect(files.filter((f) => !f.closed).length).toBe(0);
    // ...and so is its descriptor.
    expect(await newFds(before, (w) => w === path)).toEqual([]);
  });

  it.runIf(probe.ok)(`a close the task started while the runtime shuts down is waited for, not leaked (${avail})`, async () => {
    const path = fs.realpathSync('/etc/hostname');
    const before = fdTable();
    const closes: string[] = [];
    for (let i = 0; i < 60; i++) {
      const rt = new Runtime({ backend: name });
      const h = rt.spawn(async () => {
        const f = await File.open(path);
        try {
          await f.read(new Uint8Array(64), 0);
        } finally {
          await f.close().then(
            () => closes.push('ok'),
            (e: { code?: string }) => closes.push(e.code ?? 'uncoded'),
          );
        }
      });
      h.then(undefined, () => undefined);
      // The shutdown lands before, during or after the task's own close.
      for (let k = 0; k < i % 4; k++) await new Promise((r) => setImmediate(r));
      await rt.shutdown({ graceMs: 0 });
    }
    expect(closes.every((c) => c === 'ok')).toBe(true);
    expect(await newFds(before, (w) => w === path)).toEqual([]);
  });

  it.runIf(probe.ok)(`a connect in flight when the runtime shuts down leaks no socket (${avail})`, async () => {
    const before = fdTable();
    const outcomes: string[] = [];
    const fillers: net.Socket[] = [];
    for (let i = 0; i < 3; i++) {
      const rt = new Runtime({ backend: name });
      let connecting: Promise<void> | undefined;
      await rt
        .blockOn(async () => {
          // A listener whose accept queue is full: the kernel drops the next SYN, so a connect to
          // it stays in flight (for a second, until the SYN is sent again) while the runtime shuts down.
          const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 }, { backlog: 1 });
          const port = l.address.port;
          for (let k = 0; k < 3; k++) {
            const c = net.connect(port, '127.0.0.1');
            c.on('error', () => undefined);
            fillers.push(c);
          }
          await new Promise((r) => setTimeout(r, 50));
          connecting = TcpStream.connect({ host: '127.0.0.1', port }).then(
            async (s) => {
              outcomes.push('connected');
              await s.close().catch(() => undefined);
            },
            (e: { code?: string }) => {
              outcomes.push(e.code ?? 'uncoded');
            },
          );
          await new Promise((r) => setTimeout(r, 20)); // the connect is in the backend
          void rt.shutdown();
        })
        .catch(() => undefined);
      await connecting;
    }
    for (const c of fillers) c.destroy();
    // The shutdown closed the socket under the connect, which says so. (The node backend's
    // listener is a net.Server, which accepts by itself: its queue never fills.)
    if (name === 'node') expect(outcomes.filter((o) => !['RUNTIME_SHUTDOWN', 'ECONNRESET', 'connected'].includes(o))).toEqual([]);
    else expect(outcomes).toEqual(['RUNTIME_SHUTDOWN', 'RUNTIME_SHUTDOWN', 'RUNTIME_SHUTDOWN']);
    expect(await newFds(before, (w) => w.startsWith('socket:'))).toEqual([]);
  });
});
