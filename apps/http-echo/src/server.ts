/**
 * The HTTP/1.1 echo server: one task per connection on the current miniss runtime.
 *
 * Per connection: one receive buffer (4 KiB, grown by doubling up to what the limits need and
 * kept for the connection's life), one parser, one output buffer. Each `recv` is followed by
 * parsing every complete request in the received bytes; their responses are appended to the
 * output buffer and sent with one `send` (a single `GET /` answer goes out straight from its
 * pre-encoded Buffer, without a copy). Nothing is allocated per request on the `GET /` path.
 *
 *   GET /       -> 200 "Hello, World!" (13 bytes)
 *   POST /echo  -> 200 with the request body (Content-Length or chunked)
 *   else        -> 404
 *   header block > 16 KiB -> 431, body > 1 MiB -> 413, malformed -> 400; each of these closes.
 *
 * Idle connections are closed after `idleMs` by a sweep on the runtime's timer wheel
 * (@miniss/timer `setTimer`): a connection marks itself active on every received chunk and on
 * every send that makes progress, and a connection the sweep finds inactive for `idleMs` is closed.
 * So a client that stops reading is closed too: its response's send, blocked on a full socket
 * buffer, makes no progress (closing the stream cancels the send). A send makes progress when it
 * completes: on the native backends a send blocked on a full buffer completes (short) as soon as
 * the kernel takes more bytes; the node backend completes a send only once all of it is written,
 * so there a batch is sent NODE_SEND_CHUNK at a time. This costs one boolean store per received
 * chunk instead of arming and cancelling a timer per request, and nothing more for a response
 * the kernel takes at once.
 *
 * Shutdown: when the runtime's shutdown begins, the listener closes (the runtime does that),
 * idle connections (nothing buffered) are closed at once, and a connection in the middle of a
 * batch, or with part of a request (head or body) received, finishes that request, sends its
 * responses and then closes, so no request the server has started to read is dropped. A request
 * still incomplete `drainMs` after the drain began is cut (its connection closed, `stats.drainCut`).
 */
import { TcpListener, currentRuntime, type TcpStream } from '@miniss/core';
import { clearTimer, setTimer } from '@miniss/timer';
import {
  ERR_BAD_REQUEST,
  ERR_HEADERS_TOO_LARGE,
  ERR_TOO_LARGE,
  METHOD_GET,
  METHOD_HEAD,
  METHOD_POST,
  NEED_MORE,
  RequestParser,
  DEFAULT_LIMITS,
  type ParserLimits,
} from './parser.js';

export { RequestParser, DEFAULT_LIMITS, type ParserLimits } from './parser.js';

export interface ServerOptions {
  host?: string;
  port?: number;
  /**
   * Close a connection that received nothing, and whose response sends made no progress (a client
   * that stopped reading), for this long. 0 disables. Default 30000.
   */
  idleMs?: number;
  /**
   * During a drain, connections still in the middle of a request this long after it began are
   * closed (counted in `stats.drainCut`). Keep it below the runtime's shutdown grace so the server
   * finishes its own drain before the runtime cancels its tasks. Default 4500.
   */
  drainMs?: number;
  /** SO_REUSEPORT on the listener (one listener per core). */
  reusePort?: boolean;
  limits?: Partial<ParserLimits>;
}

export interface ServerStats {
  connections: number;
  requests: number;
  errors: { 400: number; 404: number; 413: number; 431: number };
  idleClosed: number;
  /** Connections closed with a request still incomplete when the drain deadline (`drainMs`) passed. */
  drainCut: number;
}

