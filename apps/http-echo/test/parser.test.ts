import { describe, expect, it } from 'vitest';
import { NEED_MORE, RequestParser } from '@miniss/app-http-echo/parser';

interface Parsed {
  method: string;
  target: string;
  headers: Array<[string, string]>;
  body: string;
  keepAlive: boolean;
  version: number;
}

/**
 * Feeds `pieces` the way the server does: one growing receive buffer, parse after each piece,
 * compact the unparsed tail to the front. Returns the parsed requests, then the error if any.
 */
function feed(pieces: Buffer[], limits?: ConstructorParameters<typeof RequestParser>[0]): { reqs: Parsed[]; error: number } {
  const p = new RequestParser(limits);
  let buf = Buffer.alloc(64);
  let start = 0;
  let end = 0;
  const reqs: Parsed[] = [];
  for (const piece of pieces) {
    if (end + piece.length > buf.length) {
      const b = Buffer.alloc(Math.max(buf.length * 2, end + piece.length));
      buf.copy(b, 0, 0, end);
      buf = b;
    }
    piece.copy(buf, end);
    end += piece.length;
    for (;;) {
      if (start === end) break;
      const r = p.execute(buf, start, end);
      if (r === NEED_MORE) break;
      if (r < 0) return { reqs, error: -r };
      reqs.push({
        method: p.methodString(buf),
        target: p.targetString(buf),
        headers: p.headers(buf),
        body: p.body(buf).toString('latin1'),
        keepAlive: p.keepAlive,
        version: p.versionMinor,
      });
      start += r;
    }
    // Compact like the server: the parser must cope with its bytes moving.
    buf.copyWithin(0, start, end);
    end -= start;
    start = 0;
  }
  return { reqs, error: 0 };
}

const whole = (s: string) => feed([Buffer.from(s, 'latin1')]);

const STREAM =
  '\r\nGET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n' +
  'POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello' +
  'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n' +
  'GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n' +
  'DELETE /y?q=1 HTTP/1.1\r\nConnection: foo, close\r\n\r\n';

