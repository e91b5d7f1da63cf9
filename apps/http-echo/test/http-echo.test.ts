import { execFile, spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

async function supported(pkg: string): Promise<{ ok: boolean; reason?: string }> {
  try {
    const m = (await import(pkg)) as { isSupported?: () => { ok: boolean; reason?: string } };
    return m.isSupported ? m.isSupported() : { ok: false, reason: `${pkg} has no isSupported()` };
  } catch (err) {
    return { ok: false, reason: `${pkg} does not load: ${(err as Error).message.split('\n')[0]}` };
  }
}

const backends: Array<{ name: string; ok: boolean; reason?: string }> = [
  { name: 'node', ok: true },
  { name: 'epoll', ...(await supported('@miniss/backend-epoll')) },
  { name: 'io_uring', ...(await supported('@miniss/backend-iouring')) },
];
for (const b of backends) if (!b.ok) console.log(`skipping backend ${b.name}: ${b.reason}`);

const curl = await new Promise<string | null>((resolve) => execFile('which', ['curl'], (err, out) => resolve(err ? null : out.trim())));
if (curl === null) console.log('skipping the curl tests: curl is not installed');

interface Server {
  child: ChildProcess;
  port: number;
  output: () => string;
  exited: Promise<{ code: number | null; signal: string | null }>;
}

/** Every server a test started: any still running when the file ends (a failed test) is killed. */
const children = new Set<ChildProcess>();
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function start(args: string[], cores = 1): Promise<Server> {
  const child = spawnChild(process.execPath, [main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const m = new RegExp(`listening on http://127\\.0\\.0\\.1:(\\d+) \\(backend (\\S+), cores ${cores}\\)`).exec(out);
    if (m) return { child, port: Number(m[1]), output: () => out, exited };
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`server did not start:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A raw-socket client: collects everything the server sends. */
interface Client {
  sock: Socket;
  data: () => string;
  closed: Promise<void>;
  isClosed: () => boolean;
}

function client(port: number): Promise<Client> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let data = '';
    let closed = false;
    sock.on('data', (d) => (data += d.toString('latin1')));
    const closedP = new Promise<void>((r) =>
      sock.on('close', () => {
        closed = true;
        r();
      }),
    );
    sock.on('error', () => undefined);
    sock.once('connect', () => resolve({ sock, data: () => data, closed: closedP, isClosed: () => closed }));
    sock.once('error', reject);
  });
}

async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Waits until the server has read everything `clients` sent: the server-side sockets of these
 * connections (local port `port`, remote port = the client's) show an empty receive queue in
 * /proc/net/tcp. Without /proc (not Linux) it waits 200 ms instead.
 */
async function serverHasRead(port: number, clients: Client[], ms = 5_000): Promise<void> {
  if (!existsSync('/proc/net/tcp')) return void (await new Promise((r) => setTimeout(r, 200)));
  const want = new Set(clients.map((c) => c.sock.localPort!));
  const hexPort = (a: string): number => parseInt(a.split(':')[1]!, 16);
  await until(() => {
    const pending = new Set(want);
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5 || hexPort(f[1]!) !== port || !pending.has(hexPort(f[2]!))) continue;
      if (parseInt(f[4]!.split(':')[1]!, 16) === 0) pending.delete(hexPort(f[2]!));
    }
    return pending.size === 0;
  }, 'the server to read what the clients sent', ms);
}

/** Whether the server's side of a connection (local port `port`, remote port `clientPort`) is still ESTABLISHED (Linux /proc). */
function serverSideEstablished(port: number, clientPort: number): boolean {
  const hexPort = (a: string): number => parseInt(a.split(':')[1]!, 16);
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || hexPort(f[1]!) !== port || hexPort(f[2]!) !== clientPort) continue;
    if (f[3] === '01') return true;
  }
  return false;
}

/** The most a socket's send buffer grows to (Linux tcp_wmem's maximum; 4 MiB, Linux's default, elsewhere). */
function tcpWmemMax(): number {
  const f = '/proc/sys/net/ipv4/tcp_wmem';
  const max = existsSync(f) ? Number(readFileSync(f, 'utf8').trim().split(/\s+/)[2]) : NaN;
  return Number.isFinite(max) && max > 0 ? max : 4 << 20;
}

/** A `POST /echo` whose body is `size` bytes of `fill`. */
function echoRequest(size: number, fill: number): Buffer {
  return Buffer.concat([Buffer.from(`POST /echo HTTP/1.1\r\nContent-Length: ${size}\r\n\r\n`), Buffer.alloc(size, fill)]);
}

/** Splits a byte stream into complete responses (status + body), Content-Length framed. */
function responses(s: string): Array<{ status: number; headers: string; body: string }> {
  const out: Array<{ status: number; headers: string; body: string }> = [];
  let at = 0;
  for (;;) {
    const he = s.indexOf('\r\n\r\n', at);
    if (he < 0) return out;
    const head = s.slice(at, he);
    const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? '0');
    if (s.length < he + 4 + len) return out;
    out.push({ status: Number(head.slice(9, 12)), headers: head, body: s.slice(he + 4, he + 4 + len) });
    at = he + 4 + len;
  }
}

/**
 * The environment for curl: without the AddressSanitizer runtime the ASan job preloads into node
 * (curl is not instrumented; with libasan preloaded it crawls and the test times out).
 */
function toolEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  delete env.ASAN_OPTIONS;
  return env;
}

function runCurl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(curl!, ['-s', '--max-time', '5', ...args], { encoding: 'latin1', env: toolEnv() }, (err, out) => (err ? reject(err) : resolve(out))),
  );
}

describe.each(backends)('apps/http-echo on $name', ({ name, ok }) => {
  let s: Server;
  const opened: Client[] = [];
  const open = async (): Promise<Client> => {
    const c = await client(s.port);
    opened.push(c);
    return c;
  };

  beforeAll(async () => {
    if (ok) s = await start(['--port', '0', '--backend', name, '--idle-ms', '400']);
  });
  afterAll(async () => {
    for (const c of opened) c.sock.destroy();
    if (!ok) return;
    if (s.child.exitCode === null) s.child.kill('SIGKILL');
    await s.exited;
  });

  it.runIf(ok)('prints the URL, backend and cores on one line', () => {
    expect(s.output()).toMatch(new RegExp(`^listening on http://127\\.0\\.0\\.1:\\d+ \\(backend ${name}, cores 1\\)$`, 'm'));
  });

  it.runIf(ok && curl !== null)('curl: GET /, POST /echo (Content-Length and chunked), 404', async () => {
    const base = `http://127.0.0.1:${s.port}`;
    expect(await runCurl([`${base}/`])).toBe('Hello, World!');
    expect(await runCurl(['-X', 'POST', '--data-binary', 'echo me', `${base}/echo`])).toBe('echo me');
    expect(await runCurl(['-H', 'Transfer-Encoding: chunked', '--data-binary', 'chunked body', `${base}/echo`])).toBe('chunked body');
    expect(await runCurl(['-o', '/dev/null', '-w', '%{http_code}', `${base}/nope`])).toBe('404');
    // With `Expect: 100-continue` curl waits for the 100 (up to 1 s) before it sends the body: the
    // server answers it (-D - prints the interim response's head before the final one's).
    const big = 'b'.repeat(100_000);
    const out = await runCurl(['-D', '-', '-X', 'POST', '-H', 'Content-Type: text/plain', '-H', 'Expect: 100-continue', '--data-binary', big, `${base}/echo`]);
    expect(out).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    expect(out.endsWith(`\r\n\r\n${big}`)).toBe(true);
    // curl reuses one connection for several URLs on the command line (keep-alive).
    const v = await runCurl(['-v', `${base}/`, `${base}/`]).catch((e: Error) => e.message);
    expect(v).toBe('Hello, World!Hello, World!');
  });

  it.runIf(ok)('keep-alive: several requests, one after another, on one connection', async () => {
    const c = await open();
    for (let i = 1; i <= 3; i++) {
      c.sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      await until(() => responses(c.data()).length === i, `response ${i}`);
    }
    expect(responses(c.data()).map((r) => [r.status, r.body])).toEqual(Array(3).fill([200, 'Hello, World!']));
    expect(c.isClosed()).toBe(false);
  });

  it.runIf(ok)('Expect: 100-continue with the body already sent gets no 100, only the answer', async () => {
    const c = await open();
    // One write of < 64 KiB on loopback arrives as one segment: head and body are read together.
    c.sock.write('POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok');
    await until(() => responses(c.data()).some((r) => r.status !== 100), 'answer');
    expect(responses(c.data()).map((r) => [r.status, r.body])).toEqual([[200, 'ok']]);
  });

  it.runIf(ok)('pipelining: every request in one write is answered, in order', async () => {
    const c = await open();
    c.sock.write(
      'GET / HTTP/1.1\r\n\r\n' +
        'POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd' +
        'GET /missing HTTP/1.1\r\n\r\n' +
        'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n' +
        'GET / HTTP/1.1\r\n\r\n',
    );
    await until(() => responses(c.data()).length === 5, '5 responses');
    expect(responses(c.data()).map((r) => [r.status, r.body])).toEqual([
      [200, 'Hello, World!'],
      [200, 'abcd'],
      [404, 'Not Found'],
      [200, 'xy'],
      [200, 'Hello, World!'],
    ]);
  });

  it.runIf(ok)('a chunked body arriving in small fragments is echoed whole', async () => {
    const c = await open();
    const req = 'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n';
    for (let i = 0; i < req.length; i += 7) {
      c.sock.write(req.slice(i, i + 7));
      await new Promise((r) => setTimeout(r, 2));
    }
    await until(() => responses(c.data()).length === 1, 'the echo');
    expect(responses(c.data())[0]!.body).toBe('hello world');
  });

  it.runIf(ok)('a 1 MiB body is echoed; one byte more is a 413 and the connection closes', async () => {
    const c = await open();
    const body = Buffer.alloc(1024 * 1024, 'z');
    c.sock.write(`POST /echo HTTP/1.1\r\nContent-Length: ${body.length}\r\n\r\n`);
    c.sock.write(body);
    await until(() => responses(c.data()).length === 1, 'the 1 MiB echo', 10_000);
    expect(responses(c.data())[0]!.body.length).toBe(body.length);
    const d = await open();
    d.sock.write(`POST /echo HTTP/1.1\r\nContent-Length: ${body.length + 1}\r\n\r\n`);
    await d.closed;
    expect(responses(d.data()).map((r) => r.status)).toEqual([413]);
  });

  it.runIf(ok)('a body in tiny chunks whose framing outgrows the buffer is a 413, not a hang', async () => {
    const c = await open();
    c.sock.write('POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n');
    // 1 MiB of body in 1-byte chunks is 6 MiB on the wire. Like a real client, stop uploading once
    // the answer arrived (and give the socket a turn after every write so it can arrive): a client
    // that keeps writing past the server's lingering close gets a reset, and a reset may destroy the
    // answer still unread in its receive queue.
    const piece = '1\r\nx\r\n'.repeat(10_000);
    for (let i = 0; i < 200 && !c.isClosed() && c.data() === ''; i++) {
      if (!c.sock.write(piece)) await new Promise((r) => setTimeout(r, 5));
      else await new Promise((r) => setImmediate(r));
    }
    c.sock.end();
    await c.closed;
    expect(responses(c.data()).map((r) => r.status)).toEqual([413]);
  });

  it.runIf(ok)('a header block over 16 KiB is a 431 and the connection closes', async () => {
    const c = await open();
    c.sock.write('GET / HTTP/1.1\r\nX-Big: ' + 'a'.repeat(17 * 1024) + '\r\n\r\n');
    await c.closed;
    expect(responses(c.data()).map((r) => r.status)).toEqual([431]);
  });

  it.runIf(ok)('a malformed request is a 400 and closes; requests before it are answered', async () => {
    const c = await open();
    c.sock.write('GET / HTTP/1.1\r\n\r\nGET / HTTP/9.9\r\n\r\nGET / HTTP/1.1\r\n\r\n');
    await c.closed;
    expect(responses(c.data()).map((r) => r.status)).toEqual([200, 400]);
    const d = await open();
    d.sock.write('GET / HTTP/1.1\r\nBad Header\r\n\r\n');
    await d.closed;
    expect(responses(d.data()).map((r) => r.status)).toEqual([400]);
  });

  it.runIf(ok)('Connection: close is honoured (and HTTP/1.0 closes by default)', async () => {
    const c = await open();
    c.sock.write('GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n');
    await c.closed;
    const rs = responses(c.data());
    expect(rs.length).toBe(1);
    expect(rs[0]!.headers).toMatch(/^Connection: close$/im);
    const d = await open();
    d.sock.write('GET / HTTP/1.0\r\n\r\n');
    await d.closed;
    expect(responses(d.data()).map((r) => r.body)).toEqual(['Hello, World!']);
  });

  it.runIf(ok)('an idle connection is closed after --idle-ms; an active one is not', async () => {
    const idle = await open();
    const active = await open();
    const t0 = Date.now();
    const keep = setInterval(() => active.sock.write('GET / HTTP/1.1\r\n\r\n'), 100);
    try {
      await idle.closed;
      const waited = Date.now() - t0;
      expect(waited).toBeGreaterThanOrEqual(300);
      expect(waited).toBeLessThan(5_000);
      expect(active.isClosed()).toBe(false);
    } finally {
      clearInterval(keep);
    }
    expect(responses(active.data()).length).toBeGreaterThan(0);
  });

  it.runIf(ok)('a connection that goes quiet in the middle of a request gets 408 before the idle close', async () => {
    const head = await open();
    head.sock.write('GET / HTTP/1.1\r\nHost: x\r\n');
    const body = await open();
    body.sock.write('POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc');
    await Promise.all([head.closed, body.closed]);
    expect(responses(head.data()).map((r) => r.status)).toEqual([408]);
    expect(responses(body.data()).map((r) => r.status)).toEqual([408]);
  });

  it.runIf(ok)('a client that pipelines big POSTs and never reads is closed after --idle-ms (a blocked send is idle too)', async () => {
    // More 1 MiB echoes than the socket buffers hold (the server's send buffer grows up to tcp_wmem's
    // maximum), so the server's send blocks for good. The idle sweep used to skip a connection with
    // a send in progress: it stayed open (with its buffers) until shutdown, on every backend.
    const n = Math.ceil((tcpWmemMax() + (4 << 20)) / (1 << 20));
    const c = await open();
    c.sock.pause(); // never read
    const t0 = Date.now();
    for (let i = 0; i < n; i++) c.sock.write(echoRequest(1 << 20, 97 + (i % 26)));
    const proc = existsSync('/proc/net/tcp');
    const port = c.sock.localPort!;
    if (proc) await until(() => serverSideEstablished(s.port, port), 'the connection to show in /proc/net/tcp', 2_000);
    await until(() => c.isClosed() || (proc && !serverSideEstablished(s.port, port)), 'the server to close the connection of a client that does not read', 10_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300); // --idle-ms 400, sweeps every 100 ms
    c.sock.destroy();
    // The server is still fine.
    const d = await open();
    d.sock.write('GET / HTTP/1.1\r\n\r\n');
    await until(() => responses(d.data()).length === 1, 'an answer on a new connection');
    expect(s.child.exitCode).toBe(null);
  });

  it.runIf(ok)('a slow reader that keeps reading gets every pipelined answer, in order, and is not cut off', async () => {
    // A send blocked on a full socket buffer resumes once the client has read about a third of the
    // server's send buffer (Linux wakes a writer then), and Linux grows that buffer up to tcp_wmem's
    // maximum. This reader keeps a pace of two such buffers a second (a send resumes at least every
    // ~170 ms) against --idle-ms 1000, and pipelines enough 1 MiB echoes, and a GET / behind them,
    // for the server to spend well over --idle-ms with sends blocked but progressing and requests
    // waiting behind them: none may be lost, and the connection must not be closed as idle.
    const wmem = tcpWmemMax();
    const rate = 2 * Math.max(wmem, 1 << 20); // bytes per second
    const size = 1 << 20;
    const n = Math.ceil((wmem + (4 << 20) + 2 * rate) / size);
    const own = await start(['--port', '0', '--backend', name, '--idle-ms', '1000']);
    try {
      const c = await client(own.port);
      opened.push(c);
      let got = 0;
      let paused = false;
      const t0 = Date.now();
      c.sock.on('data', (d: Buffer) => {
        got += d.length;
        const ahead = got / rate - (Date.now() - t0) / 1000; // seconds ahead of the pace
        if (ahead > 0.01 && !paused) {
          paused = true;
          c.sock.pause();
          setTimeout(() => {
            paused = false;
            c.sock.resume();
          }, ahead * 1000);
        }
      });
      for (let i = 0; i < n; i++) c.sock.write(echoRequest(size, 97 + (i % 26)));
      c.sock.write('GET / HTTP/1.1\r\n\r\n');
      await until(() => got >= n * size || c.isClosed(), 'every answer', 60_000);
      await until(() => responses(c.data()).length === n + 1 || c.isClosed(), 'every answer', 5_000).catch(() => undefined);
      const rs = responses(c.data());
      expect(rs.length).toBe(n + 1);
      for (let i = 0; i < n; i++) {
        expect(rs[i]!.status).toBe(200);
        expect(rs[i]!.body.length).toBe(size);
        expect(rs[i]!.body === String.fromCharCode(97 + (i % 26)).repeat(size)).toBe(true);
      }
      expect([rs[n]!.status, rs[n]!.body]).toEqual([200, 'Hello, World!']);
      // The pace held: the server's sends were waiting on this reader for most of that time.
      expect(Date.now() - t0).toBeGreaterThan(((n * size) / rate) * 1000 * 0.9);
    } finally {
      own.child.kill('SIGKILL');
      await own.exited;
    }
  });

  it.runIf(ok)('one bad client does not disturb another', async () => {
    const good = await open();
    good.sock.write('GET / HTTP/1.1\r\n\r\n');
    await until(() => responses(good.data()).length === 1, 'first answer');
    // Garbage, a half request that is then reset, and a client that vanishes mid-body.
    const bad1 = await open();
    bad1.sock.write(Buffer.from([0, 1, 2, 255, 13, 10, 13, 10]));
    const bad2 = await open();
    bad2.sock.write('POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc');
    await new Promise((r) => setTimeout(r, 20));
    bad2.sock.resetAndDestroy();
    const bad3 = await open();
    bad3.sock.write('GET / HTTP/1.1\r\n\r\n'.repeat(200));
    bad3.sock.destroy();
    await bad1.closed;
    expect(responses(bad1.data()).map((r) => r.status)).toEqual([400]);
    good.sock.write('POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nok');
    await until(() => responses(good.data()).length === 2, 'second answer');
    expect(responses(good.data())[1]!.body).toBe('ok');
    expect(good.isClosed()).toBe(false);
    expect(s.child.exitCode).toBe(null);
  });

  it.runIf(ok)('SIGTERM drains: idle connections close at once, half-received requests are answered, exit 0', async () => {
    // A server of its own with a 5 s request timer: with the shared one's 400 ms, a slow run (the
    // ASan job on a loaded machine) could answer the half-received requests below with 408 before
    // the drain reaches them, which is the previous test's subject, not this one's.
    s.child.kill('SIGKILL');
    await s.exited;
    s = await start(['--port', '0', '--backend', name, '--idle-ms', '5000']);
    const c = await open();
    c.sock.write('GET / HTTP/1.1\r\n\r\n');
    await until(() => responses(c.data()).length === 1, 'answer');
    // Half a body, and half a head, when the signal comes: both must still be answered.
    const body = await open();
    body.sock.write('POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello');
    const head = await open();
    head.sock.write('GET / HTTP/1.1\r\nHo');
    await serverHasRead(s.port, [body, head]);
    s.child.kill('SIGTERM');
    // The drain has begun once the idle connection is closed.
    await Promise.race([c.closed, new Promise((_, rej) => setTimeout(() => rej(new Error('idle connection not closed by the drain')), 3000))]);
    expect(body.isClosed() || head.isClosed()).toBe(false);
    body.sock.write('world');
    head.sock.write('st: x\r\n\r\n');
    await Promise.all([body.closed, head.closed]);
    expect(responses(body.data()).map((r) => [r.status, r.body])).toEqual([[200, 'helloworld']]);
    expect(responses(head.data()).map((r) => [r.status, r.body])).toEqual([[200, 'Hello, World!']]);
    const exit = await s.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(s.output()).toMatch(/drained after \d+ connections, \d+ requests/);
  });
});

