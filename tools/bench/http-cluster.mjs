#!/usr/bin/env node
// The Node `cluster` competitor of http.bench.ts: a primary with N `http` workers (default 2)
// sharing one port. The primary prints "listening on http://127.0.0.1:PORT" and the worker pids
// ("workers PID,PID") once every worker listens, so the bench can sum their CPU time.
//   node tools/bench/http-cluster.mjs [port] [workers]
import cluster from 'node:cluster';
import { createServer } from 'node:http';

const port = Number(process.argv[2] ?? 0);
const workers = Number(process.argv[3] ?? 2);

if (cluster.isPrimary) {
  // Port 0 would give each worker its own port; pick one first by listening once.
  const pick = createServer();
  pick.listen(port, '127.0.0.1', () => {
    const chosen = pick.address().port;
    pick.close(() => {
      const pids = [];
      let ready = 0;
      for (let i = 0; i < workers; i++) {
        const w = cluster.fork({ BENCH_PORT: String(chosen) });
        pids.push(w.process.pid);
        w.on('listening', () => {
          if (++ready === workers) {
            console.log(`listening on http://127.0.0.1:${chosen}`);
            console.log(`workers ${pids.join(',')}`);
          }
        });
      }
    });
  });
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
    process.exit(0);
  });
} else {
  const BODY = Buffer.from('Hello, World!');
  createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 13 });
    res.end(BODY);
  }).listen(Number(process.env.BENCH_PORT), '127.0.0.1');
}
