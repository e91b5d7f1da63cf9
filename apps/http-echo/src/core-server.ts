/**
 * The per-core half of `miniss-http-echo --cores N`: `main.ts` ships two small functions to every
 * core of a `MultiCoreRuntime` (by source), and each imports this module on its own thread (module
 * state is per thread, so `server` below is that core's server):
 *
 *   startCoreServer(opts) -> { port, backend }  binds host:port with SO_REUSEPORT and serves
 *   coreServerDone()      -> ServerStats        settles once that core's server has drained
 *
 * Test hook (not for production use): with `MINISS_HTTP_ECHO_CRASH_CORE=c` (c >= 1, a worker core)
 * core c throws an uncaught error once it has answered `MINISS_HTTP_ECHO_CRASH_AFTER` requests
 * (default 50), which kills its thread the way a bug would. Used by the hardening fault test of the
 * crash policy (README "Cores").
 */
import { currentRuntime } from '@miniss/core';
import { startServer, type EchoServer, type ServerOptions, type ServerStats } from './server.js';

let server: EchoServer | null = null;

export async function startCoreServer(opts: ServerOptions, core: number): Promise<{ port: number; backend: string }> {
  if (server !== null) throw new Error(`an echo server already runs on core ${core}`);
  const s = await startServer({ ...opts, reusePort: true });
  server = s;
  const crashCore = Number(process.env.MINISS_HTTP_ECHO_CRASH_CORE);
  if (Number.isInteger(crashCore) && crashCore >= 1 && crashCore === core) {
    const after = Number(process.env.MINISS_HTTP_ECHO_CRASH_AFTER ?? 50);
    const t = setInterval(() => {
      if (s.stats.requests < after) return;
      clearInterval(t);
      // Thrown from a timer callback: an uncaught exception that ends this core's thread.
      setImmediate(() => {
        throw new Error(`deliberate crash of core ${core} after ${s.stats.requests} requests (MINISS_HTTP_ECHO_CRASH_CORE test hook)`);
      });
    }, 2);
  }
  return { port: s.port, backend: currentRuntime().backend.name };
}

export async function coreServerDone(): Promise<ServerStats> {
  if (server === null) throw new Error('no echo server was started on this core');
  await server.done;
  return server.stats;
}