export interface EchoServer {
  readonly port: number;
  readonly host: string;
  readonly stats: ServerStats;
  /** Settles when the accept loop ends and every connection has closed. */
  readonly done: Promise<void>;
  /** Stops accepting, closes idle connections, lets busy ones send their answers. */
  close(): Promise<void>;
}

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');
const HELLO_BODY = 'Hello, World!';
const HELLO = latin1(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n${HELLO_BODY}`);
const HELLO_CLOSE = latin1(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\n${HELLO_BODY}`);
const HELLO_KA = latin1(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n${HELLO_BODY}`);
const HELLO_HEAD = latin1(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n`);
const NOT_FOUND_BODY = 'Not Found';
const NOT_FOUND = latin1(`HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n`);
const ECHO_HEAD = latin1('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ');
const CONN_CLOSE = latin1('Connection: close\r\n');
const CONN_KA = latin1('Connection: keep-alive\r\n');
const CRLF = latin1('\r\n');
const CONTINUE = latin1('HTTP/1.1 100 Continue\r\n\r\n');
const ERROR_RESPONSES: Record<number, Buffer> = {
  400: latin1('HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request'),
  413: latin1('HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\nContent Too Large'),
  431: latin1(
    'HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nRequest Header Fields Too Large',
  ),
};
/** Sent by the idle sweep to a connection that went quiet in the middle of a request (RFC 9110 15.5.9). */
const REQUEST_TIMEOUT = latin1('HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 15\r\nConnection: close\r\n\r\nRequest Timeout');
const PATH_ROOT = 47; // '/'
const PATH_ECHO = latin1('/echo');

// Small: 10,000 idle keep-alive connections cost 40 MiB of receive buffers. A full buffer of complete
// pipelined requests is simply parsed and reused; it only grows for one request bigger than it.
const INITIAL_BUFFER = 4096;
const SHRINK_ABOVE = 64 * 1024;
/**
 * On the node backend (whose send completes only once all of it reached the kernel) a batch of
 * responses bigger than this goes out in sends of at most this size, so that a client reading
 * slowly shows progress to the idle sweep. The native backends send a batch whole: a send there
 * completes short whenever the kernel took only part of it.
 */
const NODE_SEND_CHUNK = 64 * 1024;

/** A growable output buffer reused across batches of one connection. */
class Output {
  // Allocated on the first response that is not a pre-encoded constant (most connections never need it).
  buf = Buffer.allocUnsafe(0);
  len = 0;
  /** The only response of the batch when it is a pre-encoded constant (sent without copying). */
  single: Buffer | null = null;
  count = 0;

  reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = Math.max(4096, this.buf.length * 2);
    while (size < this.len + n) size *= 2;
    const b = Buffer.allocUnsafe(size);
    this.buf.copy(b, 0, 0, this.len);
    this.buf = b;
  }

  /** Appends a constant response; the first one of a batch is only remembered. */
  constant(b: Buffer): void {
    if (this.count === 0) {
      this.single = b;
      this.count = 1;
      return;
    }
    if (this.single !== null) {
      const s = this.single;
      this.single = null;
      this.append(s);
    }
    this.append(b);
    this.count++;
  }

  /** Marks the start of a response built piece by piece. */
  begin(): void {
    if (this.single !== null) {
      const s = this.single;
      this.single = null;
      this.append(s);
    }
    this.count++;
  }

  append(b: Uint8Array, start = 0, end = b.length): void {
    this.reserve(end - start);
    this.buf.set(start === 0 && end === b.length ? b : b.subarray(start, end), this.len);
    this.len += end - start;
  }

  appendAscii(s: string): void {
    this.reserve(s.length);
    this.len += this.buf.write(s, this.len, 'latin1');
  }

  take(): Uint8Array | null {
    if (this.count === 0) return null;
    const out = this.single ?? this.buf.subarray(0, this.len);
    this.single = null;
    this.count = 0;
    this.len = 0;
    return out;
  }
}

interface ConnState {
  conn: TcpStream;
  /** Set on every received chunk and every send that made progress; cleared by the idle sweep. */
  active: boolean;
  /** Consecutive sweeps that found the connection inactive (and, once closing, sweeps since). */
  idleSweeps: number;
  /**
   * Between a recv completing and its responses being sent, and while part of a request (head or
   * body) is buffered: a drain lets such a connection finish its request.
   */
  busy: boolean;
  /**
   * Between a recv completing and its responses being sent: the idle sweep closes such a connection
   * only when its send made no progress for `idleMs`, and then without a 408 (a response is half out).
   */
  sending: boolean;
  /** Closed by the idle sweep or the drain: a recv completing afterwards is not served. */
  closing: boolean;
}

