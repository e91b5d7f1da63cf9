/**
 * HTTP parser fuzzing against a running apps/http-echo (a child process on port 0, idle timeout
 * 1 s): random bytes and mutated valid requests (byte flips, insertions, deletions, truncation,
 * duplication, header floods, huge lengths). Each connection must be answered with 400/408/413/431 or a
 * valid answer (200/404, after an optional 100 Continue), or be closed, within a bound: never stuck.
 * With `fin` the client shuts its write side after sending (the server must then close); without it
 * the server must answer or close by its idle timeout. Afterwards the server still serves GET / and
 * exits 0 on SIGTERM. Seeded: MINISS_FUZZ_SEED reproduces, MINISS_FUZZ_RUNS sets the case count.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { echoBuilt, echoMain, exchange, startEcho, type EchoServer } from './echo-server.js';

const seed = process.env.MINISS_FUZZ_SEED ? Number(process.env.MINISS_FUZZ_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
const cases = process.env.MINISS_FUZZ_RUNS ? Number(process.env.MINISS_FUZZ_RUNS) : 400;
const IDLE_MS = 1000;
const BOUND_MS = IDLE_MS + 3000;
const ALLOWED = new Set([200, 404, 400, 408, 413, 431]);

const valid = [
  'GET / HTTP/1.1\r\nHost: x\r\n\r\n',
  'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n',
  'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello',
  'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n',
  'POST /echo HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc',
  'GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n',
  'POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok',
];

type Mutation =
  | { m: 'flip'; at: number; byte: number }
  | { m: 'insert'; at: number; bytes: number[] }
  | { m: 'delete'; at: number; n: number }
  | { m: 'truncate'; at: number }
  | { m: 'dup'; at: number; n: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ m: fc.constant<'flip'>('flip'), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    m: fc.constant<'insert'>('insert'),
    at: fc.nat(),
    bytes: fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(13, 10, 32, 58, 9, 0)), { maxLength: 12 }),
  }),
  fc.record({ m: fc.constant<'delete'>('delete'), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ m: fc.constant<'truncate'>('truncate'), at: fc.nat() }),
  fc.record({ m: fc.constant<'dup'>('dup'), at: fc.nat(), n: fc.integer({ min: 1, max: 20 }) }),
);

function apply(base: Buffer, ms: Mutation[]): Buffer {
  let b = base;
  for (const x of ms) {
    const at = b.length === 0 ? 0 : x.at % (b.length + 1);
    if (x.m === 'flip' && b.length > 0) {
      b = Buffer.from(b);
      b[at % b.length] = x.byte;
    } else if (x.m === 'insert') b = Buffer.concat([b.subarray(0, at), Buffer.from(x.bytes), b.subarray(at)]);
    else if (x.m === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(at + x.n)]);
    else if (x.m === 'truncate') b = b.subarray(0, at);
    else if (x.m === 'dup') b = Buffer.concat([b.subarray(0, at), Buffer.alloc(0), ...Array(x.n).fill(b.subarray(at, at + 16)), b.subarray(at)]);
  }
  return b;
}

const special = fc.constantFrom(
  // Limits: 413 (body over 1 MiB announced), 431 (header block over 16 KiB / over 100 lines).
  Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n'),
  Buffer.from(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`),
  Buffer.from(`GET / HTTP/1.1\r\n${Array.from({ length: 150 }, (_, i) => `H${i}: v\r\n`).join('')}\r\n`),
  Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n'),
  Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n'),
  Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n'),
);

const request: fc.Arbitrary<{ bytes: Buffer; fin: boolean }> = fc.record({
  bytes: fc.oneof(
    { weight: 6, arbitrary: fc.tuple(fc.constantFrom(...valid), fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([v, ms]) => apply(Buffer.from(v), ms)) },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)) },
    { weight: 1, arbitrary: special },
  ),
  fin: fc.boolean(),
});

function firstFinalStatus(data: Buffer): number | undefined {
  const s = data.toString('latin1');
  let i = 0;
  for (;;) {
    const m = /^HTTP\/1\.1 (\d{3}) /.exec(s.slice(i));
    if (!m) return undefined;
    const code = Number(m[1]);
    if (code !== 100) return code;
    const end = s.indexOf('\r\n\r\n', i);
    if (end < 0) return undefined;
    i = end + 4;
  }
}

describe('HTTP parser fuzzing against apps/http-echo', () => {
  if (!echoBuilt) {
    it.skip(`skipped: apps/http-echo is not built (${echoMain} missing)`, () => {});
    return;
  }
  let server: EchoServer;
  beforeAll(async () => {
    server = await startEcho(['--backend', 'epoll', '--idle-ms', String(IDLE_MS)]);
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it(`random and mutated requests: only 400/413/431 or a valid answer, never stuck (seed ${seed}, ${cases} cases)`, async () => {
    console.log(`fuzz-http: seed ${seed} (MINISS_FUZZ_SEED=${seed} reproduces), ${cases} cases, backend ${server.backend}`);
    const samples = fc.sample(request, { seed, numRuns: cases });
    const bad: string[] = [];
    const statuses = new Map<number | string, number>();
    const concurrency = 50;
    for (let i = 0; i < samples.length; i += concurrency) {
      const batch = samples.slice(i, i + concurrency);
      const results = await Promise.all(batch.map((s) => exchange(server.port, s.bytes, s.fin, BOUND_MS)));
      results.forEach((r, j) => {
        const s = batch[j]!;
        const status = firstFinalStatus(r.data);
        const key = status ?? (r.data.length === 0 ? 'closed-silently' : 'no-status');
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
        const what = `case ${i + j} fin=${s.fin} input=${JSON.stringify(s.bytes.toString('latin1').slice(0, 200))}`;
        if (r.stuck) bad.push(`${what}: stuck (no answer, not closed in ${BOUND_MS} ms)`);
        else if (r.data.length > 0 && (status === undefined || !ALLOWED.has(status)))
          bad.push(`${what}: bad answer ${JSON.stringify(r.data.toString('latin1').slice(0, 120))}`);
      });
      expect(server.proc.exitCode, `server died: ${server.output()}`).toBeNull();
    }
    console.log(`fuzz-http statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
    expect(bad, bad.slice(0, 5).join('\n')).toEqual([]);
    // The fuzz reached the error paths and the happy path.
    expect(statuses.get(400) ?? 0).toBeGreaterThan(0);
    expect((statuses.get(200) ?? 0) + (statuses.get(404) ?? 0)).toBeGreaterThan(0);
    // Still serving.
    const after = await exchange(server.port, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), false, BOUND_MS);
    expect(firstFinalStatus(after.data)).toBe(200);
  }, 60_000);
});
