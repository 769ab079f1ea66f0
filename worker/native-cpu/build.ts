// `npm run build:cpu`: builds the ORT engine's native kernels (worker/native-cpu/src/, see
// docs/cpu-engine.md) into worker/native-cpu/build/mamba_cpu.node with the machine's g++. Never
// run by `npm install` (a clean install needs no compiler): without it, or where it cannot be
// built, the engine runs on ONNX Runtime as before.
//
//   npm run build:cpu            build when the sources changed since the last build
//   npm run build:cpu -- --force build again
//
// Linux on x86-64 only. Two builds of the same sources (support.ts): one for CPUs with AVX-512
// (F, BW, VL, DQ) and VNNI, one for AVX2 and FMA. Each is compiled for its instruction set, not
// for the build machine (-march=native): any x86-64 Linux machine with g++ builds both, and the
// engine loads the one the worker's CPU runs. They link libgomp (OpenMP), which comes with g++
// (Debian/Ubuntu: libgomp1).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NATIVE_CPU_BUILDS, NATIVE_CPU_LINK_FLAGS, NATIVE_CPU_SOURCES, nativeCpuAddonCurrent, nativeCpuPlatformUnsupported, nativeCpuSourceHash } from './support.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export class NativeCpuBuildError extends Error {
  readonly code = 'native_cpu_build_failed';
  constructor(message: string) {
    super(message);
    this.name = 'NativeCpuBuildError';
  }
}
/**
 * Warnings as errors, but for two that GCC 12's AVX-512 headers trip themselves (their
 * _mm512_undefined_* placeholders; GCC bug 105593, fixed in GCC 13). Also bench/native-kernels'.
 */
export const NATIVE_CPU_WARNING_FLAGS = ['-Wall', '-Wextra', '-Werror', '-Wno-uninitialized', '-Wno-maybe-uninitialized'] as const;

/** Why g++ cannot be used here, or undefined. */
export function gppMissing(): string | undefined {
  return spawnSync('sh', ['-c', 'command -v g++'], { encoding: 'utf8' }).status !== 0 ? 'g++ was not found on PATH (apt-get install g++)' : undefined;
}

/** Build every variant of the addon (each when its sources changed, or always with force); returns their paths. */
export function buildNativeCpu(options: { force?: boolean; log?: (line: string) => void } = {}): string[] {
  // Only the platform: a build is compiled for its instruction set, so a machine without it
  // (an image build host) can build what a worker with it runs; the engine checks the CPU.
  const unsupported = nativeCpuPlatformUnsupported();
  if (unsupported) throw new NativeCpuBuildError(unsupported);
  const stale = NATIVE_CPU_BUILDS.filter((b) => options.force || !nativeCpuAddonCurrent(b.addon));
  if (stale.length === 0) return NATIVE_CPU_BUILDS.map((b) => b.addon);
  const noCompiler = gppMissing();
  if (noCompiler) throw new NativeCpuBuildError(noCompiler);
  const includes = [join(root, 'node_modules', 'node-addon-api'), join(root, 'node_modules', 'node-api-headers', 'include')];
  for (const dir of includes) if (!existsSync(dir)) throw new NativeCpuBuildError(`${dir} is missing: run \`npm ci\` first`);
  const hash = nativeCpuSourceHash();
  for (const build of stale) {
    mkdirSync(dirname(build.addon), { recursive: true });
    const tmp = `${build.addon}.tmp-${process.pid}`;
    const args = [
      '-O3',
      '-std=c++17',
      '-fPIC',
      '-shared',
      '-fopenmp',
      ...NATIVE_CPU_LINK_FLAGS,
      ...build.compilerFlags,
      ...NATIVE_CPU_WARNING_FLAGS,
      '-DNAPI_VERSION=8',
      '-DNAPI_CPP_EXCEPTIONS',
      '-DNODE_ADDON_API_DISABLE_DEPRECATED',
      ...includes.map((d) => `-I${d}`),
      '-o',
      tmp,
      join(NATIVE_CPU_SOURCES, 'addon.cpp'),
    ];
    options.log?.(`g++ ${args.join(' ')}`);
    try {
      execFileSync('g++', args, { stdio: ['ignore', 'inherit', 'inherit'] });
    } catch (err) {
      throw new NativeCpuBuildError(`g++ failed (${build.isa}): ${err instanceof Error ? err.message : String(err)}`);
    }
    renameSync(tmp, build.addon);
    writeFileSync(`${build.addon}.source`, `${hash}\n`);
  }
  return NATIVE_CPU_BUILDS.map((b) => b.addon);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    const paths = buildNativeCpu({ force: process.argv.includes('--force'), log: (line) => console.log(line) });
    console.log(`built ${paths.join(', ')}`);
  } catch (err) {
    console.error(`build:cpu: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  }
}
