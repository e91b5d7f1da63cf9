import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const main = fileURLToPath(new URL('../dist/main.js', import.meta.url));

it("runs the seeds' 8 tasks over 4 cores and counts 8", async () => {
  const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
    const p = execFile(process.execPath, [main], { timeout: 20_000 }, (err, stdout) => resolve({ stdout, code: err ? ((err as { code?: number }).code ?? 1) : 0 }));
    void p;
  });
  expect(code).toBe(0);
  expect(stdout).toContain('counter = 8 (expected 8) over 4 cores');
  const cores = new Set([...stdout.matchAll(/ran on core (\d)/g)].map((m) => Number(m[1])));
  expect(cores).toEqual(new Set([0, 1, 2, 3]));
});
