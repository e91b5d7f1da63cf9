/**
 * An incremental HTTP/1.1 request parser that works on Buffers in place.
 *
 * The caller owns one receive buffer per connection and hands the parser the unparsed region
 * `[start, end)`. `execute()` answers with the number of bytes the next complete request takes
 * (`> 0`), `NEED_MORE` (0) when the bytes end inside a request, or a negative error code
 * (`-400`, `-413`, `-431`). The parser keeps its progress (how far the header block was searched,
 * where chunk decoding stopped) relative to the start of the current request, so the caller may
 * move the unparsed bytes (compaction, growing the buffer) between calls, as long as it passes
 * the new `start`. After a complete request the fields below describe it until the next
 * `execute()`; `reset()` is implicit.
 *
 * No strings are built while parsing: the request line and headers are scanned with
 * `Buffer.indexOf` and byte comparisons, and the known headers (Content-Length,
 * Transfer-Encoding, Connection) are recognised by length and case-folded bytes. Chunked bodies
 * are decoded in place: the data of each chunk is moved down to follow the previous one, so the
 * decoded body is the contiguous range `[bodyStart, bodyStart + bodyLength)` of the buffer.
 *
 * Strictness (request smuggling is refused, not guessed): a request with both Content-Length and
 * Transfer-Encoding, a Transfer-Encoding other than `chunked`, conflicting Content-Length values,
 * obsolete line folding, bare LF, control characters, or a version other than HTTP/1.0 or 1.1 is
 * a 400.
 */

export const NEED_MORE = 0;
export const ERR_BAD_REQUEST = -400;
export const ERR_TOO_LARGE = -413;
export const ERR_HEADERS_TOO_LARGE = -431;

export interface ParserLimits {
  /** Largest header block (request line + headers + the empty line), bytes. Default 16 KiB. */
  maxHeaderBytes: number;
  /** Largest body (after chunk decoding), bytes. Default 1 MiB. */
  maxBodyBytes: number;
  /** Most header lines. Default 100 (more is a 431). */
  maxHeaders: number;
}

export const DEFAULT_LIMITS: ParserLimits = { maxHeaderBytes: 16 * 1024, maxBodyBytes: 1024 * 1024, maxHeaders: 100 };

/** Method codes (the ones the echo server tells apart; anything else is METHOD_OTHER). */
export const METHOD_OTHER = 0;
export const METHOD_GET = 1;
export const METHOD_POST = 2;
export const METHOD_HEAD = 3;

const CR = 13;
const LF = 10;
const SP = 32;
const HTAB = 9;
const COLON = 58;
const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');

/** tchar from RFC 9110 section 5.6.2: the bytes allowed in a method and a header name. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 48; c <= 57; c++) TCHAR[c] = 1;
for (let c = 65; c <= 90; c++) TCHAR[c] = 1;
for (let c = 97; c <= 122; c++) TCHAR[c] = 1;

/** Bytes allowed in a header value: VCHAR, obs-text, SP and HTAB (no CR, LF, NUL or other CTL). */
const VALUECHAR = new Uint8Array(256);
for (let c = 32; c < 256; c++) VALUECHAR[c] = c === 127 ? 0 : 1;
VALUECHAR[HTAB] = 1;

/** Bytes allowed in a request target: visible ASCII and obs-text, no SP or CTL. */
const TARGETCHAR = new Uint8Array(256);
for (let c = 33; c < 256; c++) TARGETCHAR[c] = c === 127 ? 0 : 1;

const HEX = new Int8Array(256).fill(-1);
for (let c = 0; c < 10; c++) HEX[48 + c] = c;
for (let c = 0; c < 6; c++) {
  HEX[65 + c] = 10 + c;
  HEX[97 + c] = 10 + c;
}

const HTTP_1 = Buffer.from('HTTP/1.', 'latin1');

/**
 * Below this many bytes a JavaScript scan beats `Buffer.indexOf` (whose call into C++ costs more than
 * scanning a short request line or a small header block; the parser measures ~15 % faster on a
 * wrk-sized GET). Longer ranges use `indexOf`.
 */
const SHORT_SCAN = 256;

/** Index of the first CRLFCRLF wholly inside `buf[from, end)`, or -1. */
function findHeadEnd(buf: Buffer, from: number, end: number): number {
  if (end - from > SHORT_SCAN) {
    const i = buf.indexOf(CRLFCRLF, from);
    return i >= 0 && i + 4 <= end ? i : -1;
  }
  for (let i = from; i + 3 < end; i++) {
    if (buf[i] === CR && buf[i + 1] === LF && buf[i + 2] === CR && buf[i + 3] === LF) return i;
  }
  return -1;
}