describe('RequestParser', () => {
  it('parses a pipelined stream of requests in one buffer', () => {
    const { reqs, error } = whole(STREAM);
    expect(error).toBe(0);
    expect(reqs.map((r) => [r.method, r.target, r.body, r.keepAlive, r.version])).toEqual([
      ['GET', '/', '', true, 1],
      ['POST', '/echo', 'hello', true, 1],
      ['POST', '/echo', 'abc0123456789abcdef', true, 1],
      ['GET', '/x', '', true, 0],
      ['DELETE', '/y?q=1', '', false, 1],
    ]);
    expect(reqs[0]!.headers).toEqual([
      ['host', 'a'],
      ['x-empty', ''],
    ]);
  });

  it('gives the same result when the stream is split at every byte boundary', () => {
    const full = Buffer.from(STREAM, 'latin1');
    const expected = whole(STREAM);
    for (let k = 1; k < full.length; k++) {
      expect(feed([full.subarray(0, k), full.subarray(k)]), `split at ${k}`).toEqual(expected);
    }
  });

  it('gives the same result fed one byte at a time', () => {
    const full = Buffer.from(STREAM, 'latin1');
    const pieces = Array.from({ length: full.length }, (_, i) => full.subarray(i, i + 1));
    expect(feed(pieces)).toEqual(whole(STREAM));
  });

  it('reports Expect: 100-continue once the header block is parsed, before the body', () => {
    const p = new RequestParser();
    const buf = Buffer.from('POST /echo HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n', 'latin1');
    expect(p.execute(buf, 0, buf.length)).toBe(NEED_MORE);
    expect(p.inBody).toBe(true);
    expect(p.expectContinue).toBe(true);
    const full = Buffer.concat([buf, Buffer.from('abc')]);
    expect(p.execute(full, 0, full.length)).toBe(full.length);
    expect(p.body(full).toString()).toBe('abc');
    expect(p.inBody).toBe(false);
  });

  it('never throws on mutated input, split at random points (seeded)', () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const base = Buffer.from(STREAM, 'latin1');
    const interesting = [0, 9, 10, 13, 32, 58, 59, 48, 102, 255, 127];
    for (let iter = 0; iter < 2000; iter++) {
      const m = Buffer.from(base);
      for (let k = rnd(4) + 1; k > 0; k--) m[rnd(m.length)] = rnd(2) ? interesting[rnd(interesting.length)]! : rnd(256);
      const cut = [0, rnd(m.length), rnd(m.length), m.length].sort((x, y) => x - y);
      const pieces = [m.subarray(cut[0], cut[1]), m.subarray(cut[1], cut[2]), m.subarray(cut[2], cut[3])];
      const r = feed(pieces);
      expect([0, 400, 413, 431]).toContain(r.error);
      expect(r.reqs.length).toBeLessThanOrEqual(5);
      // Splitting must not change the outcome.
      expect(feed([m])).toEqual(r);
    }
  });

  it('refuses a bad request line before the header block is complete', () => {
    for (const bad of ['\x00', 'GET /\x01', 'GET  ', 'GET / HTTX', 'GET / HTTP/1.2', 'GET / HTTP/1.1\rX', 'GET / HTTP/1.1 ']) {
      expect(whole(bad).error, JSON.stringify(bad)).toBe(400);
    }
    for (const ok of ['G', 'GET', 'GET ', 'GET /a', 'GET / ', 'GET / HTTP/', 'GET / HTTP/1.1', 'GET / HTTP/1.1\r', 'GET / HTTP/1.1\r\nHost']) {
      expect(whole(ok), JSON.stringify(ok)).toEqual({ reqs: [], error: 0 });
    }
  });

  it('returns NEED_MORE for a partial request and keeps no result', () => {
    expect(whole('GET / HTTP/1.1\r\nHost: a\r\n')).toEqual({ reqs: [], error: 0 });
    expect(whole('POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc')).toEqual({ reqs: [], error: 0 });
  });

  it.each([
    ['no version', 'GET /\r\n\r\n'],
    ['bad version', 'GET / HTTP/2.0\r\n\r\n'],
    ['space in method', 'G T / HTTP/1.1\r\n\r\n'],
    ['two spaces', 'GET  / HTTP/1.1\r\n\r\n'],
    ['control char in target', 'GET /\x01 HTTP/1.1\r\n\r\n'],
    ['header without colon', 'GET / HTTP/1.1\r\nHost a\r\n\r\n'],
    ['space before colon', 'GET / HTTP/1.1\r\nHost : a\r\n\r\n'],
    ['obs-fold', 'GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n'],
    ['NUL in value', 'GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n'],
    ['bare LF in value', 'GET / HTTP/1.1\r\nA: b\nc\r\n\r\n'],
    ['bare LF first', '\nGET / HTTP/1.1\r\n\r\n'],
    ['bad content-length', 'POST /echo HTTP/1.1\r\nContent-Length: 1x\r\n\r\n'],
    ['negative content-length', 'POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n'],
    ['conflicting content-length', 'POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'],
    ['CL and TE', 'POST /echo HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['unknown TE', 'POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n'],
    ['bad chunk size', 'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'],
    ['chunk without CRLF', 'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n'],
  ])('400 for %s', (_name, req) => {
    expect(whole(req).error).toBe(400);
  });

  it('413 for a body over the limit, by Content-Length or by chunks', () => {
    const limits = { maxBodyBytes: 100 };
    expect(feed([Buffer.from('POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n')], limits).error).toBe(413);
    expect(feed([Buffer.from('POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n' + 'x'.repeat(100))], limits).reqs[0]!.body.length).toBe(100);
    const chunked = 'POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n' + 'y'.repeat(50) + '\r\n33\r\n';
    expect(feed([Buffer.from(chunked)], limits).error).toBe(413);
    expect(whole('POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n').error).toBe(413);
  });

  it('431 for a header block over the limit, complete or not', () => {
    const big = 'GET / HTTP/1.1\r\nX: ' + 'a'.repeat(17 * 1024) + '\r\n\r\n';
    expect(whole(big).error).toBe(431);
    expect(whole(big.slice(0, 16 * 1024 + 10)).error).toBe(431);
    const fits = 'GET / HTTP/1.1\r\nX: ' + 'a'.repeat(15 * 1024) + '\r\n\r\n';
    expect(whole(fits).reqs.length).toBe(1);
    const many = 'GET / HTTP/1.1\r\n' + 'A: b\r\n'.repeat(101) + '\r\n';
    expect(whole(many).error).toBe(431);
  });
});