/** Starts the echo server on the current runtime (which must have the 'timer' feature when idleMs > 0). */
export async function startServer(opts: ServerOptions = {}): Promise<EchoServer> {
  const rt = currentRuntime();
  const host = opts.host ?? '127.0.0.1';
  const idleMs = opts.idleMs ?? 30_000;
  const limits: ParserLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  // Room for the largest acceptable request: headers, body and the chunk framing around it.
  const maxBuffer = limits.maxHeaderBytes + limits.maxBodyBytes + 64 * 1024;
  const listener = await TcpListener.bind({ host, port: opts.port ?? 0 }, { reusePort: opts.reusePort ?? false });
  const stats: ServerStats = { connections: 0, requests: 0, errors: { 400: 0, 404: 0, 413: 0, 431: 0 }, idleClosed: 0, drainCut: 0 };
  const live = new Set<ConnState>();
  let stopping = false;
  const drainMs = opts.drainMs ?? 4500;
  const sendChunk = rt.backend.name === 'node' ? NODE_SEND_CHUNK : Infinity;
  let drainTimer: ReturnType<typeof setTimeout> | null = null;
  let drained: () => void = () => undefined;
  const allClosed = new Promise<void>((r) => (drained = r)).then(() => {
    if (drainTimer !== null) clearTimeout(drainTimer);
    drainTimer = null;
  });

  // The idle sweep: runs every idleMs/4 (at least 10 ms) while the server is open.
  const sweepEvery = Math.max(10, Math.floor(idleMs / 4));
  const sweepsToClose = Math.max(1, Math.ceil(idleMs / sweepEvery));
  let sweepTimer: ReturnType<typeof setTimer> | null = null;
  const sweep = (): void => {
    sweepTimer = null;
    if (stopping) return;
    for (const st of live) {
      if (st.closing) {
        // Closed by an earlier sweep and still here: its 408 is stuck behind a client that does
        // not read. Give it another idleMs, then close without it.
        if (++st.idleSweeps >= 2 * sweepsToClose) void st.conn.close();
      } else if (st.active) {
        st.active = false;
        st.idleSweeps = 0;
      } else if (++st.idleSweeps >= sweepsToClose) {
        stats.idleClosed++;
        st.closing = true;
        // A send that made no progress for idleMs (the client stopped reading): close, which
        // cancels the send (the serve loop ends with its rejection). Nothing more can be said.
        if (st.sending) void st.conn.close();
        else if (st.busy) {
          // Part of a request is buffered (its head or body stopped arriving): say so before closing.
          const conn = st.conn;
          void conn.sendAll(REQUEST_TIMEOUT).then(
            () => conn.close(),
            () => conn.close(),
          );
        } else void st.conn.close();
      }
    }
    sweepTimer = setTimer(sweepEvery, sweep);
  };
  if (idleMs > 0) sweepTimer = setTimer(sweepEvery, sweep);

  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    if (sweepTimer !== null) clearTimer(sweepTimer);
    sweepTimer = null;
    void listener.close();
    // A recv the kernel has completed may not have been reaped yet (completions are reaped when the
    // event loop polls the backend): decide which connections are idle one loop turn later, so a
    // request whose first bytes were already read counts as begun and is answered.
    setImmediate(closeIdle);
  };
  const closeIdle = (): void => {
    for (const st of live) {
      if (st.busy || st.closing) continue;
      st.closing = true;
      void st.conn.close();
    }
    if (live.size === 0) {
      drained();
      return;
    }
    // A client that never finishes its request must not hold the drain past its deadline.
    drainTimer = setTimeout(() => {
      drainTimer = null;
      for (const st of live) {
        if (st.closing) {
          // Closed by the idle sweep but its 408 is stuck behind a client that does not read.
          void st.conn.close();
          continue;
        }
        st.closing = true;
        stats.drainCut++;
        void st.conn.close();
      }
    }, drainMs);
  };
  const onShutdown = (): void => stop();
  rt.shutdownSignal.addEventListener('abort', onShutdown, { once: true });

  async function serve(st: ConnState): Promise<void> {
    const conn = st.conn;
    const parser = new RequestParser(limits);
    const out = new Output();
    let buf = Buffer.allocUnsafe(INITIAL_BUFFER);
    let start = 0;
    let end = 0;
    let continued = false; // 100 Continue sent for the request being read
    try {
      for (;;) {
        if (stopping && !st.busy) return;
        const n = await conn.recv(end === 0 ? buf : buf.subarray(end));
        // Bytes that raced a close by the drain or the idle sweep: the close wins (nothing was taken).
        if (n === 0 || st.closing) return;
        st.active = true;
        st.busy = true;
        st.sending = true;
        end += n;
        let close = false;
        let refused = false; // answered 400/413/431: the client may still be sending
        while (start < end) {
          const r = parser.execute(buf, start, end);
          if (r === NEED_MORE) {
            // curl and others wait (about a second) for this before sending a body. Not when part of
            // the body is already here (RFC 9110 section 10.1.1: the client did not wait for it).
            if (parser.inBody && parser.expectContinue && !continued && end === parser.bodyStart) {
              continued = true;
              out.begin();
              out.append(CONTINUE);
            }
            break;
          }
          continued = false;
          if (r < 0) {
            const status = -r as 400 | 413 | 431;
            stats.errors[status]++;
            out.constant(ERROR_RESPONSES[status]!);
            close = true;
            refused = true;
            break;
          }
          stats.requests++;
          const keepAlive = parser.keepAlive;
          const method = parser.method;
          const ts = parser.targetStart;
          const tl = parser.targetLength;
          if ((method === METHOD_GET || method === METHOD_HEAD) && tl === 1 && buf[ts] === PATH_ROOT) {
            if (method === METHOD_HEAD) {
              out.begin();
              out.append(HELLO_HEAD);
              connectionHeader(out, parser.versionMinor, keepAlive);
              out.append(CRLF);
            } else if (!keepAlive) out.constant(HELLO_CLOSE);
            else if (parser.versionMinor === 0) out.constant(HELLO_KA);
            else out.constant(HELLO);
          } else if (method === METHOD_POST && tl === 5 && buf.compare(PATH_ECHO, 0, 5, ts, ts + 5) === 0) {
            out.begin();
            out.append(ECHO_HEAD);
            out.appendAscii(`${parser.bodyLength}\r\n`);
            connectionHeader(out, parser.versionMinor, keepAlive);
            out.append(CRLF);
            out.append(buf, parser.bodyStart, parser.bodyStart + parser.bodyLength);
          } else {
            stats.errors[404]++;
            out.begin();
            out.append(NOT_FOUND);
            connectionHeader(out, parser.versionMinor, keepAlive);
            out.append(CRLF);
            if (method !== METHOD_HEAD) out.appendAscii(NOT_FOUND_BODY);
          }
          start += r;
          if (!keepAlive) {
            close = true;
            break;
          }
        }
        const batch = out.take();
        if (batch !== null) {
          // One send per batch; the rest after a short send (a full socket buffer), or of a batch
          // over sendChunk, goes out in sendRest, which reports each send's progress to the sweep.
          const sent = await conn.send(batch.length <= sendChunk ? batch : batch.subarray(0, sendChunk));
          if (sent < batch.length) await sendRest(st, batch, sent, sendChunk);
        }
        st.sending = false;
        if (refused) {
          await lingerClose(conn, buf);
          return;
        }
        if (close) return;
        if (start === end) {
          st.busy = false;
          if (stopping) return;
          start = end = 0;
          // A big request grew the buffers: give the memory back rather than hold it while idle.
          if (buf.length > SHRINK_ABOVE) buf = Buffer.allocUnsafe(INITIAL_BUFFER);
          if (out.buf.length > SHRINK_ABOVE) out.buf = Buffer.allocUnsafe(0);
        } else {
          // Part of a request is buffered: the connection stays busy (a drain waits for the rest of
          // the request and answers it). Move it to the front, and grow when the buffer is full.
          if (start > 0) {
            buf.copyWithin(0, start, end);
            end -= start;
            start = 0;
          }
          if (end === buf.length) {
            if (buf.length >= maxBuffer) {
              // Within the header limit the parser answers 431 first, so this is a body whose chunk
              // framing (say a 1 MiB body in 1-byte chunks) does not fit: refuse it as too large.
              const status = parser.inBody ? 413 : 431;
              stats.errors[status]++;
              st.sending = true; // a client that does not read is closed by the sweep, without a 408
              await conn.sendAll(ERROR_RESPONSES[status]!);
              await lingerClose(conn, buf);
              return;
            }
            const bigger = Buffer.allocUnsafe(Math.min(maxBuffer, buf.length * 2));
            buf.copy(bigger, 0, 0, end);
            buf = bigger;
          }
        }
      }
    } catch {
      // A reset, an idle close racing a recv, a send to a vanished peer: this connection ends,
      // nothing else is affected.
    } finally {
      live.delete(st);
      await conn.close().catch(() => undefined);
      if (stopping && live.size === 0) drained();
    }
  }

  const acceptLoop = (async () => {
    try {
      for await (const conn of listener) {
        if (stopping) {
          await conn.close();
          continue;
        }
        stats.connections++;
        const st: ConnState = { conn, active: true, idleSweeps: 0, busy: false, sending: false, closing: false };
        live.add(st);
        rt.spawn(() => serve(st)).then(undefined, () => undefined);
      }
    } catch {
      // The listener was closed under a pending accept.
    }
    stop();
    await allClosed;
    rt.shutdownSignal.removeEventListener('abort', onShutdown);
  })();

  const address = listener.address;
  return {
    port: address.port,
    host,
    stats,
    done: acceptLoop,
    close: async () => {
      stop();
      await acceptLoop;
    },
  };
}

