#!/usr/bin/env node
// The Node `http` competitor of http.bench.ts: the same GET / answer as miniss-http-echo.
//   node tools/bench/http-node.mjs [port]   (prints "listening on http://127.0.0.1:PORT")
import { createServer } from 'node:http';

const BODY = Buffer.from('Hello, World!');
const server = createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 13 });
  res.end(BODY);
});
server.keepAliveTimeout = 30_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
