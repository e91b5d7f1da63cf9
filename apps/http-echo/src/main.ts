#!/usr/bin/env node
/**
 * miniss-http-echo: the HTTP/1.1 echo server from the command line.
 *
 *   miniss-http-echo [--host 127.0.0.1] [--port 8080] [--cores N] [--backend auto|io_uring|epoll|kqueue|node] [--idle-ms 30000]
 *
 * `--port 0` picks a free port. `--cores 0` means every core (os.availableParallelism()); while
 * @miniss/multicore cannot serve, `--cores 0` runs on one core with a warning and `--cores N > 1` exits 1.
 * Prints one line `listening on http://HOST:PORT (backend NAME, cores N)` once it listens;
 * SIGINT/SIGTERM drain (busy connections send their answers) and exit 0.
 */
import { availableParallelism } from 'node:os';
import { BACKENDS, Runtime, type BackendChoice } from '@miniss/core';
import { gracefulShutdown } from '@miniss/signal';
import { startServer } from './server.js';

function usage(msg: string): never {
  console.error(`miniss-http-echo: ${msg}`);
  console.error('usage: miniss-http-echo [--host 127.0.0.1] [--port 8080] [--cores N] [--backend auto|io_uring|epoll|kqueue|node] [--idle-ms 30000]');
  process.exit(2);
}

const opts = { host: '127.0.0.1', port: 8080, cores: 1, backend: 'auto' as BackendChoice, idleMs: 30_000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  const v = argv[i + 1];
  const num = (): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 0) usage(`${a} needs a non-negative integer, got ${String(v)}`);
    i++;
    return n;
  };
  if (a === '--host') {
    if (v === undefined) usage('--host needs a value');
    opts.host = v;
    i++;
  } else if (a === '--port') {
    opts.port = num();
    if (opts.port > 65535) usage(`--port must be 0..65535, got ${opts.port}`);
  } else if (a === '--cores') opts.cores = num();
  else if (a === '--idle-ms') opts.idleMs = num();
  else if (a === '--backend') {
    if (v === undefined || !(v === 'auto' || (BACKENDS as readonly string[]).includes(v))) usage(`--backend must be auto or one of ${BACKENDS.join(', ')}, got ${String(v)}`);
    opts.backend = v as BackendChoice;
    i++;
  } else if (a === '--help' || a === '-h') usage('help');
  else usage(`unknown option ${a}`);
}
const allCores = opts.cores === 0;
if (allCores) opts.cores = availableParallelism();

if (opts.cores > 1) {
  // Each core would bind the same port with SO_REUSEPORT and serve its own connections, via
  // @miniss/multicore's broadcast. That package does not export a usable MultiCoreRuntime in this
  // tree yet (packages/multicore has no built entry point), so refuse instead of pretending.
  let reason = 'its package is not built or has no MultiCoreRuntime export';
  try {
    const mod = (await import('@miniss/multicore' as string)) as { MultiCoreRuntime?: unknown };
    if (typeof mod.MultiCoreRuntime === 'function') reason = 'multicore serving is not wired into this server yet';
  } catch (err) {
    reason = `it cannot be loaded (${(err as Error).message.split('\n')[0]})`;
  }
  if (allCores) {
    // "All cores" degrades to the one core this process can serve on, and says why.
    console.error(`miniss-http-echo: serving on 1 core instead of ${opts.cores}: @miniss/multicore is needed, but ${reason}`);
    opts.cores = 1;
  } else {
    console.error(`miniss-http-echo: --cores ${opts.cores} needs @miniss/multicore, but ${reason}; run with --cores 1`);
    process.exit(1);
  }
}

let rt: Runtime;
try {
  rt = new Runtime({ backend: opts.backend, features: ['timer', 'signal'] });
} catch (err) {
  console.error(`miniss-http-echo: ${(err as Error).message}`);
  process.exit(1);
}
gracefulShutdown(rt, { graceMs: 5000 });

try {
  await rt.blockOn(async () => {
    const server = await startServer({ host: opts.host, port: opts.port, idleMs: opts.idleMs });
    const shownHost = server.host.includes(':') ? `[${server.host}]` : server.host;
    console.log(`listening on http://${shownHost}:${server.port} (backend ${rt.backend.name}, cores 1)`);
    await server.done;
    console.log(`drained after ${server.stats.connections} connections, ${server.stats.requests} requests`);
  });
} catch (err) {
  console.error(`miniss-http-echo: ${(err as Error).message}`);
  process.exit(1);
}
