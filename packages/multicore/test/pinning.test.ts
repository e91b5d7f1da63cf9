import { readFileSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
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
  it('pins core i to CPU i (visible in /proc/self/task/*/status), unpinned beyond the CPUs', async () => {
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
    for (let c = 0; c < cpus; c++) expect(s.perCore[c]!.pinnedCpu).toBe(c);
    expect(s.perCore[cpus]!.pinnedCpu).toBeNull();
    const lists = cpusAllowed();
    for (let c = 0; c < cpus; c++) expect(lists).toContain(String(c));
    expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1]).toBe('0');
    await mc.shutdown();
    expect(mc.stats().perCore.every((c) => c.state === 'exited')).toBe(true);
    // Core 0 is the calling thread: shutdown restored its affinity.
    expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))?.[1]).toBe(before);
    expect(mc.stats().core0Affinity.before).toBe(before);
    expect(['restored', 'unchanged']).toContain(mc.stats().core0Affinity.restore);
  });
});
