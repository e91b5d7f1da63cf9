import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const child = fileURLToPath(new URL('./fixtures/graceful-child.mjs', import.meta.url));

it('SIGTERM during work: every core drains its running task and the process exits 0 by itself', async () => {
  const p = spawn(process.execPath, [child], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d));
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`child hung; stdout=${out} stderr=${err}`));
    }, 15_000);
    p.stdout.on('data', (d: Buffer) => {
      out += d;
      if (out.includes('"ready"') && !out.includes('SENT')) {
        out += 'SENT\n';
        p.kill('SIGTERM');
      }
    });
    p.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  expect(err).not.toMatch(/Error/);
  expect(code).toBe(0);
  const last = JSON.parse(out.trim().split('\n').at(-1)!);
  expect(last.results).toEqual([0, 1]);
  expect(last.counts).toEqual([1, 1]);
  expect(last.states).toEqual(['exited', 'exited']);
  expect(last.last.phase).toBe('closed');
  expect(last.last.cores.map((c: { tasksLeft: number }) => c.tasksLeft)).toEqual([0, 0]);
});
