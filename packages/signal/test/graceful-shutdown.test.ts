import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CancelledError, Runtime, createRuntime, tryCurrentRuntime, type MultiCoreRuntimeLike, type RuntimeConfig } from '@miniss/core';
import { SignalPlugin, gracefulShutdown, waitForSignal } from '@miniss/signal';

const drainFixture = fileURLToPath(new URL('./fixtures/drain.mjs', import.meta.url));
const readmeFixture = fileURLToPath(new URL('./fixtures/readme-pattern.mjs', import.meta.url));

/**
 * A 2-core MultiCoreRuntime through core's createRuntime (core loads @miniss/multicore itself, so
 * this package needs no dependency on it), unpinned so the test process keeps its CPU affinity.
 */
type MultiCore = MultiCoreRuntimeLike & {
  runtime: Runtime;
  spawnOn<T>(core: number, fn: (...args: never[]) => T | PromiseLike<T>): PromiseLike<Awaited<T>> & { cancel(): boolean };
};
function multiCore(features: RuntimeConfig['features'] = []): MultiCore {
  const config = { backend: 'node', features: [...(features ?? []), 'multicore'], cores: 2, pin: false } as RuntimeConfig;
  return createRuntime(config) as unknown as MultiCore;
}

/** `p`'s outcome ('resolved <v>' or its rejection's code), or 'pending' if it has not settled within `ms`. */
function outcome(p: PromiseLike<unknown>, ms: number): Promise<string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    Promise.resolve(p).then(
      (v) => `resolved ${String(v)}`,
      (e: { code?: string }) => `rejected ${String(e?.code)}`,
    ),
    new Promise<string>((resolve) => (timer = setTimeout(() => resolve('pending'), ms))),
  ]).finally(() => clearTimeout(timer));
}

const listeners = (): number[] => ['SIGINT', 'SIGTERM', 'SIGUSR2'].map((s) => process.listenerCount(s));

