/**
 * Property-based fuzzing of every backend that loads here (node, epoll, io_uring), at the IoBackend
 * boundary. Each backend is fuzzed in its own child process (dist/fuzz-backend.js): a crash (signal,
 * abort, ASan report) fails the test, and closed fd numbers the fuzz reuses can only hit the child's
 * own files. Seeded: the seed is printed; MINISS_FUZZ_SEED=<n> reproduces a run, MINISS_FUZZ_RUNS=<n>
 * runs longer (default 400 sequences of up to 40 operations per backend).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { probeBackend, type BackendName } from '@miniss/core';

const here = dirname(fileURLToPath(import.meta.url));
const driver = join(here, '..', 'dist', 'fuzz-backend.js');
const seed = process.env.MINISS_FUZZ_SEED ? Number(process.env.MINISS_FUZZ_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
const runs = process.env.MINISS_FUZZ_RUNS ? Number(process.env.MINISS_FUZZ_RUNS) : 400;
const long = runs > 400;

const names: BackendName[] = ['node', 'epoll', 'io_uring', 'kqueue'];
for (const name of names) {
  const p = probeBackend(name);
  describe(`fuzz the native boundary: ${name}`, () => {
    if (!p.ok) {
      it.skip(`skipped: ${p.reason ?? 'unavailable'}`, () => {});
      return;
    }
    it(
      `random operation sequences settle with a result or a coded error, no crash, no fd or memory growth (seed ${seed}, ${runs} runs)`,
      () => {
        console.log(`fuzz ${name}: seed ${seed} (MINISS_FUZZ_SEED=${seed} reproduces), runs ${runs}`);
        const dir = mkdtempSync(join(tmpdir(), `miniss-fuzz-${name}-`));
        try {
          const r = spawnSync(process.execPath, ['--expose-gc', driver, name, String(seed), String(runs), dir], {
            encoding: 'utf8',
            timeout: long ? 3_600_000 : 25_000,
          });
          const line = r.stdout.trim().split('\n').at(-1) ?? '';
          expect(r.signal, `child died by ${r.signal}: ${r.stderr}`).toBeNull();
          expect(r.status, `child exit ${r.status}: ${r.stdout}\n${r.stderr}`).toBe(0);
          const res = JSON.parse(line) as {
            ok: boolean;
            runs: number;
            failure?: string;
            stats: { submitted: number; ok: number; errors: Record<string, number> };
          };
          expect(res.failure).toBeUndefined();
          expect(res.ok).toBe(true);
          expect(res.runs).toBe(runs);
          // The fuzz really reached the backend: operations succeeded and failed with codes.
          expect(res.stats.submitted).toBeGreaterThan(runs);
          expect(res.stats.ok).toBeGreaterThan(0);
          expect(Object.keys(res.stats.errors)).toContain('EBADF');
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      },
      long ? 3_600_000 : 30_000,
    );
  });
}