// Several cores need SO_REUSEPORT, which the node backend cannot give on Node 20: the best native backend.
const multi = backends.find((b) => b.name === 'io_uring' && b.ok) ?? backends.find((b) => b.name === 'epoll' && b.ok);

/** Waits (bounded) for the exit after the SIGTERM the test sent (a second one would kill it); SIGKILL after `ms`. */
async function exitOf(s: Server, ms = 8000): Promise<{ code: number | null; signal: string | null }> {
  const t = setTimeout(() => s.child.kill('SIGKILL'), ms);
  try {
    return await s.exited;
  } finally {
    clearTimeout(t);
  }
}

/** The per-core counts of the drained line: `(core 0: C/R, core 1: C/R, ...)`. */
function perCore(out: string): Array<{ connections: number; requests: number }> {
  const m = /drained after (\d+) connections, (\d+) requests \(([^)]*)\)/.exec(out);
  if (!m) throw new Error(`no drained line with per-core counts in:\n${out}`);
  return [...m[3]!.matchAll(/core (\d+): (\d+)\/(\d+)/g)].map((x) => ({ connections: Number(x[2]), requests: Number(x[3]) }));
}

describe.runIf(multi !== undefined)(`apps/http-echo on several cores (${multi?.name ?? 'no native backend'})`, () => {
  it('--cores 2: every core listens on the port and serves its own connections', async () => {
    const s = await start(['--port', '0', '--cores', '2', '--backend', multi!.name], 2);
    const clients: Client[] = [];
    try {
      expect(s.output()).toMatch(new RegExp(`^listening on http://127\\.0\\.0\\.1:\\d+ \\(backend ${multi!.name}, cores 2\\)$`, 'm'));
      expect(s.output().match(/listening on/g)).toHaveLength(1);
      // 40 connections, 3 requests each: the kernel spreads them over both listeners (all 40 on
      // one core has probability 2^-39).
      for (let i = 0; i < 40; i++) clients.push(await client(s.port));
      for (const c of clients) c.sock.write('GET / HTTP/1.1\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n');
      await until(() => clients.every((c) => responses(c.data()).length === 3), 'all answers');
      for (const c of clients) {
        const r = responses(c.data());
        expect(r.map((x) => x.status)).toEqual([200, 200, 200]);
        expect(r[0]!.body).toBe('Hello, World!');
        expect(r[0]!.headers).not.toMatch(/core/i); // no extra header on the normal answer
        expect(r[1]!.body).toBe('abc');
      }
    } finally {
      for (const c of clients) c.sock.destroy();
      s.child.kill('SIGTERM');
    }
    expect(await exitOf(s)).toEqual({ code: 0, signal: null });
    const cores = perCore(s.output());
    expect(cores).toHaveLength(2);
    expect(cores.reduce((a, c) => a + c.connections, 0)).toBe(40);
    expect(cores.reduce((a, c) => a + c.requests, 0)).toBe(120);
    for (const c of cores) expect(c.connections).toBeGreaterThan(0);
  });

  it('--cores 2: SIGTERM exits 0 and loses no in-flight response on either core', async () => {
    const s = await start(['--port', '0', '--cores', '2', '--backend', multi!.name], 2);
    const clients: Client[] = [];
    try {
      // 30 connections each with half a POST body in the server when the signal comes, one idle.
      for (let i = 0; i < 30; i++) clients.push(await client(s.port));
      const idle = await client(s.port);
      clients.push(idle);
      const bodies = clients.slice(0, 30).map((_, i) => `${String(i).padStart(4, '0')}-`.repeat(500));
      clients.slice(0, 30).forEach((c, i) => c.sock.write(`POST /echo HTTP/1.1\r\nContent-Length: ${bodies[i]!.length}\r\n\r\n${bodies[i]!.slice(0, 1000)}`));
      await serverHasRead(s.port, clients);
      s.child.kill('SIGTERM');
      await Promise.race([idle.closed, new Promise((_, rej) => setTimeout(() => rej(new Error('idle connection not closed by the drain')), 3000))]);
      clients.slice(0, 30).forEach((c, i) => c.sock.write(bodies[i]!.slice(1000)));
      await Promise.race([
        Promise.all(clients.map((c) => c.closed)),
        new Promise((_, rej) => setTimeout(() => rej(new Error('connections not closed after their answers')), 5000)),
      ]);
      clients.slice(0, 30).forEach((c, i) => expect(responses(c.data()).map((r) => [r.status, r.body])).toEqual([[200, bodies[i]]]));
    } finally {
      for (const c of clients) c.sock.destroy();
    }
    expect(await exitOf(s)).toEqual({ code: 0, signal: null });
    const cores = perCore(s.output());
    expect(cores.reduce((a, c) => a + c.requests, 0)).toBe(30);
  });

  it('--cores 3 on fewer CPUs works (cores beyond the CPUs are not pinned), --no-pin too', async () => {
    for (const extra of [[], ['--no-pin']]) {
      const s = await start(['--port', '0', '--cores', '3', '--backend', multi!.name, ...extra], 3);
      const clients: Client[] = [];
      try {
        for (let i = 0; i < 30; i++) clients.push(await client(s.port));
        for (const c of clients) c.sock.write('GET / HTTP/1.1\r\n\r\n');
        await until(() => clients.every((c) => responses(c.data()).length === 1), 'answers');
      } finally {
        for (const c of clients) c.sock.destroy();
        s.child.kill('SIGTERM');
      }
      expect(await exitOf(s)).toEqual({ code: 0, signal: null });
      const cores = perCore(s.output());
      expect(cores).toHaveLength(3);
      expect(cores.reduce((a, c) => a + c.requests, 0)).toBe(30);
    }
  });

  it(`--cores 0 means all ${availableParallelism()} cores`, async () => {
    const s = await start(['--port', '0', '--cores', '0', '--backend', multi!.name], availableParallelism());
    s.child.kill('SIGTERM');
    expect(await exitOf(s)).toEqual({ code: 0, signal: null });
  });
});

