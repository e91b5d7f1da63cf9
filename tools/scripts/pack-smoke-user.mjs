// What a user of the published packages does, run inside a throwaway project that installed the
// @miniss/* tarballs (tools/scripts/pack-smoke.mjs copies this file there and runs it). Plain
// Node, no test framework, nothing from the monorepo: only what `npm install` put in node_modules.
//
//   node smoke.mjs <expect.json>
//
// expect.json: { backends: ['io_uring', 'epoll', ...] the backends that must work here,
//                missing: [...] backend names whose package is not installed (must be refused),
//                plugins: true when @miniss/timer, @miniss/signal and @miniss/multicore are installed }
// Prints one line per check ("ok <name>") and exits non-zero on the first failure.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const expect = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const core = await import('@miniss/core');
const { Runtime, File, TcpListener, TcpStream, spawn, RuntimeError } = core;

const ok = (name) => console.log(`ok ${name}`);
function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

const fileBody = `miniss pack smoke ${process.pid}\n`;
const filePath = join(process.cwd(), 'smoke-file.txt');
writeFileSync(filePath, fileBody);

/** A file read and a TCP echo on 127.0.0.1, on the backend `backend` resolves to. */
async function ioRoundTrip(backend, features = []) {
  const rt = new Runtime({ backend, features });
  const name = rt.backend.name;
  await rt.blockOn(async () => {
    const f = await File.open(filePath);
    const buf = new Uint8Array(256);
    const n = await f.read(buf, 0);
    await f.close();
    assert(new TextDecoder().decode(buf.subarray(0, n)) === fileBody, `${backend}: file read returned the file`);

    const listener = await TcpListener.bind({ host: '127.0.0.1', port: 0 });
    const server = spawn(async () => {
      const conn = await listener.accept();
      for await (const chunk of conn) await conn.sendAll(chunk);
      await conn.close();
    });
    const c = await TcpStream.connect({ host: '127.0.0.1', port: listener.address.port });
    const msg = new TextEncoder().encode(`hello over ${name}`);
    await c.sendAll(msg);
    let got = '';
    const rb = new Uint8Array(64);
    while (got.length < msg.length) {
      const r = await c.recv(rb);
      if (r === 0) break;
      got += new TextDecoder().decode(rb.subarray(0, r));
    }
    assert(got === `hello over ${name}`, `${backend}: echo returned ${JSON.stringify(got)}`);
    await c.close();
    await server;
    await listener.close();
  });
  return name;
}

const ORDER = ['io_uring', 'epoll', 'kqueue', 'node'];
for (const b of expect.backends) {
  const got = await ioRoundTrip(b);
  assert(got === b, `backend '${b}' resolved to '${got}'`);
  ok(`backend ${b}: file read + tcp echo`);
}
const autoExpected = ORDER.find((b) => expect.backends.includes(b) || b === 'node');
const autoName = await ioRoundTrip('auto');
assert(autoName === autoExpected, `auto picked '${autoName}', expected '${autoExpected}'`);
ok(`backend auto -> ${autoName}: file read + tcp echo`);

for (const b of expect.missing ?? []) {
  try {
    new Runtime({ backend: b });
    throw new Error(`backend '${b}' is not installed but a Runtime started on it`);
  } catch (err) {
    assert(err instanceof RuntimeError && err.code === 'BACKEND_UNAVAILABLE', `backend '${b}' refused with ${err?.code}: ${err?.message}`);
    assert(/npm install @miniss\/backend-/.test(err.message), `the refusal says what to install: ${err.message}`);
  }
  ok(`backend ${b} (not installed): BACKEND_UNAVAILABLE naming the package`);
}

if (expect.plugins) {
  const { sleep, timeout, TimeoutError } = await import('@miniss/timer');
  const { waitForSignal, gracefulShutdown } = await import('@miniss/signal');
  const { MultiCoreRuntime, currentCore } = await import('@miniss/multicore');

  await new Runtime({ features: ['timer', 'signal'] }).blockOn(async () => {
    const t0 = Date.now();
    await sleep(20);
    assert(Date.now() - t0 >= 19, 'sleep(20) slept');
    const slow = new Promise(() => {});
    try {
      await timeout(10, slow);
      throw new Error('timeout did not fire');
    } catch (err) {
      assert(err instanceof TimeoutError && err.code === 'TIMEOUT', `timeout rejects TimeoutError, got ${err?.code}`);
    }
    const got = waitForSignal(['SIGUSR2']);
    setTimeout(() => process.kill(process.pid, 'SIGUSR2'), 10);
    assert((await got) === 'SIGUSR2', 'waitForSignal saw SIGUSR2');
    const d = gracefulShutdown(currentRuntime(), { signals: ['SIGUSR2'], graceMs: 100 });
    d[Symbol.dispose]();
  });
  ok('@miniss/timer sleep/timeout, @miniss/signal waitForSignal/gracefulShutdown');

  const mc = new MultiCoreRuntime({ cores: 2, pin: false });
  const cores = await mc.blockOn(async () => {
    const all = await mc.broadcast(async () => {
      const { currentCore } = await import('@miniss/multicore');
      const { currentRuntime } = await import('@miniss/core');
      return `${currentCore()}:${currentRuntime().backend.name}`;
    });
    const sum = await mc.spawnOn(1, (a, b) => a + b, 2, 3);
    assert(sum === 5, 'spawnOn(1) computed 2 + 3');
    assert(currentCore() === 0, 'blockOn runs on core 0');
    return all;
  });
  assert(cores.length === 2 && cores[0].startsWith('0:') && cores[1].startsWith('1:'), `broadcast ran on both cores: ${cores}`);
  // core loads the plugin by name when a config asks for it.
  const viaConfig = core.createRuntime({ features: ['multicore'], cores: 2, pin: false });
  assert(viaConfig instanceof MultiCoreRuntime, 'createRuntime({ features: [multicore] }) made a MultiCoreRuntime');
  assert((await viaConfig.blockOn(() => viaConfig.broadcast(() => 1))).length === 2, 'createRuntime multicore broadcast');
  ok(`@miniss/multicore broadcast/spawnOn on 2 cores (${cores.join(', ')}), createRuntime({ features: ['multicore'] })`);
} else {
  try {
    new Runtime({ features: ['timer'] });
    throw new Error('features: [timer] started without @miniss/timer installed');
  } catch (err) {
    assert(err instanceof RuntimeError && err.code === 'FEATURE_UNAVAILABLE', `missing plugin refused with ${err?.code}`);
  }
  ok('feature timer (not installed): FEATURE_UNAVAILABLE');
}

function currentRuntime() {
  return core.currentRuntime();
}
rmSync(filePath, { force: true });
console.log('smoke: all checks passed');
