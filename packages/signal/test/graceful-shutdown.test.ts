import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { Runtime, tryCurrentRuntime } from '@miniss/core';
import { gracefulShutdown, waitForSignal } from '@miniss/signal';

const fixture = fileURLToPath(new URL('./fixtures/drain.mjs', import.meta.url));

interface Run {
  child: ChildProcess;
  lines: string[];
  waitFor(line: string): Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function run(args: string[]): Run {
  const child = spawnChild(process.execPath, [fixture, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<{ line: string; resolve: () => void }> = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      for (const w of waiters.filter((w) => w.line === line)) w.resolve();
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      if (stderr) lines.push(`stderr: ${stderr}`);
      resolve({ code, signal });
    }),
  );
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  void exit.then(() => clearTimeout(timer));
  return {
    child,
    lines,
    exit,
    waitFor: (line) => (lines.includes(line) ? Promise.resolve() : new Promise((resolve) => waiters.push({ line, resolve }))),
  };
}

afterEach(async () => {
  const rt = tryCurrentRuntime();
  if (rt) {
    await rt.shutdown();
    throw new Error('a test left its runtime running');
  }
});

describe('gracefulShutdown with real signals (child process)', () => {
  it('SIGTERM during work exits 0 after the in-flight work finished, with nothing left open', async () => {
    const r = run(['400', '5000']);
    await r.waitFor('work started');
    r.child.kill('SIGTERM');
    const { code, signal } = await r.exit;
    expect(r.lines).toContain('work done');
    expect(r.lines).toContain('progress draining SIGTERM tasks=1');
    expect(r.lines[r.lines.length - 1]).toBe('progress closed SIGTERM tasks=0');
    expect(signal).toBeNull();
    expect(code).toBe(0);
  });

  it('SIGINT works the same way', async () => {
    const r = run(['100', '5000']);
    await r.waitFor('work started');
    r.child.kill('SIGINT');
    const { code } = await r.exit;
    expect(r.lines).toContain('work done');
    expect(code).toBe(0);
  });

  it('a task longer than graceMs is cancelled and the process still exits 0', async () => {
    const r = run(['60000', '200']);
    await r.waitFor('work started');
    const t0 = Date.now();
    r.child.kill('SIGTERM');
    const { code } = await r.exit;
    expect(r.lines).toContain('work CANCELLED');
    expect(r.lines).not.toContain('work done');
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('a second signal during the drain exits at once with 128 + signo', async () => {
    const r = run(['60000', '60000']);
    await r.waitFor('work started');
    r.child.kill('SIGTERM');
    await r.waitFor('progress draining SIGTERM tasks=1');
    r.child.kill('SIGTERM');
    const { code } = await r.exit;
    expect(code).toBe(128 + 15);
    expect(r.lines).not.toContain('work done');
  });
});

describe('waitForSignal', () => {
  it('resolves with the name of the signal received', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    const got = await rt.blockOn(async () => {
      const p = waitForSignal(['SIGUSR2']);
      process.kill(process.pid, 'SIGUSR2');
      return p;
    });
    expect(got).toBe('SIGUSR2');
    expect(process.listenerCount('SIGUSR2')).toBe(0);
  });

  it('aborting removes the listener and rejects with the reason', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    await rt.blockOn(async () => {
      const before = process.listenerCount('SIGUSR2');
      const ac = new AbortController();
      const p = waitForSignal(['SIGUSR2'], { signal: ac.signal });
      expect(process.listenerCount('SIGUSR2')).toBe(before + 1);
      ac.abort(new Error('stop'));
      await expect(p).rejects.toThrow('stop');
      expect(process.listenerCount('SIGUSR2')).toBe(before);
    });
  });

  it('rejects unknown signal names with INVALID_ARGUMENT', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    await rt.blockOn(async () => {
      await expect(waitForSignal(['SIGNOPE'])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(waitForSignal(['SIGKILL'])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(waitForSignal([])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    });
  });

  it('fails with FEATURE_UNAVAILABLE without the feature and NO_RUNTIME outside a runtime', async () => {
    await expect(waitForSignal()).rejects.toMatchObject({ code: 'NO_RUNTIME' });
    const rt = new Runtime({ backend: 'node' });
    await rt.blockOn(async () => {
      await expect(waitForSignal()).rejects.toMatchObject({ code: 'FEATURE_UNAVAILABLE', message: expect.stringContaining("features: ['signal']") });
    });
  });

  it('closing the runtime removes listeners left behind', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    const before = process.listenerCount('SIGTERM');
    gracefulShutdown(rt, { signals: ['SIGTERM'] });
    expect(process.listenerCount('SIGTERM')).toBe(before + 1);
    await rt.shutdown();
    expect(process.listenerCount('SIGTERM')).toBe(before);
  });

  it('gracefulShutdown validates its options', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    expect(() => gracefulShutdown(rt, { graceMs: -1 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => gracefulShutdown(rt, { signals: ['SIGFOO'] })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    await rt.shutdown();
  });
});