/**
 * Sends `batch` from `done` on, at most `chunk` bytes per send. Every send that completes marks the
 * connection active, so a client that reads slowly but steadily is not closed as idle, while one
 * that stopped reading leaves a send pending without progress, and the idle sweep closes the
 * connection (which cancels the send).
 */
async function sendRest(st: ConnState, batch: Uint8Array, done: number, chunk: number): Promise<void> {
  const conn = st.conn;
  for (;;) {
    if (done > 0) st.active = true;
    if (done >= batch.length) return;
    const n = await conn.send(batch.subarray(done, Math.min(batch.length, done + chunk)));
    if (n <= 0) throw new Error(`send returned ${n}`);
    done += n;
  }
}

/** How long, and how many bytes, a refused client's remaining upload is read and discarded before closing. */
const LINGER_MS = 1000;
const LINGER_BYTES = 8 * 1024 * 1024;

/**
 * Closing a socket with unread bytes makes the kernel send RST, and an RST can destroy the error
 * answer in the client's receive queue before the client reads it (typical for a 413 to a client
 * still uploading). So after a 400/413/431: half-close (FIN after the answer), then read and discard
 * until the client closes, for at most LINGER_MS / LINGER_BYTES (nginx's "lingering close").
 */
async function lingerClose(conn: TcpStream, scratch: Buffer): Promise<void> {
  try {
    await conn.shutdown('write');
    const signal = AbortSignal.timeout(LINGER_MS);
    let total = 0;
    while (total < LINGER_BYTES) {
      const n = await conn.recv(scratch, { signal });
      if (n === 0) return;
      total += n;
    }
  } catch {
    // Reset, timeout, or closed by the drain: close now.
  }
}

function connectionHeader(out: Output, versionMinor: number, keepAlive: boolean): void {
  if (!keepAlive) out.append(CONN_CLOSE);
  else if (versionMinor === 0) out.append(CONN_KA);
}
