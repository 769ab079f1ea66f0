// Where the native decode addon is, whether this machine can run it, and whether the built
// addon matches its sources: what the engine checks before it loads the addon
// (worker/engine/ort/native-decode.ts) and what `npm run build:cpu` (build.ts) checks before
// it builds.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const NATIVE_CPU_SOURCES = join(here, 'src');
export const NATIVE_CPU_ADDON = join(here, 'build', 'mamba_cpu.node');

/** The CPU features the addon's kernels are compiled for (names as /proc/cpuinfo spells them). */
export const NATIVE_CPU_FLAGS = ['avx512f', 'avx512bw', 'avx512vl', 'avx512dq', 'avx512_vnni'] as const;

/** Why the addon cannot be built here (it is compiled for Linux on x86-64), or undefined. */
export function nativeCpuPlatformUnsupported(): string | undefined {
  return process.platform !== 'linux' || process.arch !== 'x64' ? `the native decode step is built for Linux on x86-64 (this is ${process.platform}/${process.arch})` : undefined;
}

/** Why this machine cannot run the addon (the platform, or a CPU without its instructions), or undefined when it can. */
export function nativeCpuUnsupported(): string | undefined {
  const platform = nativeCpuPlatformUnsupported();
  if (platform) return platform;
  let cpuinfo = '';
  try {
    cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '/proc/cpuinfo is not readable';
  }
  const flags = new Set(/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.trim().split(/\s+/) ?? []);
  const missing = NATIVE_CPU_FLAGS.filter((f) => !flags.has(f));
  return missing.length > 0 ? `this CPU lacks ${missing.join(', ')} (the native decode step needs AVX-512 with VNNI)` : undefined;
}

/** A hash of the addon's sources, recorded beside a build. */
export function nativeCpuSourceHash(): string {
  const h = createHash('sha256');
  for (const f of readdirSync(NATIVE_CPU_SOURCES).sort()) h.update(f).update(readFileSync(join(NATIVE_CPU_SOURCES, f)));
  return h.digest('hex').slice(0, 16);
}

/** Whether the built addon matches the sources. */
export function nativeCpuAddonCurrent(): boolean {
  const stamp = `${NATIVE_CPU_ADDON}.source`;
  return existsSync(NATIVE_CPU_ADDON) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === nativeCpuSourceHash();
}

