/** Spawns apps/http-echo (built) as a child on port 0 and talks to it over loopback. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const echoMain = join(here, '..', '..', '..', 'apps', 'http-echo', 'dist', 'main.js');
export const echoBuilt = existsSync(echoMain);

export interface EchoServer {
  proc: ChildProcess;
  port: number;
  backend: string;
  output: () => string;
  /** Sends SIGTERM once (a second SIGTERM would mean "stop now" to the server). */
  term: () => void;
  /** SIGTERM (unless already sent) and wait (bounded) for the exit; resolves to the exit code or signal. */
  stop: (timeoutMs?: number) => Promise<number | string>;
}

export async function startEcho(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<EchoServer> {
  const proc = spawn(process.execPath, [echoMain, '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.once('exit', (code, sig) => resolve(code ?? sig ?? -1)));
  const started = await new Promise<{ port: number; backend: string }>((resolve, reject) => {
    const t = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`echo server did not start in 10 s: ${out}`));
    }, 10_000);
    const check = (): void => {
      const m = /listening on http:\/\/[^:]+:(\d+) \(backend (\w+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve({ port: Number(m[1]), backend: m[2]! });
      }
    };
    proc.stdout!.on('data', check);
    void exited.then((c) => {
      clearTimeout(t);
      reject(new Error(`echo server exited (${c}) before listening: ${out}`));
    });
  });
  let termSent = false;
  const term = (): void => {
    if (termSent || proc.exitCode !== null || proc.signalCode !== null) return;
    termSent = true;
    proc.kill('SIGTERM');
  };
  return {
    proc,
    ...started,
    output: () => out,
    term,
    stop: async (timeoutMs = 10_000) => {
      term();
      const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

export interface Exchange {
  data: Buffer;
  /** The server closed the connection (or reset it). */
  closed: boolean;
  /** Neither closed nor answered within the bound. */
  stuck: boolean;
}

/**
 * Sends `bytes` on a fresh connection; with `fin` the write side is shut afterwards. Waits until the
 * server closes, or (without `fin`) until a complete response head arrived, or the bound passes.
 */
export function exchange(port: number, bytes: Buffer, fin: boolean, boundMs: number): Promise<Exchange> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(port, '127.0.0.1');
    let done = false;
    const finish = (closed: boolean, stuck: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ data: Buffer.concat(chunks), closed, stuck });
    };
    const timer = setTimeout(() => finish(false, true), boundMs);
    sock.on('connect', () => {
      sock.write(bytes);
      if (fin) sock.end();
    });
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      if (!fin) {
        const all = Buffer.concat(chunks).toString('latin1');
        // A final (non-100) response head arrived: answered.
        if (/HTTP\/1\.1 (?!100 )\d{3} [^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n/.test(all)) finish(false, false);
      }
    });
    sock.on('error', () => finish(true, false));
    sock.on('close', () => finish(true, false));
  });
}