interface Run {
  child: ChildProcess;
  lines: string[];
  waitFor(line: string): Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function run(args: string[], fixture = drainFixture): Run {
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

describe("the README's pattern: gracefulShutdown(rt, ...); await rt.blockOn(serve)", () => {
  it.each(['single', 'multi'])('%s: a serve cut off at graceMs by SIGTERM is caught as the requested stop and the process exits 0', async (kind) => {
    const r = run([kind, 'serve'], readmeFixture);
    await r.waitFor('ready');
    r.child.kill('SIGTERM');
    const { code, signal } = await r.exit;
    expect(r.lines).toContain('stopped by SIGTERM');
    expect({ code, signal }).toEqual({ code: 0, signal: null });
  });

  it('a serve that fails by itself is not swallowed: the process exits 1 with its error', async () => {
    const r = run(['single', 'fail'], readmeFixture);
    const { code } = await r.exit;
    expect(code).toBe(1);
    expect(r.lines.join('\n')).toContain('serve failed');
    expect(r.lines).not.toContain('stopped by null');
  });
});

describe('gracefulShutdown owns its listeners', () => {
  it('a MultiCoreRuntime removes them when it shuts down, with or without the signal feature', async () => {
    for (const features of [['signal'], []] as Array<RuntimeConfig['features']>) {
      const before = listeners();
      const mc = multiCore(features);
      gracefulShutdown(mc);
      expect(listeners()).toEqual([before[0]! + 1, before[1]! + 1, before[2]]);
      await mc.blockOn(() => 1);
      expect(listeners()).toEqual(before);
    }
  });

  it('refuses a runtime that is shutting down or has shut down with RUNTIME_SHUTDOWN, installing nothing', async () => {
    const before = listeners();
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    const closing = rt.shutdown();
    expect(() => gracefulShutdown(rt)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    await closing;
    expect(() => gracefulShutdown(rt)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    const mc = multiCore();
    await mc.shutdown();
    expect(() => gracefulShutdown(mc)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    expect(listeners()).toEqual(before);
  });

  it('a signal-started multicore shutdown keeps them until every core is down: a second signal still forces the exit', async () => {
    // Core 0 has nothing to do and closes its plugins at once; core 1 drains for 400 ms.
    const guard = (): void => {}; // SIGUSR2 must never reach its default action (ending this process)
    process.on('SIGUSR2', guard);
    try {
      const mc = multiCore(['signal']);
      const forced = vi.fn();
      const g = gracefulShutdown(mc, { signals: ['SIGUSR2'], graceMs: 5000, onForcedExit: forced });
      const work = mc.spawnOn(1, () => new Promise<string>((r) => setTimeout(() => r('drained'), 400)));
      await new Promise((r) => setTimeout(r, 50));
      process.kill(process.pid, 'SIGUSR2');
      await new Promise((r) => setTimeout(r, 150));
      expect(mc.runtime.stats().shuttingDown).toBe(true);
      process.kill(process.pid, 'SIGUSR2');
      await g.done;
      expect(forced).toHaveBeenCalledWith('SIGUSR2', 128 + 12);
      expect(await work).toBe('drained');
      expect(g.signal).toBe('SIGUSR2');
      expect(process.listenerCount('SIGUSR2')).toBe(1);
    } finally {
      process.off('SIGUSR2', guard);
    }
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
      const reason = Object.assign(new Error('stop'), { code: 'E_STOP' });
      ac.abort(reason);
      await expect(p).rejects.toBe(reason);
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

  it('rejects with RUNTIME_SHUTDOWN when its runtime shuts down first, leaving no listener', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    const before = listeners();
    let pending!: Promise<string>;
    await rt.blockOn(() => {
      pending = waitForSignal(['SIGUSR2']);
      return 1;
    });
    expect(await outcome(pending, 1000)).toBe('rejected RUNTIME_SHUTDOWN');
    expect(listeners()).toEqual(before);
  });

  it('rejects a bad opts or opts.signal with INVALID_ARGUMENT and installs nothing; null means no options', async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    const before = listeners();
    let late!: Promise<string>;
    const root = await rt.blockOn(async () => {
      await expect(waitForSignal(undefined, { signal: {} as AbortSignal })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(waitForSignal(['SIGUSR2'], 'SIGUSR2' as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect(listeners()).toEqual(before);
      expect(rt.stats().plugins.signal).toMatchObject({ listeners: 0 });
      // Never a synchronous TypeError: null is "no options", as @miniss/timer's sleep takes it.
      expect(() => (late = waitForSignal(['SIGUSR2'], null as never))).not.toThrow();
      void late.catch(() => undefined);
      return 'root ok';
    });
    // The runtime's shutdown (which closes the plugin) did not fail, and removed the late waiter.
    expect(root).toBe('root ok');
    expect(await outcome(late, 1000)).toBe('rejected RUNTIME_SHUTDOWN');
    expect(listeners()).toEqual(before);
  });

  it("treats an abort reason as core's I/O does: an Error with a string code as is, anything else (a default abort()'s DOMException, code 20) wrapped in a CancelledError", async () => {
    const rt = new Runtime({ backend: 'node', features: ['signal'] });
    await rt.blockOn(async () => {
      const typed = Object.assign(new Error('typed'), { code: 'E_TYPED' });
      for (const reason of ['stop', undefined, typed]) {
        const early = new AbortController();
        early.abort(reason);
        const fromCore = await rt.io({ op: 'nop' }, early.signal).catch((e: unknown) => e);
        const fromSignal = await waitForSignal(['SIGUSR2'], { signal: early.signal }).catch((e: unknown) => e);
        const late = new AbortController();
        const p = waitForSignal(['SIGUSR2'], { signal: late.signal });
        late.abort(reason);
        const fromWait = await p.catch((e: unknown) => e);
        if (reason === typed) {
          for (const e of [fromCore, fromSignal, fromWait]) expect(e).toBe(typed);
        } else if (reason === undefined) {
          for (const e of [fromCore, fromSignal, fromWait]) {
            expect(e).toBeInstanceOf(CancelledError);
            expect(e).toMatchObject({ code: 'CANCELLED', message: 'the operation was aborted: This operation was aborted', cause: { name: 'AbortError', code: 20 } });
          }
          expect((fromCore as Error).cause).toBe(early.signal.reason);
          expect((fromWait as Error).cause).toBe(late.signal.reason);
        } else {
          for (const e of [fromCore, fromSignal, fromWait]) {
            expect(e).toBeInstanceOf(CancelledError);
            expect(e).toMatchObject({ code: 'CANCELLED', cause: 'stop' });
          }
        }
      }
      expect(process.listenerCount('SIGUSR2')).toBe(0);
    });
  });

  it('on another core rejects with FEATURE_UNAVAILABLE at once, and gracefulShutdown throws it: Node delivers signals to the main thread only', async () => {
    const mc = multiCore(['signal']);
    // Built with `new Function` so the test runner leaves its import() alone (shipped by source).
    const waitOnCore = new Function(
      "return async () => { try { await (await import('@miniss/signal')).waitForSignal(['SIGUSR2']); return 'resolved'; } catch (e) { return e.code + ': ' + e.message; } }",
    )() as () => Promise<string>;
    const shutdownOnCore = new Function(
      "return async () => { const { currentRuntime } = await import('@miniss/core'); const { gracefulShutdown } = await import('@miniss/signal'); try { gracefulShutdown(currentRuntime()); return 'accepted'; } catch (e) { return e.code + ': ' + e.message; } }",
    )() as () => Promise<string>;
    const got = await mc.blockOn(async () => {
      const h = mc.spawnOn(1, waitOnCore);
      const r = await outcome(h, 2000);
      h.cancel();
      return [r, await mc.spawnOn(1, shutdownOnCore)];
    });
    expect(got[0]).toMatch(/^resolved FEATURE_UNAVAILABLE: .*main thread/);
    expect(got[1]).toMatch(/^FEATURE_UNAVAILABLE: .*main thread/);
  });

  it('SignalPlugin.close settles every owner even if one throws, then refuses new ones', () => {
    const plugin = new SignalPlugin();
    const later = vi.fn();
    plugin._own(() => {
      throw new Error('boom');
    });
    plugin._own(later);
    expect(() => plugin.close()).toThrow('boom');
    expect(later).toHaveBeenCalledWith(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
    expect(plugin.stats().listeners).toBe(0);
    expect(() => plugin._own(() => undefined)).toThrow(expect.objectContaining({ code: 'RUNTIME_SHUTDOWN' }));
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
    // Beyond 2^31 - 1 ms Node's timers fire after 1 ms (and core's shutdown refuses the grace).
    const before = listeners();
    expect(() => gracefulShutdown(rt, { graceMs: 2 ** 31 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => gracefulShutdown(rt, { progressIntervalMs: 2 ** 31 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    // Would otherwise throw inside the signal listener, uncaught, on the second signal.
    expect(() => gracefulShutdown(rt, { onForcedExit: 'exit' as never })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => gracefulShutdown(rt, null as never)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(listeners()).toEqual(before);
    await rt.shutdown();
  });
});
