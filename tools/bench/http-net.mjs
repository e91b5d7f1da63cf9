#!/usr/bin/env node
// The "minimal Node net responder" competitor of http.bench.ts: answers every complete request
// head (counted by its CRLFCRLF) in a chunk with the same 200 "Hello, World!" response as
// miniss-http-echo's GET /, one write per chunk. No parsing beyond that: it is the floor of what
// Node's net stack costs per request, not a usable HTTP server. A CRLFCRLF split across two
// chunks is not counted (wrk writes each request whole; floors/http-floor.c does count it).
//   node tools/bench/http-net.mjs [port]   (prints "listening on http://127.0.0.1:PORT")
import { createServer } from 'node:net';

const RESPONSE = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!', 'latin1');
const END = Buffer.from('\r\n\r\n', 'latin1');

const server = createServer((sock) => {
  sock.setNoDelay(true);
  sock.on('data', (chunk) => {
    let n = 0;
    let at = 0;
    for (;;) {
      const i = chunk.indexOf(END, at);
      if (i < 0) break;
      n++;
      at = i + 4;
    }
    if (n === 1) sock.write(RESPONSE);
    else if (n > 1) sock.write(Buffer.concat(Array(n).fill(RESPONSE)));
  });
  sock.on('error', () => sock.destroy());
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
