#!/usr/bin/env node
/**
 * graceful-shutdown: a small TCP work server that drains cleanly on SIGTERM/SIGINT.
 *
 * Protocol, one line per request: `work <ms>` answers `done <ms>` after `ms` milliseconds of
 * (simulated) work; `ping` answers `pong`. Connections are kept open between requests.
 *
 * On the first signal the signal plugin starts a graceful shutdown: the listener closes (new
 * connections are refused), idle connections are closed, requests in progress get `--grace`
 * milliseconds to finish and answer, anything still running then is cancelled (its client gets
 * `cancelled`), the backend closes and the process exits 0 by itself. A second signal during the
 * drain exits at once with 128 + signo.
 *
 *   node apps/graceful-shutdown/dist/main.js [--port 0] [--grace 5000] [--backend auto]
 */
import { CancelledError, Runtime, TcpListener, spawn, type BackendChoice, type TcpStream } from '@miniss/core';
import { gracefulShutdown } from '@miniss/signal';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

const port = Number(arg('--port', '0'));
const graceMs = Number(arg('--grace', '5000'));
const backend = arg('--backend', 'auto') as BackendChoice;

const rt = new Runtime({ backend, features: ['signal'] });
gracefulShutdown(rt, {
  graceMs,
  progressIntervalMs: 100,
  onProgress: (p) => console.log(`shutdown ${p.phase} after ${p.elapsedMs} ms (${p.signal}): ${p.tasksLeft} tasks, ${p.connectionsLeft} connections left`),
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Serves one connection until the client leaves or the runtime shuts down. */
async function serve(conn: TcpStream, signal: AbortSignal): Promise<void> {
  const buf = new Uint8Array(4096);
  let pending = '';
  try {
    for (;;) {
      // Idle: wait for a request, but give up as soon as shutdown begins.
      let n: number;
      try {
        n = await conn.recv(buf, { signal: rt.shutdownSignal });
      } catch {
        return;
      }
      if (n === 0) return;
      pending += decoder.decode(buf.subarray(0, n), { stream: true });
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        const m = /^work (\d{1,7})$/.exec(line);
        if (m) {
          const ms = Number(m[1]);
          try {
            // A backend timeout stands in for real work; the task's signal cancels it when the
            // grace period runs out.
            await rt.io({ op: 'timeout', ms }, signal);
            await conn.sendAll(encoder.encode(`done ${ms}\n`));
          } catch (err) {
            if (err instanceof CancelledError || (err as { code?: string }).code === 'CANCELLED') {
              await conn.sendAll(encoder.encode('cancelled\n')).catch(() => undefined);
              return;
            }
            throw err;
          }
        } else if (line === 'ping') {
          await conn.sendAll(encoder.encode('pong\n'));
        } else {
          await conn.sendAll(encoder.encode('error unknown request\n'));
        }
      }
    }
  } finally {
    await conn.close();
  }
}

await rt.blockOn(async () => {
  const listener = await TcpListener.bind({ host: '127.0.0.1', port });
  console.log(`listening on 127.0.0.1:${listener.address.port} (backend ${rt.backend.name}, grace ${graceMs} ms)`);
  let served = 0;
  // The accept loop ends when shutdown begins: the runtime closes listeners first.
  for await (const conn of listener) {
    served++;
    // A connection cut off at the grace period's end rejects with CancelledError: the documented
    // way it ends (its client got `cancelled`), not a failure.
    spawn((signal) => serve(conn, signal)).then(undefined, (err: unknown) => {
      if (!(err instanceof CancelledError)) console.error(`connection failed: ${String(err)}`);
    });
  }
  console.log(`stopped accepting after ${served} connections`);
});
console.log('drained, exiting');
