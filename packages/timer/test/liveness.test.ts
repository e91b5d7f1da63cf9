import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { sleep } from '@miniss/timer';
import { activeResources, backends, noRuntimeLeft, timerRuntime, turn } from './helpers.js';

afterEach(noRuntimeLeft);

const root = fileURLToPath(new URL('../../..', import.meta.url));

/** Runs an ES module snippet in a fresh node process from the repo root; returns output and wall time. */
function runChild(code: string, env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    cwd: root,
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

describe.each(backends)('process liveness on the $name backend', ({ name, ok, reason }) => {
  describe.runIf(ok)(`(skipped: ${reason || 'available'})`, () => {
    it('a pending sleep keeps the process alive (no blockOn, no other handle) until it fires', () => {
      const r = runChild(`
        import { Runtime } from '@miniss/core';
        import { sleep } from '@miniss/timer';
        const rt = new Runtime({ backend: '${name}', features: ['timer'] });
        const t0 = performance.now();
        rt.spawn(async () => {
          await sleep(400);
          console.log('slept ' + (performance.now() - t0 >= 400));
        });
      `);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain('slept true');
      expect(r.ms).toBeGreaterThanOrEqual(400);
    });

    it('a runtime with a pending sleep in blockOn stays alive, then exits once it shut down', () => {
      const r = runChild(`
        import { Runtime } from '@miniss/core';
        import { sleep } from '@miniss/timer';
        const rt = new Runtime({ backend: '${name}', features: ['timer'] });
        const t0 = performance.now();
        await rt.blockOn(async () => { await sleep(300); });
        console.log('done ' + (performance.now() - t0 >= 300) + ' ' + JSON.stringify(rt.stats().plugins.timer));
      `);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/done true \{"active":0,"fired":1,"cancelled":0,"wakeups":\d+,"arms":\d+,"armed":0\}/);
    });

    it('a cancelled sleep does not keep the process alive', () => {
      const r = runChild(`
        import { Runtime } from '@miniss/core';
        import { sleep, setTimer, clearTimer } from '@miniss/timer';
        const rt = new Runtime({ backend: '${name}', features: ['timer'] });
        rt.spawn(async () => {
          const ac = new AbortController();
          const p = sleep(60_000, { signal: ac.signal }).catch((e) => console.log('aborted ' + e.code + ' ' + e.cause?.name));
          clearTimer(setTimer(60_000, () => console.log('never')));
          await new Promise((r) => setTimeout(r, 20));
          ac.abort();
          await p;
        });
      `);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain('aborted CANCELLED AbortError');
      expect(r.stdout).not.toContain('never');
      expect(r.ms).toBeLessThan(15_000);
    });
  });
});

describe('handles in this process', () => {
  it('an armed wake-up is a live handle while a sleep is pending; nothing remains after shutdown', async () => {
    const before = activeResources();
    const rt = timerRuntime('node');
    await rt.blockOn(async () => {
      await turn();
      const p = sleep(50);
      await turn();
      // The portable backend arms its timeout with a Node timer: one, for the whole wheel.
      const during = activeResources();
      expect(during.length).toBeGreaterThan(before.length);
      await p;
    });
    // Nothing of ours is left: no resource kind has more live handles than before. (Not strict
    // equality: a timer of the test harness alive at the start may have ended meanwhile.)
    const count = (xs: string[]) => xs.reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map<string, number>());
    const was = count(before);
    for (const [kind, n] of count(activeResources())) expect(n, kind).toBeLessThanOrEqual(was.get(kind) ?? 0);
  });
});
