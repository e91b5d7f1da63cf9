import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { MultiCoreRuntime } from '@miniss/multicore';

// Pinning needs a native backend (setAffinity); the node backend cannot pin. Core 0 is the
// calling thread: shutdown gives it back the affinity it had before.
function cpusAllowed(): string[] {
  const out: string[] = [];
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const m = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'));
      if (m) out.push(m[1]!);
    } catch {
      /* the thread exited while we listed */
    }
  }
  return out;
}

describe.runIf(process.platform === 'linux' && availableParallelism() >= 2)('pinning', () => {
  // The CPUs this thread may run on (its affinity mask), ascending.
  const allowed = (() => {
    const list = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1] ?? '';
    const cpus: number[] = [];
    for (const part of list.split(',')) {
      const [a, b] = part.split('-').map(Number);
      for (let c = a!; c <= (b ?? a!); c++) cpus.push(c);
    }
    return cpus;
  })();
  const hasTaskset = (() => {
    try {
      execFileSync('taskset', ['-V'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();

  it('pins core i to the i-th allowed CPU (CPU i when all are; visible in /proc/self/task/*/status), unpinned beyond the CPUs', async () => {
    const cpus = availableParallelism();
    const before = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1];
    const mc = new MultiCoreRuntime({ cores: cpus + 1 });
    await mc.broadcast(() => 0); // every worker has started and pinned itself
    const s = mc.stats();
    if (typeof (mc.runtime.backend as { setAffinity?: unknown }).setAffinity !== 'function') {
      expect(s.perCore.every((c) => c.pinnedCpu === null)).toBe(true);
      await mc.shutdown();
      return;
    }
    for (let c = 0; c < cpus; c++) expect(s.perCore[c]!.pinnedCpu).toBe(allowed[c]);
    expect(s.perCore[cpus]!.pinnedCpu).toBeNull();
    const lists = cpusAllowed();
    for (let c = 0; c < cpus; c++) expect(lists).toContain(String(allowed[c]));
    expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1]).toBe(String(allowed[0]));
    await mc.shutdown();
    expect(mc.stats().perCore.every((c) => c.state === 'exited')).toBe(true);
    // Core 0 is the calling thread: shutdown restored its affinity.
    expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1]).toBe(before);
    expect(mc.stats().core0Affinity.before).toBe(before);
    expect(['restored', 'unchanged']).toContain(mc.stats().core0Affinity.restore);
  });

  it.runIf(hasTaskset && allowed.length >= 2)('pins core i to the i-th CPU the process may use (under taskset -c LAST): never outside them; cores beyond them unpinned', () => {
    const cpu = allowed.at(-1)!; // not CPU 0: core 0 must not land on CPU 0
    const child = fileURLToPath(new URL('./fixtures/pin-allowed-child.mjs', import.meta.url));
    const out = spawnSync('taskset', ['-c', String(cpu), process.execPath, child], { encoding: 'utf8', timeout: 15_000 });
    expect(out.status, out.stderr).toBe(0);
    const r = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { canPin: boolean; before: string; during: string; core1: string; pinned: Array<number | null>; after: string };
    expect(r.before).toBe(String(cpu));
    expect(r.during).toBe(String(cpu));
    expect(r.core1).toBe(String(cpu));
    expect(r.pinned).toEqual(r.canPin ? [cpu, null] : [null, null]);
    expect(r.after).toBe(String(cpu));
  });
});
