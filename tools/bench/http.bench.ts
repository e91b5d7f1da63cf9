/**
 * HTTP: miniss-http-echo against Node `http`, a minimal Node `net` responder and Node `cluster`,
 * all answering `GET /` with the same 13-byte body, measured with wrk in the same run.
 *
 * Method: loopback; each server pinned to CPU 0 with `taskset -c 0` (the cluster's primary and
 * workers are NOT pinned: that is the point of cluster, and so neither is `miniss --cores 2 --no-pin`
 * which is compared with it), wrk pinned to CPU 1
 * (`wrk -t1 -c50 -d5s --latency`), after a 1 s warm-up run. Server CPU per request comes from the
 * server's own CPU time: utime + stime from /proc/<pid>/stat (summed over the cluster's primary
 * and workers) before and after the measured run, divided by the requests wrk completed.
 * Goal (issue 8): <= 7 us of server CPU per request on one core, requests/s >= Node `net`'s.
 * When a C compiler is present the same run also measures a plain C io_uring responder
 * (floors/http-floor.c, built into a temporary directory): the floor the CPU figures read against.
 *
 *   node tools/bench/dist/http.bench.js            (HTTP_BENCH_SECONDS=5 by default)
 *
 * wrk is installed with `apt-get install -y wrk` when missing (Debian package). Every server
 * started here is killed by pid when its measurement ends, also on errors.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMain, printSuite, type BenchRow, type BenchSuite } from './lib.js';

const ECHO_MAIN = fileURLToPath(new URL('../../../apps/http-echo/dist/main.js', import.meta.url));
const NET_SERVER = fileURLToPath(new URL('../http-net.mjs', import.meta.url));
const HTTP_SERVER = fileURLToPath(new URL('../http-node.mjs', import.meta.url));
const CLUSTER_SERVER = fileURLToPath(new URL('../http-cluster.mjs', import.meta.url));
const FLOOR_SOURCE = fileURLToPath(new URL('../floors/http-floor.c', import.meta.url));

/**
 * The plain C io_uring responder (floors/http-floor.c), compiled into a temporary directory: the
 * floor a JavaScript server's CPU per request is read against. null (and why, on stderr) when
 * there is no C compiler or it does not build: the benchmark goes on without that row.
 */
function buildFloor(): string | null {
  if (process.platform !== 'linux') return null;
  const cc = ['cc', 'gcc', 'clang'].find(which);
  if (cc === undefined) {
    console.error('no C compiler (cc, gcc or clang): the plain C io_uring floor is not measured');
    return null;
  }
  const out = join(mkdtempSync(join(tmpdir(), 'miniss-http-floor-')), 'http-floor');
  try {
    execFileSync(cc, ['-O2', '-o', out, FLOOR_SOURCE], { stdio: ['ignore', 'ignore', 'pipe'], env: toolEnv() });
    return out;
  } catch (err) {
    console.error(`${cc} could not build ${FLOOR_SOURCE}: ${(err as Error).message}; the plain C io_uring floor is not measured`);
    return null;
  }
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export interface HttpResult {
  name: string;
  backend?: string;
  requestsPerSec: number;
  requests: number;
  p99Us: number;
  cpuUsPerRequest: number;
  pinned: boolean;
}

function which(cmd: string): boolean {
  try {
    execFileSync('which', [cmd], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function ensureWrk(): void {
  if (which('wrk')) return;
  console.error('wrk is missing: apt-get install -y wrk');
  execFileSync('apt-get', ['install', '-y', 'wrk'], { stdio: 'inherit', timeout: 120_000 });
  if (!which('wrk')) throw new Error('wrk is still missing after apt-get install -y wrk');
}

/** CPU time of a process (all its threads) in microseconds. */
function cpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  return ((Number(rest[11]) + Number(rest[12])) * 1e6) / CLK_TCK;
}

interface Started {
  child: ChildProcess;
  port: number;
  pids: number[];
  output: () => string;
}

/** Every server started and not yet stopped: killed by pid if this process exits early. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) stop(c);
});

async function startServer(cmd: string, args: string[], waitWorkers = false): Promise<Started> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 15_000;
  try {
    for (;;) {
      const m = /listening on http:\/\/[^:]+:(\d+)/.exec(out);
      const w = /workers ([\d,]+)/.exec(out);
      if (m && (!waitWorkers || w)) {
        const pids = [child.pid!];
        if (w) pids.push(...w[1]!.split(',').map(Number));
        return { child, port: Number(m[1]), pids, output: () => out };
      }
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${cmd} ${args.join(' ')} did not start:\n${out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } catch (err) {
    stop(child);
    throw err;
  }
}

function stop(child: ChildProcess): void {
  running.delete(child);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

/** wrk's environment: never the AddressSanitizer runtime a sanitizer job may preload into node. */
function toolEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  delete env.ASAN_OPTIONS;
  return env;
}

function wrk(port: number, seconds: number): Promise<string> {
  const args = ['-c', '1', 'wrk', '-t1', '-c50', `-d${seconds}s`, '--latency', `http://127.0.0.1:${port}/`];
  return new Promise((resolve, reject) =>
    execFile('taskset', args, { timeout: (seconds + 20) * 1000, encoding: 'utf8', env: toolEnv() }, (err, out) => (err ? reject(err) : resolve(out))),
  );
}

function toUs(v: string, unit: string): number {
  const x = Number(v);
  return unit === 'us' ? x : unit === 'ms' ? x * 1e3 : unit === 's' ? x * 1e6 : NaN;
}

/** Runs one server under wrk: warm-up, then the measured run with CPU sampled around it. */
async function measure(name: string, cmd: string, args: string[], opts: { seconds: number; cluster?: boolean; pinned: boolean }): Promise<HttpResult> {
  const s = await startServer(cmd, args, opts.cluster === true);
  try {
    await wrk(s.port, 1);
    const before = s.pids.reduce((a, p) => a + cpuUs(p), 0);
    const out = await wrk(s.port, opts.seconds);
    const after = s.pids.reduce((a, p) => a + cpuUs(p), 0);
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
    const p99 = /99%\s+([\d.]+)(us|ms|s)/.exec(out);
    const errors = /Socket errors: (.*)/.exec(out)?.[1];
    const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1];
    if (errors || non2xx) console.error(`${name}: wrk reported ${errors ? `socket errors ${errors}` : ''} ${non2xx ? `${non2xx} non-2xx` : ''}`);
    const backend = /backend (\S+),/.exec(s.output())?.[1];
    return {
      name,
      ...(backend ? { backend } : {}),
      requestsPerSec: rps,
      requests,
      p99Us: p99 ? toUs(p99[1]!, p99[2]!) : NaN,
      cpuUsPerRequest: (after - before) / requests,
      pinned: opts.pinned,
    };
  } finally {
    stop(s.child);
    if (opts.cluster) for (const pid of s.pids.slice(1)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone with its primary.
      }
    }
  }
}

