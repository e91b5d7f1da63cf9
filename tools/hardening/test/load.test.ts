/**
 * Load against apps/http-echo (epoll backend) from a separate client process
 * (dist/load-client.js), on loopback:
 *  - 10,000 concurrent keep-alive connections, 4 requests each (GET / and POST /echo, bodies checked),
 *    within 30 s, zero errors; the server really held them all at once (its fd count, read when every
 *    answer came while the client still holds every connection, is above base + 10,000) and gives
 *    every fd back afterwards. On one core, and on two (`--cores 2`: every core
 *    serves its own share of the connections).
 *  - a soak: 200 keep-alive connections busy for 10 s (60 s with MINISS_SOAK=1) while the server's RSS
 *    and fd count are sampled every 250 ms: the fd count stays flat, RSS does not grow after warm-up.
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { echoBuilt, echoMain, startEcho } from './echo-server.js';

const here = dirname(fileURLToPath(import.meta.url));
const client = join(here, '..', 'dist', 'load-client.js');
const soakSeconds = process.env.MINISS_SOAK ? 60 : 10;

const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const rssKiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);

interface ClientResult {
  opened: number;
  responses: number;
  errors: number;
  reasons: string[];
  elapsedMs: number;
}

/**
 * Runs the load client; `sample` is called every 250 ms while it runs. With `onHold`, the client
 * holds every connection open after its last answer (MINISS_LOAD_HOLD=1) until `onHold` returned.
 */
function runClient(
  args: string[],
  timeoutMs: number,
  sample: () => void,
  onHold?: () => void,
): Promise<{ code: number | string; result?: ClientResult; out: string }> {
  return new Promise((resolve) => {
    const env = onHold ? { ...process.env, MINISS_LOAD_HOLD: '1' } : process.env;
    const p = spawn(process.execPath, [client, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let out = '';
    let held = false;
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (onHold && !held && /^holding \d+$/m.test(out)) {
        held = true;
        onHold();
        p.stdin.end('go\n');
      }
    });
    if (!onHold) p.stdin.end();
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setInterval(sample, 250);
    const kill = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code, sig) => {
      clearInterval(timer);
      clearTimeout(kill);
      const last = out.trim().split('\n').at(-1) ?? '';
      let result: ClientResult | undefined;
      try {
        result = JSON.parse(last) as ClientResult;
      } catch {
        result = undefined;
      }
      resolve({ code: code ?? sig ?? -1, result, out });
    });
  });
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

describe('load against apps/http-echo', () => {
  if (!echoBuilt) {
    it.skip(`skipped: apps/http-echo is not built (${echoMain} missing)`, () => {});
    return;
  }

  it.each([
    { cores: 1, args: ['--backend', 'epoll'] },
    { cores: 2, args: ['--backend', 'epoll', '--cores', '2'] },
  ])('10,000 concurrent keep-alive connections, 4 requests each, zero errors, every fd given back ($cores core(s))', async ({ cores, args }) => {
    const server = await startEcho(args);
    try {
      const pid = server.proc.pid!;
      const base = fdCount(pid);
      let peak = base;
      let held = -1;
      const r = await runClient(
        [String(server.port), '10000', '30', '4'],
        40_000,
        () => {
          peak = Math.max(peak, fdCount(pid));
        },
        () => {
          // Every answer came and the client still holds all its connections: the server must too.
          held = fdCount(pid);
          peak = Math.max(peak, held);
        },
      );
      console.log(`load: ${r.out.trim().split('\n').at(-1)}; server fds ${base} -> ${held} while all were held (peak ${peak})`);
      expect(r.result, r.out).toBeDefined();
      expect(r.result!.reasons).toEqual([]);
      expect(r.result!.errors).toBe(0);
      expect(r.result!.opened).toBe(10_000);
      expect(r.result!.responses).toBe(40_000);
      expect(r.code).toBe(0);
      expect(held).toBeGreaterThanOrEqual(base + 10_000);
      expect(await waitFor(() => fdCount(pid) <= base, 5000), `server fds ${fdCount(pid)} > ${base} after the load`).toBe(true);
    } finally {
      expect(await server.stop()).toBe(0);
    }
    expect(server.output()).toMatch(/drained after 10000 connections, 40000 requests/);
    if (cores > 1) {
      // Each core served its own share (SO_REUSEPORT spreads 10,000 connections about evenly).
      const per = [...server.output().matchAll(/core \d+: (\d+)\/(\d+)/g)].map((m) => Number(m[1]));
      expect(per).toHaveLength(cores);
      for (const n of per) expect(n).toBeGreaterThan(10_000 / cores / 2);
    }
  }, 60_000);

  it(`soak: ${soakSeconds} s of 200 busy keep-alive connections, flat RSS and fd count`, async () => {
    const server = await startEcho(['--backend', 'epoll']);
    try {
      const pid = server.proc.pid!;
      const base = fdCount(pid);
      const samples: { t: number; rss: number; fds: number }[] = [];
      const t0 = Date.now();
      const r = await runClient([String(server.port), '200', String(soakSeconds)], (soakSeconds + 20) * 1000, () => {
        samples.push({ t: Date.now() - t0, rss: rssKiB(pid), fds: fdCount(pid) });
      });
      expect(r.result, r.out).toBeDefined();
      expect(r.result!.reasons).toEqual([]);
      expect(r.result!.errors).toBe(0);
      expect(r.result!.opened).toBe(200);
      expect(r.code).toBe(0);
      // Steady state: from 30% of the run until the client starts closing (the last 2 samples).
      const steady = samples.slice(Math.floor(samples.length * 0.3), -2);
      expect(steady.length).toBeGreaterThan(10);
      const fds = steady.map((s) => s.fds);
      const third = Math.max(1, Math.floor(steady.length / 3));
      const avg = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
      const rssEarly = avg(steady.slice(0, third).map((s) => s.rss));
      const rssLate = avg(steady.slice(-third).map((s) => s.rss));
      console.log(
        `soak: ${r.result!.responses} responses in ${soakSeconds} s; server fds ${Math.min(...fds)}..${Math.max(...fds)} (base ${base}); ` +
          `RSS early ${(rssEarly / 1024).toFixed(1)} MiB, late ${(rssLate / 1024).toFixed(1)} MiB`,
      );
      expect(r.result!.responses).toBeGreaterThan(1000);
      expect(Math.max(...fds) - Math.min(...fds)).toBeLessThanOrEqual(2);
      expect(Math.min(...fds)).toBeGreaterThanOrEqual(base + 200);
      // Flat: the late third is within 16 MiB + 10% of the early third. The 16 MiB allow for V8 growing
      // its young generation once under sustained allocation (semi-spaces up to 16 MiB): measured here,
      // a one-time step of +13 MiB 6-7 s into the run (69 -> 82 MiB), absent when the server is started
      // with --min-semi-space-size=16 (flat at 84 MiB); a leak keeps growing past that. Not under the
      // AddressSanitizer job (MINISS_UNDER_ASAN=1): ASan's quarantine of freed memory grows RSS by design.
      if (!process.env.MINISS_UNDER_ASAN) expect(rssLate).toBeLessThanOrEqual(rssEarly * 1.1 + 16 * 1024);
      expect(await waitFor(() => fdCount(pid) <= base, 5000)).toBe(true);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, (soakSeconds + 40) * 1000);
});
