import { closeSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { Runtime } from '@miniss/core';
import { blockCore, make, shutDownAfterEach, until, within } from './helpers.js';

// A core whose thread dies (an uncaught throw, process.exit() in the worker) or is terminated by
// shutdown (blocked past workerExitTimeoutMs) never runs its own cleanup: the sockets its runtime
// made must be closed by the backend's teardown (the environment cleanup hook; native-common's
// owned_fds.h). Before, they stayed open in the process: the dead core's reusePort listener kept
// taking new connections that nobody accepted, its clients never saw their connections end, and
// every such shutdown leaked a few sockets.
const BACKENDS = ['io_uring', 'epoll'] as const;

async function unavailable(backend: string): Promise<string | null> {
  try {
    const rt = new Runtime({ backend: backend as 'epoll' });
    const name = rt.backend.name;
    await rt.shutdown();
    return name === backend ? null : `got the ${name} backend instead`;
  } catch (e) {
    return (e as Error).message;
  }
}
const reasons = new Map<string, string | null>();
for (const b of BACKENDS) reasons.set(b, await unavailable(b));

/** Socket fds of this process (the test's clients and every core's sockets: one fd table). */
function socketFds(): number {
  let n = 0;
  for (const f of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${f}`).startsWith('socket:')) n++;
    } catch {
      /* the fd of the readdir itself, gone by now */
    }
  }
  return n;
}

// Task sources built with `new Function` so that the test runner does not rewrite their
// `import()`: this is the text the worker compiles.
//
// Listens on 127.0.0.1 (reusePort), echoes on every connection it accepts and counts them in
// `counter`; returns the port.
const listenAndEcho = new Function(`return async (counter) => {
  const { TcpListener, spawn } = await import('@miniss/core');
  const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 }, { reusePort: true });
  const accepted = new Int32Array(counter);
  spawn(async () => {
    for await (const c of l) {
      Atomics.add(accepted, 0, 1);
      spawn(async () => {
        const b = new Uint8Array(64);
        for (;;) {
          const k = await c.recv(b);
          if (k === 0) break;
          await c.sendAll(b.subarray(0, k));
        }
        await c.close();
      });
    }
  });
  return l.address.port;
}`)() as (counter: SharedArrayBuffer) => Promise<number>;

/** Kills the core's thread from outside any task: an uncaught throw, or process.exit(). */
const crash = (mode: string): Promise<never> => {
  setTimeout(() => {
    if (mode === 'exit') process.exit(3);
    throw new Error('boom on core 1');
  }, 1);
  return new Promise<never>(() => {});
};

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Settles when the server side ends the connection (FIN, RST or any error). */
function ended(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    if (s.destroyed || s.readableEnded) return resolve('closed');
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    s.once('end', () => resolve('end'));
    s.once('close', () => resolve('close'));
    s.resume();
  });
}

function destroyAll(clients: net.Socket[]): Promise<void> {
  return Promise.all(
    clients.map((s) => new Promise<void>((r) => (s.destroyed && s.closed ? r() : (s.once('close', () => r()), s.destroy())))),
  ).then(() => {});
}

/** Core 1 listens, accepts `n` connections from node:net clients and echoes on them. */
async function serveOnCore1(mc: ReturnType<typeof make>, n: number): Promise<{ port: number; clients: net.Socket[] }> {
  const counter = new SharedArrayBuffer(4);
  const port = await within(mc.spawnOn(1, listenAndEcho, counter), 5000, 'listen on core 1');
  const clients: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = await within(connect(port), 5000, `client ${i} connect`);
    s.on('error', () => {});
    clients.push(s);
  }
  expect(await until(() => Atomics.load(new Int32Array(counter), 0) === n, 5000)).toBe(true);
  // Every connection is served (echo), so each has a recv in flight on core 1.
  for (const s of clients) {
    const echoed = new Promise<string>((r) => s.once('data', (d) => r(String(d))));
    s.write('x');
    expect(await within(echoed, 5000, 'echo')).toBe('x');
  }
  return { port, clients };
}

describe.each(BACKENDS)('sockets of a core that died, on the %s backend', (backend) => {
  shutDownAfterEach();
  const reason = reasons.get(backend) ?? null;

  if (reason !== null) {
    it.skip(`skipped: the ${backend} backend is not available here (${reason})`, () => {});
    return;
  }

  it.each(['throw', 'exit'])(
    'core 1 crashes (%s) with a listener and 3 accepted connections: the clients see the close, the port refuses, no socket leaks',
    async (mode) => {
      const before = socketFds();
      const mc = make({ cores: 2, backend, pin: false });
      const crashes: number[] = [];
      mc.onCoreCrash = (core) => crashes.push(core);
      const { port, clients } = await serveOnCore1(mc, 3);
      const closes = clients.map(ended);
      mc.spawnOn(1, crash, mode).then(undefined, () => {});
      expect(await until(() => crashes.length > 0, 5000)).toBe(true);
      expect(crashes).toEqual([1]);
      // The crashed core's backend closed its connections: each client sees FIN or RST.
      const how = await within(Promise.all(closes), 5000, 'clients of the crashed core see the close');
      for (const h of how) expect(['end', 'close', 'ECONNRESET', 'EPIPE']).toContain(h);
      // Its listener is gone too: a new connection is refused instead of waiting for an accept
      // that will never come (only core 1 listened on this port).
      const fresh = await within(
        new Promise<string>((r) => {
          const s = net.connect(port, '127.0.0.1');
          s.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
          s.once('connect', () => {
            s.write('x');
            s.once('data', () => r('served'));
            s.once('close', () => r('closed'));
          });
          setTimeout(() => (s.destroy(), r('hung')), 2000).unref();
        }),
        5000,
        'a new connection to the dead core',
      );
      expect(fresh).toBe('ECONNREFUSED');
      await within(mc.shutdown(), 10000, 'shutdown');
      await destroyAll(clients);
      expect(socketFds()).toBeLessThanOrEqual(before);
    },
    30000,
  );

  it('a socket closed behind the backend\'s back whose number another file took is left alone when the core dies', async () => {
    const mc = make({ cores: 2, backend, pin: false });
    const crashes: number[] = [];
    mc.onCoreCrash = (core) => crashes.push(core);
    // Core 1's listener fd is closed with fs.closeSync (not through the backend), and this thread
    // takes the number with an open of /dev/null. (Not the worker: Node closes the fds a worker
    // opened with fs when it exits.) The backend still has the socket recorded: its teardown must
    // see that the number is another file now.
    const fd = await within(
      mc.spawnOn(
        1,
        new Function(`return async () => {
          const { TcpListener } = await import('@miniss/core');
          const fs = await import('node:fs');
          const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 }, { reusePort: true });
          fs.closeSync(l.fd);
          return l.fd;
        }`)() as () => Promise<number>,
      ),
      5000,
      'listen and close behind the back',
    );
    // The lowest free number comes first: open until we hold it (the spare opens go at once).
    const spare: number[] = [];
    let other = openSync('/dev/null', 'r');
    while (other < fd && spare.length < 1024) {
      spare.push(other);
      other = openSync('/dev/null', 'r');
    }
    for (const f of spare) closeSync(f);
    expect(other).toBe(fd);
    mc.spawnOn(1, crash, 'throw').then(undefined, () => {});
    expect(await until(() => crashes.length > 0, 5000)).toBe(true);
    await within(mc.shutdown(), 10000, 'shutdown');
    // Still open, and still /dev/null.
    expect(readlinkSync(`/proc/self/fd/${other}`)).toBe('/dev/null');
    closeSync(other);
  }, 30000);

  it('a core blocked at shutdown is terminated: its listener and connections are closed, 5 times without a leak', async () => {
    const before = socketFds();
    for (let i = 0; i < 5; i++) {
      const mc = make({ cores: 2, backend, pin: false, workerExitTimeoutMs: 150 });
      const { clients } = await serveOnCore1(mc, 3);
      const closes = clients.map(ended);
      await blockCore(mc, 1); // shutdown has to terminate the worker
      await within(mc.shutdown({ graceMs: 0 }), 5000, `shutdown ${i} of a blocked core`);
      expect(mc.stats().perCore[1]!.terminated).toBe(true);
      await within(Promise.all(closes), 5000, `clients of the terminated core see the close (round ${i})`);
      await destroyAll(clients);
    }
    expect(socketFds()).toBeLessThanOrEqual(before);
  }, 60000);
});