export async function run(opts: { seconds?: number } = {}): Promise<BenchSuite> {
  const seconds = opts.seconds ?? Number(process.env.HTTP_BENCH_SECONDS ?? 5);
  const command = 'node tools/bench/dist/http.bench.js';
  if (availableParallelism() < 2 || !which('taskset')) {
    return { subsystem: 'http', command, rows: [] };
  }
  ensureWrk();
  const node = process.execPath;
  const pin = (script: string, ...args: string[]): [string, string[]] => ['taskset', ['-c', '0', node, script, ...args]];

  const results: HttpResult[] = [];
  let best: HttpResult;
  try {
    best = await measure('miniss', ...pin(ECHO_MAIN, '--port', '0', '--backend', 'auto'), { seconds, pinned: true });
  } catch (err) {
    // A backend that loads but cannot serve must not hide the epoll figures.
    console.error(`miniss with --backend auto: ${(err as Error).message}; measuring epoll only`);
    best = await measure('miniss', ...pin(ECHO_MAIN, '--port', '0', '--backend', 'epoll'), { seconds, pinned: true });
  }
  results.push(best);
  let epoll = best;
  if (best.backend !== 'epoll') {
    try {
      epoll = await measure('miniss', ...pin(ECHO_MAIN, '--port', '0', '--backend', 'epoll'), { seconds, pinned: true });
      results.push(epoll);
    } catch (err) {
      console.error(`miniss on epoll: ${(err as Error).message}`);
    }
  }
  const net = await measure('Node net', ...pin(NET_SERVER), { seconds, pinned: true });
  const http = await measure('Node http', ...pin(HTTP_SERVER), { seconds, pinned: true });
  const cluster = await measure('Node cluster (2 workers)', node, [CLUSTER_SERVER, '0', '2'], { seconds, cluster: true, pinned: false });
  results.push(net, http, cluster);
  // The plain C io_uring server on the same CPU, same wrk: what no runtime can get under.
  let floor: HttpResult | null = null;
  const floorBin = buildFloor();
  if (floorBin !== null) {
    try {
      floor = await measure('plain C io_uring server', 'taskset', ['-c', '0', floorBin, '0'], { seconds, pinned: true });
      results.push(floor);
    } catch (err) {
      console.error(`plain C io_uring server: ${(err as Error).message}`);
    } finally {
      rmSync(dirname(floorBin), { recursive: true, force: true });
    }
  }
  // Several cores against cluster, both unpinned (the cluster cannot pin its workers): miniss --cores 2
  // --no-pin, the same backend as the best one-core run.
  let multi: HttpResult | null = null;
  try {
    multi = await measure('miniss --cores 2', node, [ECHO_MAIN, '--port', '0', '--cores', '2', '--no-pin', '--backend', best.backend ?? 'auto'], { seconds, pinned: false });
    results.push(multi);
  } catch (err) {
    console.error(`miniss --cores 2: ${(err as Error).message}`);
  }

  for (const r of results) {
    console.log(
      `${r.name}${r.backend ? ` (${r.backend})` : ''}: ${r.requestsPerSec.toFixed(0)} req/s, p99 ${r.p99Us.toFixed(0)} us, ` +
        `${r.cpuUsPerRequest.toFixed(2)} us server CPU/request${r.pinned ? '' : ' (not pinned)'}`,
    );
  }

  const rows: BenchRow[] = [];
  const wrkNote = `wrk -t1 -c50 -d${seconds}s on CPU 1, server on CPU 0`;
  const variants = best === epoll ? [best] : [best, epoll];
  for (const m of variants) {
    const tag = `miniss ${m.backend ?? '?'}`;
    rows.push(
      { name: `HTTP GET / server CPU per request (${tag}, 1 core)`, unit: 'us/req', lowerIsBetter: true, miniss: m.cpuUsPerRequest, baselineName: 'Node net', baseline: net.cpuUsPerRequest, goal: '<= 7', note: wrkNote },
      { name: `HTTP GET / server CPU per request (${tag}, 1 core)`, unit: 'us/req', lowerIsBetter: true, miniss: m.cpuUsPerRequest, baselineName: 'Node http', baseline: http.cpuUsPerRequest, goal: '<= 7', note: wrkNote },
      { name: `HTTP GET / requests/s (${tag}, 1 core)`, unit: 'req/s', lowerIsBetter: false, miniss: m.requestsPerSec, baselineName: 'Node net', baseline: net.requestsPerSec, goal: '>= Node net', note: wrkNote },
      { name: `HTTP GET / requests/s (${tag}, 1 core)`, unit: 'req/s', lowerIsBetter: false, miniss: m.requestsPerSec, baselineName: 'Node http', baseline: http.requestsPerSec, note: wrkNote },
      { name: `HTTP GET / p99 latency (${tag}, 1 core)`, unit: 'us', lowerIsBetter: true, miniss: m.p99Us, baselineName: 'Node net', baseline: net.p99Us, note: wrkNote },
      { name: `HTTP GET / p99 latency (${tag}, 1 core)`, unit: 'us', lowerIsBetter: true, miniss: m.p99Us, baselineName: 'Node http', baseline: http.p99Us, note: wrkNote },
    );
  }
  if (floor !== null) {
    const floorNote = `${wrkNote}; tools/bench/floors/http-floor.c (cc -O2): one ring, plain recv/send, no parser; it is ${(net.cpuUsPerRequest / floor.cpuUsPerRequest).toFixed(2)}x Node net and ${(http.cpuUsPerRequest / floor.cpuUsPerRequest).toFixed(2)}x Node http in this run`;
    rows.push({ name: `HTTP GET / server CPU per request (miniss ${best.backend ?? '?'}, 1 core)`, unit: 'us/req', lowerIsBetter: true, miniss: best.cpuUsPerRequest, baselineName: 'plain C io_uring server', baseline: floor.cpuUsPerRequest, note: floorNote });
  }
  rows.push(
    { name: `HTTP GET / requests/s (miniss ${best.backend ?? '?'} 1 core vs cluster)`, unit: 'req/s', lowerIsBetter: false, miniss: best.requestsPerSec, baselineName: 'Node cluster, 2 workers, unpinned', baseline: cluster.requestsPerSec, note: `${wrkNote}; cluster workers share both CPUs with wrk` },
    { name: `HTTP GET / server CPU per request (miniss ${best.backend ?? '?'} vs cluster)`, unit: 'us/req', lowerIsBetter: true, miniss: best.cpuUsPerRequest, baselineName: 'Node cluster, 2 workers (summed)', baseline: cluster.cpuUsPerRequest, note: wrkNote },
  );
  if (multi !== null) {
    const multiNote = `wrk -t1 -c50 -d${seconds}s on CPU 1; both servers NOT pinned (2 miniss cores / 2 cluster workers on 2 CPUs, sharing them with wrk)`;
    rows.push(
      { name: `HTTP GET / requests/s (miniss ${multi.backend ?? '?'} --cores 2 vs cluster, unpinned)`, unit: 'req/s', lowerIsBetter: false, miniss: multi.requestsPerSec, baselineName: 'Node cluster, 2 workers', baseline: cluster.requestsPerSec, note: multiNote },
      { name: `HTTP GET / server CPU per request (miniss ${multi.backend ?? '?'} --cores 2 vs cluster, unpinned)`, unit: 'us/req', lowerIsBetter: true, miniss: multi.cpuUsPerRequest, baselineName: 'Node cluster, 2 workers (summed)', baseline: cluster.cpuUsPerRequest, note: multiNote },
      { name: `HTTP GET / p99 latency (miniss ${multi.backend ?? '?'} --cores 2 vs cluster, unpinned)`, unit: 'us', lowerIsBetter: true, miniss: multi.p99Us, baselineName: 'Node cluster, 2 workers', baseline: cluster.p99Us, note: multiNote },
    );
  }
  return { subsystem: 'http', command, rows };
}

if (isMain(import.meta.url)) {
  printSuite(await run());
}
