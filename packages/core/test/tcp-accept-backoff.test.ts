/**
 * The listener's accept iterator out of file descriptors: it must back off instead of retrying
 * a failing accept in a tight loop, and still end at once on `return()` or `close()`. Each case
 * runs in a child process whose RLIMIT_NOFILE is 64 (`ulimit -n`), so the test process keeps its
 * own descriptors.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { probeBackend, type BackendName } from '@miniss/core';

const CORE = new URL('../dist/index.js', import.meta.url).href;

/** Runs in the child: prints one JSON line of measurements. */
const SCRIPT = `
import { Runtime, TcpListener, spawn } from ${JSON.stringify(CORE)};
import fs from 'node:fs';
import net from 'node:net';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Resolves 'hung' after ms without holding the process open. */
const hung = (ms) => new Promise((r) => setTimeout(r, ms, 'hung').unref());
const fds = [];
const exhaust = () => {
  try {
    for (;;) fds.push(fs.openSync('/dev/null', 'r'));
  } catch (e) {
    if (e.code !== 'EMFILE') throw e;
  }
};
const free = (n) => {
  for (const fd of fds.splice(-n)) fs.closeSync(fd);
};
const rt = new Runtime({ backend: process.env.BACKEND });
const out = await rt.blockOn(async () => {
  const l = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
  /**
   * A client connects while this process is out of fds: two are freed for it (libuv may take
   * one for its own reserve) and taken again as soon as its socket exists (net creates it on
   * the next tick), before the server side can accept. On native backends the connection then
   * waits in the backlog and every accept fails EMFILE; on the node backend libuv's own accept
   * fails and drops it.
   */
  const connectAtEmfile = async (port) => {
    exhaust();
    free(2);
    const c = net.connect(port, '127.0.0.1');
    c.on('error', () => {});
    await new Promise((r) => process.nextTick(r));
    exhaust();
    return c;
  };
  // 1. How many operations in 500 ms at EMFILE, and how much CPU.
  const client1 = await connectAtEmfile(l.address.port);
  const io0 = rt.stats().ioSubmitted;
  const cpu0 = process.cpuUsage();
  const it = l[Symbol.asyncIterator]();
  const first = it.next();
  await sleep(500);
  const ops = rt.stats().ioSubmitted - io0;
  const cpu = process.cpuUsage(cpu0);
  // 2. return() ends the wait in progress at once.
  let t = performance.now();
  const returned = await Promise.race([it.return().then(() => first).then((r) => r.done), hung(3000)]);
  const returnMs = performance.now() - t;
  // 3. A new loop takes a connection once fds are free again.
  let accepted = 0;
  const loop = spawn(async () => {
    for await (const s of l) {
      accepted++;
      await s.close();
    }
    return 'ended';
  });
  await sleep(100);
  free(8);
  t = performance.now();
  const client2 = net.connect(l.address.port, '127.0.0.1');
  client2.on('error', () => {});
  while (accepted === 0 && performance.now() - t < 3000) await sleep(5);
  const acceptMs = performance.now() - t;
  // 4. Out of fds again, on a second listener (an io_uring listener keeps accepting in the
  // kernel once it has been accepted from): close() ends a loop that is backing off at once.
  const l2 = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
  const client3 = await connectAtEmfile(l2.address.port);
  const loop2 = spawn(async () => {
    for await (const s of l2) await s.close();
    return 'ended';
  });
  await sleep(300);
  t = performance.now();
  await l2.close();
  const ended = await Promise.race([loop2, hung(3000)]);
  const closeMs = performance.now() - t;
  await l.close();
  const ended1 = await Promise.race([loop, hung(3000)]);
  free(fds.length);
  for (const c of [client1, client2, client3]) c.destroy();
  return { ops, cpuMs: (cpu.user + cpu.system) / 1000, returned, returnMs, accepted, acceptMs, ended, closeMs, ended1 };
});
console.log(JSON.stringify(out));
`;

const backends = (['node', 'io_uring', 'epoll', 'kqueue'] as BackendName[]).map((n) => probeBackend(n));

for (const probe of backends) {
  describe(`accept iterator at EMFILE: ${probe.name}`, () => {
    if (!probe.ok) {
      it.skip(`skipped: ${probe.reason ?? 'unavailable'}`, () => {});
      return;
    }
    const name = probe.name;
    it('backs off instead of spinning, and ends at once on return() and close()', () => {
      const r = spawnSync('bash', ['-c', 'ulimit -n 64 && exec "$0" --input-type=module -e "$SCRIPT"', process.execPath], {
        env: { ...process.env, BACKEND: name, SCRIPT },
        encoding: 'utf8',
        timeout: 15_000,
      });
      expect(r.status, r.stderr).toBe(0);
      const m = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
      // Back-off from 10 ms doubling: a handful of accepts and timeouts in 500 ms, not tens of
      // thousands of failed accepts.
      expect(m.ops as number).toBeLessThan(50);
      expect(m.cpuMs as number).toBeLessThan(250);
      expect(m.returned).toBe(true);
      expect(m.returnMs as number).toBeLessThan(200);
      // A connection is taken once fds are free (within the 1 s back-off cap).
      expect(m.accepted).toBeGreaterThanOrEqual(1);
      expect(m.acceptMs as number).toBeLessThan(2000);
      expect(m.ended).toBe('ended');
      expect(m.closeMs as number).toBeLessThan(200);
      expect(m.ended1).toBe('ended');
    }, 20_000);
  });
}
