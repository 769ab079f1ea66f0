// Where the native kernels' addon is, which of its builds this machine's CPU can run, and whether
// a build matches its sources: what the engine checks before it loads the addon
// (worker/engine/ort/native-kernels.ts) and what `npm run build:cpu` (build.ts) builds.
//
// Two builds of the same sources (src/mamba_cpu.h picks its instructions when compiled):
// avx512 (AVX-512 F/BW/VL/DQ and VNNI) and avx2 (AVX2 and FMA, for x86-64 CPUs without
// AVX-512). A CPU runs the first one it has the instructions for.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const NATIVE_CPU_SOURCES = join(here, 'src');

export type NativeCpuIsa = 'avx512' | 'avx2';

export interface NativeCpuBuild {
  readonly isa: NativeCpuIsa;
  readonly addon: string;
  /** The CPU features its kernels are compiled for (as /proc/cpuinfo spells them). */
  readonly cpuFlags: readonly string[];
  /** The compiler flags for them (not -march=native: a build runs on any CPU that has these). */
  readonly compilerFlags: readonly string[];
}

export const NATIVE_CPU_BUILDS: readonly NativeCpuBuild[] = [
  {
    isa: 'avx512',
    addon: join(here, 'build', 'mamba_cpu.node'),
    cpuFlags: ['avx512f', 'avx512bw', 'avx512vl', 'avx512dq', 'avx512_vnni'],
    compilerFlags: ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx512vnni', '-mfma'],
  },
  {
    isa: 'avx2',
    addon: join(here, 'build', 'mamba_cpu_avx2.node'),
    cpuFlags: ['avx2', 'fma'],
    compilerFlags: ['-mavx2', '-mfma', '-DMAMBA_CPU_AVX2'],
  },
];

/** Why the addon cannot be built here (it is compiled for Linux on x86-64), or undefined. */
export function nativeCpuPlatformUnsupported(): string | undefined {
  return process.platform !== 'linux' || process.arch !== 'x64' ? `the native kernels are built for Linux on x86-64 (this is ${process.platform}/${process.arch})` : undefined;
}

function cpuFlags(): Set<string> | undefined {
  try {
    return new Set(/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/) ?? []);
  } catch {
    return undefined;
  }
}

/** The builds this CPU can run, best first, or why none (one read of /proc/cpuinfo). */
function runnable(): { builds: NativeCpuBuild[] } | { reason: string } {
  const platform = nativeCpuPlatformUnsupported();
  if (platform) return { reason: platform };
  const flags = cpuFlags();
  if (!flags) return { reason: '/proc/cpuinfo is not readable' };
  const builds = NATIVE_CPU_BUILDS.filter((b) => b.cpuFlags.every((f) => flags.has(f)));
  return builds.length > 0 ? { builds } : { reason: 'this CPU has neither AVX-512 with VNNI nor AVX2 with FMA' };
}

/** The builds this CPU can run, best first. */
export function nativeCpuBuildsRunnable(): NativeCpuBuild[] {
  const found = runnable();
  return 'builds' in found ? found.builds : [];
}

/** The build this CPU runs, or why none. */
export function nativeCpuBuildFor(): { build: NativeCpuBuild } | { reason: string } {
  const found = runnable();
  return 'builds' in found ? { build: found.builds[0]! } : found;
}

/** Why this machine cannot run the addon, or undefined when it can. */
export function nativeCpuUnsupported(): string | undefined {
  const found = nativeCpuBuildFor();
  return 'reason' in found ? found.reason : undefined;
}

/**
 * Flags every build links with. `-z nodelete` keeps the addon, and so libgomp, mapped for the
 * life of the process: Node unloads an addon when the worker thread that loaded it exits, and
 * libgomp, which only the addon loads, went with it while its pool threads still ran. An engine
 * on two or more threads then killed its process with SIGSEGV when it closed.
 */
export const NATIVE_CPU_LINK_FLAGS: readonly string[] = ['-Wl,-z,nodelete'];

/** A hash of the addon's sources and build flags, recorded beside a build. */
export function nativeCpuSourceHash(): string {
  const h = createHash('sha256');
  for (const f of readdirSync(NATIVE_CPU_SOURCES).sort()) h.update(f).update(readFileSync(join(NATIVE_CPU_SOURCES, f)));
  // The flags too: a build made with other flags is as stale as one made from other sources.
  h.update(JSON.stringify([NATIVE_CPU_LINK_FLAGS, NATIVE_CPU_BUILDS.map((b) => b.compilerFlags)]));
  return h.digest('hex').slice(0, 16);
}

/** Whether the build at `addon` exists and matches the sources. */
export function nativeCpuAddonCurrent(addon: string): boolean {
  const stamp = `${addon}.source`;
  return existsSync(addon) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === nativeCpuSourceHash();
}

/**
 * The build this CPU runs, when it is built and matches the sources; else why not. What the
 * engine loads (native-kernels.ts) and the sampler's row passes (worker/generate/native-exp.ts).
 */
export function nativeCpuAddonReady(): { build: NativeCpuBuild } | { reason: string } {
  const cpu = nativeCpuBuildFor();
  if ('reason' in cpu) return cpu;
  const { addon } = cpu.build;
  if (!existsSync(addon)) return { reason: `the native kernels are not built (npm run build:cpu builds ${addon})` };
  if (!nativeCpuAddonCurrent(addon)) return { reason: 'the native kernels were built from older sources (npm run build:cpu builds it again)' };
  return cpu;
}