/** Index of the first CR in `buf[from, end)`, or -1. */
function findCR(buf: Buffer, from: number, end: number): number {
  if (end - from > SHORT_SCAN) {
    const i = buf.indexOf(CR, from);
    return i < end ? i : -1;
  }
  for (let i = from; i < end; i++) if (buf[i] === CR) return i;
  return -1;
}

/** Whether `buf[s, end)` can still begin a valid request line (the grammar of parseHead). */
function requestLinePrefixOk(buf: Buffer, s: number, end: number): boolean {
  let p = s;
  while (p < end && TCHAR[buf[p]!] === 1) p++;
  if (p === end) return true;
  if (p === s || buf[p] !== SP) return false;
  const t = ++p;
  while (p < end && TARGETCHAR[buf[p]!] === 1) p++;
  if (p === end) return true;
  if (p === t || buf[p] !== SP) return false;
  p++;
  for (let i = 0; i < 7; i++, p++) {
    if (p === end) return true;
    if (buf[p] !== HTTP_1[i]) return false;
  }
  if (p === end) return true;
  if (buf[p] !== 48 && buf[p] !== 49) return false;
  if (++p === end) return true;
  if (buf[p] !== CR) return false;
  if (++p === end) return true;
  return buf[p] === LF;
}

const enum Stage {
  Headers,
  ChunkSize,
  ChunkData,
  Trailers,
  Body,
}

/** Case-insensitive compare of `buf[at, at + lower.length)` with the lower-case ASCII `lower`. */
function equalsLower(buf: Buffer, at: number, lower: Uint8Array): boolean {
  for (let i = 0; i < lower.length; i++) {
    if ((buf[at + i]! | 0x20) !== lower[i]) return false;
  }
  return true;
}

const H_CONTENT_LENGTH = Buffer.from('content-length', 'latin1');
const H_TRANSFER_ENCODING = Buffer.from('transfer-encoding', 'latin1');
const H_CONNECTION = Buffer.from('connection', 'latin1');
const V_CHUNKED = Buffer.from('chunked', 'latin1');
const V_CLOSE = Buffer.from('close', 'latin1');
const V_KEEP_ALIVE = Buffer.from('keep-alive', 'latin1');
const H_EXPECT = Buffer.from('expect', 'latin1');
const V_100_CONTINUE = Buffer.from('100-continue', 'latin1');

export class RequestParser {
  readonly limits: ParserLimits;

  // The last complete request (positions are absolute offsets into the buffer given to execute()).
  method = METHOD_OTHER;
  methodStart = 0;
  methodLength = 0;
  targetStart = 0;
  targetLength = 0;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  versionMinor = 1;
  /** Whether the connection may carry another request after this one. */
  keepAlive = true;
  bodyStart = 0;
  bodyLength = 0;
  chunked = false;
  /**
   * The current request asked for `Expect: 100-continue`: valid as soon as its header block is
   * parsed (`inBody`), so a server can send `100 Continue` before the body arrives.
   */
  expectContinue = false;
  /** Header ranges, 4 numbers each: name start, name length, value start, value length. */
  readonly headerRanges: Int32Array;
  headerCount = 0;

  // Progress within the current request, relative to its first byte.
  private stage = Stage.Headers;
  private scanned = 0; // how far the header-end search (or chunk read position) got
  private headerEnd = 0; // offset of the first body byte
  private contentLength = 0;
  private bodyWrite = 0; // chunked: where the next decoded byte goes
  private chunkLeft = 0;
  private trailerBytes = 0;
  private leading = 0; // CRLFs before the request line (allowed by RFC 9112 section 2.2)

