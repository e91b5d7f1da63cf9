#!/usr/bin/env node
/**
 * miniss-http-echo: the HTTP/1.1 echo server from the command line.
 *
 *   miniss-http-echo [--host 127.0.0.1] [--port 8080] [--cores N] [--backend auto|io_uring|epoll|kqueue|node] [--idle-ms 30000] [--grace-ms 5000] [--no-pin]
 *
 * `--port 0` picks a free port. `--cores 0` means every core (os.availableParallelism()); with N > 1
 * every core (a @miniss/multicore worker thread, core 0 being this thread) binds the port with
 * SO_REUSEPORT and serves its own connections; cores are pinned to CPUs 0..N-1 unless `--no-pin`
 * (cores beyond the CPUs are not pinned). Prints one line
 * `listening on http://HOST:PORT (backend NAME, cores N)` once every core listens;
 * SIGINT/SIGTERM drain (connections with a request in progress finish it) and exit 0.
 */
import { availableParallelism } from 'node:os';
import { BACKENDS, MAX_TIMER_MS, Runtime, type BackendChoice } from '@miniss/core';
import { gracefulShutdown } from '@miniss/signal';
import { startServer, type ServerOptions, type ServerStats } from './server.js';



function usage(msg: string): never {
  console.error(`miniss-http-echo: ${msg}`);
  console.error('usage: miniss-http-echo [--host 127.0.0.1] [--port 8080] [--cores N] [--backend auto|io_uring|epoll|kqueue|node] [--idle-ms 30000] [--grace-ms 5000] [--no-pin]');
  process.exit(2);
}

const opts = { host: '127.0.0.1', port: 8080, cores: 1, backend: 'auto' as BackendChoice, idleMs: 30_000, pin: true, graceMs: 5000 };
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
  else if (a === '--idle-ms' || a === '--grace-ms') {
    const ms = num();
    // Both become setTimeout delays, which Node turns into 1 ms past 2^31 - 1.
    if (ms > MAX_TIMER_MS) usage(`${a} must be at most ${MAX_TIMER_MS}, got ${ms}`);
    if (a === '--idle-ms') opts.idleMs = ms;
    else opts.graceMs = ms;
  }
  else if (a === '--backend') {
    if (v === undefined || !(v === 'auto' || (BACKENDS as readonly string[]).includes(v))) usage(`--backend must be auto or one of ${BACKENDS.join(', ')}, got ${String(v)}`);
    opts.backend = v as BackendChoice;
    i++;
  } else if (a === '--no-pin') opts.pin = false;
  else if (a === '--help' || a === '-h') usage('help');
  else usage(`unknown option ${a}`);
}
if (opts.cores === 0) opts.cores = availableParallelism();
/** The runtime's shutdown grace; the server's own drain deadline is a little shorter (see server.ts drainMs). */
const GRACE_MS = opts.graceMs;
const DRAIN_MS = Math.max(0, GRACE_MS - Math.min(500, GRACE_MS / 2));