describe.runIf(multi !== undefined)('npm start (the root package.json "start" script)', () => {
  it('runs the echo server on all cores with backend auto; Ctrl-C (SIGINT) drains and exits 0', async () => {
    const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8')) as { scripts: { start: string } };
    // The script builds first (`npm run build --silent && node ...`): run only the server part here,
    // on a free port instead of 8080.
    const cmd = pkg.scripts.start.split('&&').at(-1)!.trim().split(/\s+/);
    expect(cmd.slice(0, 2)).toEqual(['node', 'apps/http-echo/dist/main.js']);
    expect(cmd).toContain('--cores');
    expect(cmd[cmd.indexOf('--cores') + 1]).toBe('0');
    expect(cmd).not.toContain('--backend'); // auto
    const n = availableParallelism();
    const s = await start([...cmd.slice(2), '--port', '0'], n); // start() runs apps/http-echo/dist/main.js
    const m = new RegExp(`^listening on http://127\\.0\\.0\\.1:\\d+ \\(backend (\\S+), cores ${n}\\)$`, 'm').exec(s.output());
    expect(m, s.output()).not.toBeNull();
    if (multi!.name === 'io_uring') expect(m![1]).toBe('io_uring'); // auto picks io_uring where it works
    const c = await client(s.port);
    c.sock.write('GET / HTTP/1.1\r\n\r\n');
    await until(() => responses(c.data()).length === 1, 'answer');
    c.sock.destroy();
    s.child.kill('SIGINT');
    expect(await exitOf(s)).toEqual({ code: 0, signal: null });
    expect(s.output()).toMatch(/drained after 1 connections, 1 requests/);
  });
});