  constructor(limits: Partial<ParserLimits> = {}) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.headerRanges = new Int32Array(this.limits.maxHeaders * 4);
  }

  /** True once the current request's header block is parsed and its body is being read. */
  get inBody(): boolean {
    return this.stage !== Stage.Headers;
  }

  /** Forgets a partially parsed request (the caller dropped its bytes). */
  reset(): void {
    this.stage = Stage.Headers;
    this.scanned = 0;
    this.leading = 0;
  }

  /**
   * Parses the next request from `buf[start, end)`. Returns its total length in bytes when it is
   * complete (the next one starts at `start + result`), NEED_MORE, or a negative HTTP status.
   * After an error the connection must be closed: the parser's state is not meaningful.
   */
  execute(buf: Buffer, start: number, end: number): number {
    if (this.stage === Stage.Headers) {
      // Skip empty lines before the request line (RFC 9112 section 2.2 allows a few).
      let s = start + this.leading;
      while (s < end && (buf[s] === CR || buf[s] === LF)) {
        if (buf[s] === LF) return ERR_BAD_REQUEST;
        if (s + 1 >= end) return NEED_MORE;
        if (buf[s + 1] !== LF) return ERR_BAD_REQUEST;
        s += 2;
        this.leading += 2;
        if (this.leading > 64) return ERR_BAD_REQUEST;
      }
      if (s >= end) return NEED_MORE;
      const from = Math.max(s, start + this.scanned - 3);
      const idx = findHeadEnd(buf, from, end);
      const limit = this.limits.maxHeaderBytes;
      if (idx < 0 || idx + 4 > end) {
        this.scanned = end - start;
        if (end - s > limit) return ERR_HEADERS_TOO_LARGE;
        // Refuse a bad request line as soon as it is seen, rather than waiting for a header block
        // that may never come (only on this slow path: a complete head is checked once, below).
        return requestLinePrefixOk(buf, s, end) ? NEED_MORE : ERR_BAD_REQUEST;
      }
      if (idx + 4 - s > limit) return ERR_HEADERS_TOO_LARGE;
      const r = this.parseHead(buf, s, idx + 2);
      if (r < 0) return r;
      this.headerEnd = idx + 4 - start;
      this.bodyStart = idx + 4;
      if (!this.chunked && this.contentLength === 0) {
        this.bodyLength = 0;
        return this.finish(idx + 4 - start);
      }
      // The body may arrive in later calls, after the caller moved the bytes: keep the request
      // line and header positions relative to the request's first byte until it is complete.
      this.rebase(-start);
      if (this.chunked) {
        this.stage = Stage.ChunkSize;
        this.scanned = this.headerEnd;
        this.bodyWrite = this.headerEnd;
        this.bodyLength = 0;
        this.trailerBytes = 0;
      } else {
        this.bodyLength = this.contentLength;
        this.stage = Stage.Body;
      }
    }
    this.bodyStart = start + this.headerEnd;
    if (this.stage === Stage.Body) {
      const total = this.headerEnd + this.contentLength;
      if (end - start < total) return NEED_MORE;
      this.rebase(start);
      return this.finish(total);
    }
    return this.chunks(buf, start, end);
  }

  private rebase(by: number): void {
    this.methodStart += by;
    this.targetStart += by;
    const r = this.headerRanges;
    for (let i = 0; i < this.headerCount * 4; i += 2) r[i] = r[i]! + by;
  }

  private finish(total: number): number {
    this.stage = Stage.Headers;
    this.scanned = 0;
    this.leading = 0;
    return total;
  }

  /** Decodes chunks in place from the read position; see the class comment. */
  private chunks(buf: Buffer, start: number, end: number): number {
    const maxBody = this.limits.maxBodyBytes;
    for (;;) {
      const at = start + this.scanned;
      if (this.stage === Stage.ChunkSize) {
        const nl = buf.indexOf(LF, at);
        if (nl < 0 || nl >= end) {
          // A size line is hex digits plus optional extensions; 1 KiB is plenty.
          if (end - at > 1024) return ERR_BAD_REQUEST;
          return NEED_MORE;
        }
        if (nl === at || buf[nl - 1] !== CR) return ERR_BAD_REQUEST;
        let size = 0;
        let p = at;
        for (; p < nl - 1; p++) {
          const h = HEX[buf[p]!]!;
          if (h < 0) break;
          size = size * 16 + h;
          if (size > maxBody) return ERR_TOO_LARGE;
        }
        if (p === at) return ERR_BAD_REQUEST;
        // Chunk extensions (`;name=value`) are allowed and ignored; anything else is not.
        if (p < nl - 1) {
          while (p < nl - 1 && (buf[p] === SP || buf[p] === HTAB)) p++;
          if (p < nl - 1 && buf[p] !== 59 /* ; */) return ERR_BAD_REQUEST;
          for (; p < nl - 1; p++) if (VALUECHAR[buf[p]!] === 0) return ERR_BAD_REQUEST;
        }
        if (this.bodyLength + size > maxBody) return ERR_TOO_LARGE;
        this.scanned = nl + 1 - start;
        if (size === 0) {
          this.stage = Stage.Trailers;
        } else {
          this.chunkLeft = size;
          this.stage = Stage.ChunkData;
        }
      } else if (this.stage === Stage.ChunkData) {
        const need = this.chunkLeft + 2;
        if (end - at < need) return NEED_MORE;
        if (buf[at + this.chunkLeft] !== CR || buf[at + this.chunkLeft + 1] !== LF) return ERR_BAD_REQUEST;
        const dst = start + this.bodyWrite;
        if (dst !== at) buf.copyWithin(dst, at, at + this.chunkLeft);
        this.bodyWrite += this.chunkLeft;
        this.bodyLength += this.chunkLeft;
        this.scanned += need;
        this.stage = Stage.ChunkSize;
      } else {
        // Trailer fields until an empty line; they are checked for syntax and dropped.
        const nl = buf.indexOf(LF, at);
        if (nl < 0 || nl >= end) {
          if (this.trailerBytes + (end - at) > this.limits.maxHeaderBytes) return ERR_HEADERS_TOO_LARGE;
          return NEED_MORE;
        }
        if (nl === at || buf[nl - 1] !== CR) return ERR_BAD_REQUEST;
        this.trailerBytes += nl + 1 - at;
        if (this.trailerBytes > this.limits.maxHeaderBytes) return ERR_HEADERS_TOO_LARGE;
        if (nl - 1 === at) {
          const total = nl + 1 - start;
          this.bodyStart = start + this.headerEnd;
          this.rebase(start);
          return this.finish(total);
        }
        const colon = buf.indexOf(COLON, at);
        if (colon <= at || colon > nl) return ERR_BAD_REQUEST;
        for (let p = at; p < colon; p++) if (TCHAR[buf[p]!] === 0) return ERR_BAD_REQUEST;
        for (let p = colon + 1; p < nl - 1; p++) if (VALUECHAR[buf[p]!] === 0) return ERR_BAD_REQUEST;
        this.scanned = nl + 1 - start;
      }
    }
  }

  /** Parses the request line and header lines in `buf[s, e)`, where `e` is just past the last header's CRLF. */
  private parseHead(buf: Buffer, s: number, e: number): number {
    // Request line: method SP target SP HTTP/1.x CRLF
    const lineEnd = findCR(buf, s, e);
    if (lineEnd < 0 || lineEnd >= e || buf[lineEnd + 1] !== LF) return ERR_BAD_REQUEST;
    let p = s;
    while (p < lineEnd && TCHAR[buf[p]!] === 1) p++;
    if (p === s || buf[p] !== SP) return ERR_BAD_REQUEST;
    this.methodStart = s;
    this.methodLength = p - s;
    const ml = p - s;
    if (ml === 3 && buf[s] === 71 && buf[s + 1] === 69 && buf[s + 2] === 84) this.method = METHOD_GET;
    else if (ml === 4 && buf[s] === 80 && buf[s + 1] === 79 && buf[s + 2] === 83 && buf[s + 3] === 84) this.method = METHOD_POST;
    else if (ml === 4 && buf[s] === 72 && buf[s + 1] === 69 && buf[s + 2] === 65 && buf[s + 3] === 68) this.method = METHOD_HEAD;
    else this.method = METHOD_OTHER;
    const t = ++p;
    while (p < lineEnd && TARGETCHAR[buf[p]!] === 1) p++;
    if (p === t || buf[p] !== SP) return ERR_BAD_REQUEST;
    this.targetStart = t;
    this.targetLength = p - t;
    p++;
    // "HTTP/1.0" or "HTTP/1.1", then the line ends.
    if (
      lineEnd - p !== 8 ||
      buf[p] !== 72 || buf[p + 1] !== 84 || buf[p + 2] !== 84 || buf[p + 3] !== 80 ||
      buf[p + 4] !== 47 || buf[p + 5] !== 49 || buf[p + 6] !== 46 || (buf[p + 7] !== 48 && buf[p + 7] !== 49)
    ) {
      return ERR_BAD_REQUEST;
    }
    this.versionMinor = buf[p + 7] === 49 ? 1 : 0;

    let keepAlive = this.versionMinor === 1;
    let contentLength = -1;
    let chunked = false;
    let sawTe = false;
    let expectContinue = false;
    let count = 0;
    const ranges = this.headerRanges;
    let line = lineEnd + 2;
    while (line < e) {
      const cr = findCR(buf, line, e);
      if (cr < 0 || cr >= e || buf[cr + 1] !== LF) return ERR_BAD_REQUEST;
      // Obsolete line folding (a line starting with SP/HTAB) is refused (RFC 9112 section 5.2).
      let q = line;
      while (q < cr && TCHAR[buf[q]!] === 1) q++;
      if (q === line || buf[q] !== COLON) return ERR_BAD_REQUEST;
      const nameLen = q - line;
      q++;
      while (q < cr && (buf[q] === SP || buf[q] === HTAB)) q++;
      let ve = cr;
      while (ve > q && (buf[ve - 1] === SP || buf[ve - 1] === HTAB)) ve--;
      for (let k = q; k < ve; k++) if (VALUECHAR[buf[k]!] === 0) return ERR_BAD_REQUEST;
      if (count >= this.limits.maxHeaders) return ERR_HEADERS_TOO_LARGE;
      const o = count * 4;
      ranges[o] = line;
      ranges[o + 1] = nameLen;
      ranges[o + 2] = q;
      ranges[o + 3] = ve - q;
      count++;
      const vl = ve - q;
      if (nameLen === 14 && equalsLower(buf, line, H_CONTENT_LENGTH)) {
        if (vl === 0 || vl > 15) return vl === 0 ? ERR_BAD_REQUEST : ERR_TOO_LARGE;
        let n = 0;
        for (let k = q; k < ve; k++) {
          const d = buf[k]! - 48;
          if (d < 0 || d > 9) return ERR_BAD_REQUEST;
          n = n * 10 + d;
        }
        if (contentLength >= 0 && contentLength !== n) return ERR_BAD_REQUEST;
        contentLength = n;
      } else if (nameLen === 17 && equalsLower(buf, line, H_TRANSFER_ENCODING)) {
        // Only a single `chunked` coding is supported; anything else cannot be framed safely.
        if (sawTe || vl !== 7 || !equalsLower(buf, q, V_CHUNKED)) return ERR_BAD_REQUEST;
        sawTe = true;
        chunked = true;
      } else if (nameLen === 6 && equalsLower(buf, line, H_EXPECT)) {
        if (vl === 12 && equalsLower(buf, q, V_100_CONTINUE)) expectContinue = true;
      } else if (nameLen === 10 && equalsLower(buf, line, H_CONNECTION)) {
        // A comma-separated list; look for the tokens `close` and `keep-alive`.
        let k = q;
        while (k < ve) {
          while (k < ve && (buf[k] === SP || buf[k] === HTAB || buf[k] === 44)) k++;
          let te = k;
          while (te < ve && buf[te] !== 44) te++;
          let tt = te;
          while (tt > k && (buf[tt - 1] === SP || buf[tt - 1] === HTAB)) tt--;
          if (tt - k === 5 && equalsLower(buf, k, V_CLOSE)) keepAlive = false;
          else if (tt - k === 10 && equalsLower(buf, k, V_KEEP_ALIVE) && this.versionMinor === 0) keepAlive = true;
          k = te;
        }
      }
      line = cr + 2;
    }
    if (chunked && contentLength >= 0) return ERR_BAD_REQUEST;
    if (contentLength > this.limits.maxBodyBytes) return ERR_TOO_LARGE;
    this.headerCount = count;
    this.keepAlive = keepAlive;
    this.chunked = chunked;
    this.expectContinue = expectContinue;
    this.contentLength = contentLength < 0 ? 0 : contentLength;
    return 0;
  }

  // Conveniences for tests and tools (they allocate; the server does not use them).

  methodString(buf: Buffer): string {
    return buf.toString('latin1', this.methodStart, this.methodStart + this.methodLength);
  }

  targetString(buf: Buffer): string {
    return buf.toString('latin1', this.targetStart, this.targetStart + this.targetLength);
  }

  /** Headers as [lower-case name, value] pairs. */
  headers(buf: Buffer): Array<[string, string]> {
    const out: Array<[string, string]> = [];
    for (let i = 0; i < this.headerCount; i++) {
      const r = this.headerRanges;
      out.push([
        buf.toString('latin1', r[i * 4]!, r[i * 4]! + r[i * 4 + 1]!).toLowerCase(),
        buf.toString('latin1', r[i * 4 + 2]!, r[i * 4 + 2]! + r[i * 4 + 3]!),
      ]);
    }
    return out;
  }

  body(buf: Buffer): Buffer {
    return buf.subarray(this.bodyStart, this.bodyStart + this.bodyLength);
  }
}