const shown = (host: string, port: number): string => `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

if (opts.cores === 1) await serveOneCore();
else await serveManyCores();

/** One core: a plain Runtime on this thread (no worker threads, no rings). */
async function serveOneCore(): Promise<void> {
  let rt: Runtime;
  try {
    rt = new Runtime({ backend: opts.backend, features: ['timer', 'signal'] });
  } catch (err) {
    console.error(`miniss-http-echo: ${(err as Error).message}`);
    process.exit(1);
  }
  gracefulShutdown(rt, { graceMs: GRACE_MS });
  try {
    await rt.blockOn(async () => {
      const server = await startServer({ host: opts.host, port: opts.port, idleMs: opts.idleMs, drainMs: DRAIN_MS });
      console.log(`listening on ${shown(server.host, server.port)} (backend ${rt.backend.name}, cores 1)`);
      await server.done;
      const cut = server.stats.drainCut > 0 ? `; ${server.stats.drainCut} connections cut with an incomplete request at the drain deadline` : '';
      console.log(`drained after ${server.stats.connections} connections, ${server.stats.requests} requests${cut}`);
    });
  } catch (err) {
    console.error(`miniss-http-echo: ${(err as Error).message}`);
    process.exit(1);
  }
}

/**
 * N cores (@miniss/multicore): every core binds the same host:port with SO_REUSEPORT and serves the
 * connections the kernel gives its listener. Core 0 binds first (so `--port 0` learns the port), then
 * the others bind that port. Crash policy: a worker core that crashes is reported on stderr, the other
 * cores drain as on SIGTERM, and the process exits 1 (a supervisor restarts it).
 */
async function serveManyCores(): Promise<void> {
  const { MultiCoreRuntime } = await import('@miniss/multicore');
  type Mc = InstanceType<typeof MultiCoreRuntime>;
  let mc: Mc;
  try {
    mc = new MultiCoreRuntime({ cores: opts.cores, pin: opts.pin, backend: opts.backend, features: ['timer'] });
  } catch (err) {
    console.error(`miniss-http-echo: ${(err as Error).message}`);
    process.exit(1);
  }
  const url = new URL('./core-server.js', import.meta.url).href;
  const serverOpts: ServerOptions = { host: opts.host, port: opts.port, idleMs: opts.idleMs, drainMs: DRAIN_MS };
  // Shipped to each core by source: only arguments and imports inside.
  const start = async (u: string, o: ServerOptions, core: number): Promise<{ port: number; backend: string }> =>
    ((await import(u)) as typeof import('./core-server.js')).startCoreServer(o, core);
  const waitDrained = async (u: string): Promise<ServerStats> => ((await import(u)) as typeof import('./core-server.js')).coreServerDone();

  let crashed = false;
  mc.onCoreCrash = (core, err) => {
    if (crashed) return;
    crashed = true;
    process.exitCode = 1;
    console.error(`miniss-http-echo: core ${core} crashed: ${err?.message ?? String(err)}; draining the other cores and exiting 1 (crash policy)`);
    void mc.shutdown({ graceMs: GRACE_MS }).catch(() => undefined);
  };
  gracefulShutdown(mc, { graceMs: GRACE_MS });

  const drained: Array<PromiseLike<ServerStats>> = [];
  try {
    const first = await mc.spawnOn(0, start, url, serverOpts, 0);
    const rest = await Promise.all(
      Array.from({ length: opts.cores - 1 }, (_, i) => mc.spawnOn(i + 1, start, url, { ...serverOpts, port: first.port }, i + 1)),
    );
    for (let c = 0; c < opts.cores; c++) drained.push(mc.spawnOn(c, waitDrained, url));
    const names = [...new Set([first.backend, ...rest.map((r) => r.backend)])].join('+');
    console.log(`listening on ${shown(opts.host, first.port)} (backend ${names}, cores ${opts.cores})`);
  } catch (err) {
    if (!crashed && mc.stats().shuttingDown) {
      // SIGINT/SIGTERM while the cores were still starting: a requested stop, not a failure.
      console.log('stopped before every core listened');
    } else {
      console.error(`miniss-http-echo: ${(err as Error).message}`);
      process.exitCode = 1;
    }
    await mc.shutdown({ graceMs: 0 }).catch(() => undefined);
    return;
  }
  const results = await Promise.allSettled(drained);
  let connections = 0;
  let requests = 0;
  let cut = 0;
  const perCore: string[] = [];
  results.forEach((r, c) => {
    if (r.status === 'fulfilled') {
      connections += r.value.connections;
      requests += r.value.requests;
      cut += r.value.drainCut;
      perCore.push(`core ${c}: ${r.value.connections}/${r.value.requests}`);
    } else perCore.push(`core ${c}: lost (${(r.reason as Error)?.message ?? String(r.reason)})`);
  });
  const cutNote = cut > 0 ? `; ${cut} connections cut with an incomplete request at the drain deadline` : '';
  console.log(`drained after ${connections} connections, ${requests} requests (${perCore.join(', ')})${cutNote}`);
}
