// The published packages, as a user gets them: tools/scripts/pack-smoke.mjs packs every
// @miniss/* package from a clean copy, installs the tarballs into throwaway projects outside the
// monorepo (all packages; one backend installed before core; core alone) and runs a smoke script
// there. It skips only when npm can provide a third-party dependency (nan) neither from the
// registry nor from its cache (exit 77), and in the AddressSanitizer rerun.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const script = join(dirname(fileURLToPath(import.meta.url)), '..', 'pack-smoke.mjs');

function runScript(): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, out }));
  });
}

it('the packed @miniss/* tarballs install outside the monorepo and work there', async (ctx) => {
  if (process.env.MINISS_UNDER_ASAN) {
    ctx.skip('packaging is checked by the plain run; the ASan rerun instruments the checkout\'s addons, not the ones a tarball install compiles');
  }
  const r = await runScript();
  const verdict = r.out.trimEnd().split('\n').reverse().find((l) => l.startsWith('pack-smoke: ')) ?? '(no verdict line)';
  if (r.code === 77) ctx.skip(verdict.replace(/^pack-smoke: SKIP \(|\)$/g, ''));
  console.log(verdict);
  expect(r.code, `pack-smoke exited ${r.code ?? r.signal}:\n${r.out}`).toBe(0);
}, 300_000);
