/**
 * `miniss doctor`: which backends work on this machine, why the others do not (package
 * missing, wrong OS, kernel refuses, permission), and what `auto` would pick. `--json` prints
 * the same as one JSON object.
 */
import { availableParallelism, release } from 'node:os';
import type { BackendName } from './backend.js';
import { BACKEND_FEATURE, FEATURE_PACKAGES, resolveConfig, type FeatureName } from './config.js';
import { AUTO_LADDER, probeBackend, tryLoadPackage, type BackendProbe } from './loader.js';

export interface DoctorReport {
  platform: string;
  kernel: string;
  node: string;
  cpus: number;
  backends: BackendProbe[];
  /** What `backend: 'auto'` picks with no backend features named (after MINISS_BACKEND, if set). */
  autoPick: BackendName | null;
  envOverride: string | null;
  /**
   * Why every runtime would refuse to start here whatever its config says (an invalid
   * MINISS_BACKEND), or null. autoPick is null while it is set.
   */
  configError: string | null;
  plugins: Array<{ feature: FeatureName; package: string; installed: boolean; reason?: string }>;
}

export function doctor(): DoctorReport {
  const backends = AUTO_LADDER.map((name) => {
    const { module: _m, ...probe } = probeBackend(name);
    if (name === 'node') probe.reason = 'built into @miniss/core (node:fs and node:net); works everywhere';
    return probe;
  });
  let envOverride: string | null = null;
  let configError: string | null = null;
  let autoPick: BackendName | null = backends.find((b) => b.ok)?.name ?? null;
  try {
    const cfg = resolveConfig({});
    if (cfg.backendSource === 'env MINISS_BACKEND') {
      envOverride = cfg.backend;
      if (cfg.backend !== 'auto') autoPick = backends.find((b) => b.name === cfg.backend && b.ok)?.name ?? null;
    }
  } catch (err) {
    // new Runtime() throws the same INVALID_CONFIG whatever the config: nothing would be picked.
    envOverride = process.env.MINISS_BACKEND ?? null;
    configError = (err as Error).message;
    autoPick = null;
  }
  const pluginFeatures: FeatureName[] = ['timer', 'signal', 'multicore'];
  const plugins = pluginFeatures.map((feature) => {
    const pkg = FEATURE_PACKAGES[feature];
    const r = tryLoadPackage(pkg);
    return 'module' in r ? { feature, package: pkg, installed: true } : { feature, package: pkg, installed: false, reason: r.message };
  });
  return {
    platform: `${process.platform}-${process.arch}`,
    kernel: release(),
    node: process.version,
    cpus: availableParallelism(),
    backends,
    autoPick,
    envOverride,
    configError,
    plugins,
  };
}

export function formatDoctor(r: DoctorReport): string {
  const out: string[] = [];
  out.push(`miniss doctor: ${r.platform}, kernel ${r.kernel}, Node ${r.node}, ${r.cpus} CPUs`);
  out.push('');
  out.push('backends (the order auto tries them):');
  for (const b of r.backends) {
    const pkg = b.name === 'node' ? '@miniss/core' : FEATURE_PACKAGES[BACKEND_FEATURE[b.name as Exclude<BackendName, 'node'>]];
    out.push(`  ${b.ok ? 'ok  ' : 'no  '} ${b.name.padEnd(8)} ${pkg}${b.reason ? `\n         ${b.ok ? '' : 'why: '}${b.reason}` : ''}`);
  }
  out.push('');
  if (r.configError !== null) {
    out.push(`configuration error (every runtime refuses to start until it is fixed): ${r.configError}`);
    out.push('auto would pick: nothing');
  } else {
    if (r.envOverride) out.push(`MINISS_BACKEND=${r.envOverride} overrides the config`);
    out.push(`auto would pick: ${r.autoPick ?? 'nothing (no backend works here)'}`);
  }
  out.push('');
  out.push('plugins:');
  for (const p of r.plugins) out.push(`  ${p.installed ? 'ok  ' : 'no  '} ${p.feature.padEnd(9)} ${p.package}${p.reason ? `\n         why: ${p.reason}` : ''}`);
  return out.join('\n');
}