describe('apps/http-echo command line', () => {
  it.runIf(Number(process.versions.node.split('.')[0]) < 22)('--cores 2 on the node backend (no SO_REUSEPORT before Node 22.12) exits 1 with the reason', async () => {
    const child = spawnChild(process.execPath, [main, '--port', '0', '--cores', '2', '--backend', 'node'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(code).toBe(1);
    expect(out).toMatch(/reusePort/);
  });

  it('a request never completed during the drain is cut at the drain deadline (--grace-ms), exit 0', async () => {
    const s = await start(['--port', '0', '--backend', 'node', '--grace-ms', '600']);
    const c = await client(s.port);
    try {
      c.sock.write('POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nhel');
      await serverHasRead(s.port, [c]);
      const t0 = Date.now();
      s.child.kill('SIGTERM');
      await Promise.race([c.closed, new Promise((_, rej) => setTimeout(() => rej(new Error('not cut within 3 s')), 3000))]);
      const took = Date.now() - t0;
      expect(took).toBeGreaterThanOrEqual(250); // held for the drain (deadline 600 - 300 ms)...
      expect(c.data()).toBe(''); // ...then cut without an answer
      expect(await exitOf(s)).toEqual({ code: 0, signal: null });
      expect(s.output()).toMatch(/drained after 1 connections, 0 requests; 1 connections cut with an incomplete request at the drain deadline/);
    } finally {
      c.sock.destroy();
      s.child.kill('SIGKILL');
    }
  });

  it.each([
    [['--port', 'x'], '--port needs a non-negative integer'],
    [['--grace-ms', String(2 ** 31)], '--grace-ms must be at most 2147483647'],
    [['--idle-ms', '1e12'], '--idle-ms must be at most 2147483647'],
  ])('rejects bad options with usage: %j', async (args, message) => {
    const child = spawnChild(process.execPath, [main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(code).toBe(2);
    expect(out).toContain(message);
  });
});
