/**
 * Load client for the echo server, run as its own process (its fds do not count against the
 * server's): `node dist/load-client.js <port> <connections> <seconds> [requestsPerConn]`.
 *
 * Opens `connections` keep-alive TCP connections to 127.0.0.1:<port> in waves (the listen backlog is
 * 511), then on every connection sends one request at a time (alternating `GET /` and a small
 * `POST /echo` whose echoed body is checked) until `seconds` pass or `requestsPerConn` answers came.
 * Every answer is parsed (status line, Content-Length, body); anything unexpected, a reset, or a
 * close by the server counts as an error. Prints progress lines `progress <responses>` once a
 * second and finally one JSON line: connections opened, responses, errors (with the first few
 * reasons), elapsed ms. Exit 0 when there were no errors.
 *
 * With MINISS_LOAD_HOLD=1 the client, once every answer came, prints `holding <opened>` and keeps
 * every connection open until a line arrives on stdin: the parent can then look at the server while
 * it really holds all of them at once (no sampling race).
 */
import * as net from 'node:net';

const [portArg, connsArg, secondsArg, perConnArg] = process.argv.slice(2);
const port = Number(portArg);
const conns = Number(connsArg);
const seconds = Number(secondsArg);
const perConn = perConnArg ? Number(perConnArg) : Infinity;
const WAVE = 400;

const t0 = Date.now();
let opened = 0;
let responses = 0;
let errors = 0;
const reasons: string[] = [];
let stopping = false;
const sockets: net.Socket[] = [];

function fail(reason: string): void {
  errors++;
  if (reasons.length < 10) reasons.push(reason);
}

const GET = Buffer.from('GET / HTTP/1.1\r\nHost: load\r\n\r\n');

class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private expectBody: string | null = null;
  private count = 0;
  private alive = true;
  constructor(
    readonly sock: net.Socket,
    readonly id: number,
  ) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', (e: Error) => {
      if (!stopping && this.alive) fail(`conn ${id}: ${e.message}`);
      this.alive = false;
    });
    sock.on('close', () => {
      if (!stopping && this.alive) fail(`conn ${id}: closed by the server after ${this.count} responses`);
      this.alive = false;
    });
  }
  send(): void {
    if (stopping || !this.alive) return;
    if (this.count >= perConn) return;
    if (this.count % 2 === 0) {
      this.expectBody = null;
      this.sock.write(GET);
    } else {
      const body = `c${this.id}-r${this.count}`;
      this.expectBody = body;
      this.sock.write(`POST /echo HTTP/1.1\r\nHost: load\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    }
  }
  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      const headEnd = this.buf.indexOf('\r\n\r\n');
      if (headEnd < 0) return;
      const head = this.buf.subarray(0, headEnd).toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(head);
      const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
      if (!m || !cl) {
        fail(`conn ${this.id}: malformed response head ${JSON.stringify(head.slice(0, 80))}`);
        this.sock.destroy();
        this.alive = false;
        return;
      }
      const len = Number(cl[1]);
      if (this.buf.length < headEnd + 4 + len) return;
      const body = this.buf.subarray(headEnd + 4, headEnd + 4 + len).toString('latin1');
      this.buf = this.buf.subarray(headEnd + 4 + len);
      if (m[1] !== '200') fail(`conn ${this.id}: status ${m[1]}`);
      else if (this.expectBody !== null && body !== this.expectBody) fail(`conn ${this.id}: echoed ${JSON.stringify(body)}, sent ${JSON.stringify(this.expectBody)}`);
      responses++;
      this.count++;
      this.send();
    }
  }
}

function connect(id: number): Promise<Conn | null> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sockets.push(sock);
    const t = setTimeout(() => {
      fail(`conn ${id}: connect timed out`);
      sock.destroy();
      resolve(null);
    }, 10_000);
    sock.once('connect', () => {
      clearTimeout(t);
      opened++;
      resolve(new Conn(sock, id));
    });
    sock.once('error', (e) => {
      clearTimeout(t);
      fail(`conn ${id}: connect: ${e.message}`);
      resolve(null);
    });
  });
}

async function main(): Promise<void> {
  const all: Conn[] = [];
  for (let i = 0; i < conns; i += WAVE) {
    const wave = await Promise.all(Array.from({ length: Math.min(WAVE, conns - i) }, (_, j) => connect(i + j)));
    for (const c of wave) if (c) all.push(c);
  }
  const connectMs = Date.now() - t0;
  process.stdout.write(`connected ${opened} in ${connectMs} ms\n`);
  for (const c of all) c.send();
  const progress = setInterval(() => process.stdout.write(`progress ${responses}\n`), 1000);
  const until = Date.now() + seconds * 1000;
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const allDone = perConn !== Infinity && responses >= all.length * perConn;
      if (Date.now() >= until || allDone) {
        clearInterval(tick);
        resolve();
      }
    }, 20);
  });
  clearInterval(progress);
  if (process.env.MINISS_LOAD_HOLD === '1') {
    process.stdout.write(`holding ${opened}\n`);
    await new Promise<void>((resolve) => {
      process.stdin.once('data', () => resolve());
      process.stdin.once('end', () => resolve());
    });
    process.stdin.destroy();
  }
  stopping = true;
  if (perConn !== Infinity && responses < all.length * perConn) fail(`only ${responses} of ${all.length * perConn} responses in ${seconds} s`);
  for (const s of sockets) s.destroy();
  process.stdout.write(
    `${JSON.stringify({ opened, connections: conns, responses, errors, reasons, connectMs, elapsedMs: Date.now() - t0 })}\n`,
  );
  process.exitCode = errors === 0 && opened === conns ? 0 : 1;
}

void main();
