// `npm run build:cpu`: builds the ORT engine's native decode step (worker/native-cpu/src/, see
// docs/cpu-engine.md) into worker/native-cpu/build/mamba_cpu.node with the machine's g++. Never
// run by `npm install` (a clean install needs no compiler): without it, or where it cannot be
// built, the engine decodes with ONNX Runtime as before.
//
//   npm run build:cpu            build when the sources changed since the last build
//   npm run build:cpu -- --force build again
//
// Linux on x86-64 only, for CPUs with AVX-512 (F, BW, VL, DQ) and VNNI. The addon is compiled
// for that instruction set, not for the build machine (-march=native): any x86-64 Linux machine
// with g++ builds it, and the engine checks the worker's CPU before it loads it. It links
// libgomp (OpenMP), which comes with g++ (Debian/Ubuntu: libgomp1).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NATIVE_CPU_ADDON, NATIVE_CPU_SOURCES, nativeCpuAddonCurrent, nativeCpuPlatformUnsupported, nativeCpuSourceHash } from './support.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export class NativeCpuBuildError extends Error {
  readonly code = 'native_cpu_build_failed';
  constructor(message: string) {
    super(message);
    this.name = 'NativeCpuBuildError';
  }
}
/** Build the addon (when the sources changed, or always with force); returns its path. */
export function buildNativeCpu(options: { force?: boolean; log?: (line: string) => void } = {}): string {
  // Only the platform: the addon is compiled for the instruction set, so a machine without it
  // (an image build host) can build what a worker with it runs; the engine checks the CPU.
  const unsupported = nativeCpuPlatformUnsupported();
  if (unsupported) throw new NativeCpuBuildError(unsupported);
  if (!options.force && nativeCpuAddonCurrent()) return NATIVE_CPU_ADDON;
  if (spawnSync('sh', ['-c', 'command -v g++'], { encoding: 'utf8' }).status !== 0) throw new NativeCpuBuildError('g++ was not found on PATH (apt-get install g++)');
  const includes = [join(root, 'node_modules', 'node-addon-api'), join(root, 'node_modules', 'node-api-headers', 'include')];
  for (const dir of includes) if (!existsSync(dir)) throw new NativeCpuBuildError(`${dir} is missing: run \`npm ci\` first`);
  mkdirSync(dirname(NATIVE_CPU_ADDON), { recursive: true });
  const tmp = `${NATIVE_CPU_ADDON}.tmp-${process.pid}`;
  const args = [
    '-O3',
    '-std=c++17',
    '-fPIC',
    '-shared',
    '-fopenmp',
    // The instruction set, not -march=native: see the header.
    '-mavx512f',
    '-mavx512bw',
    '-mavx512vl',
    '-mavx512dq',
    '-mavx512vnni',
    '-mfma',
    '-Wall',
    '-Wextra',
    '-Werror',
    // GCC 12's AVX-512 headers trip both themselves (their _mm512_undefined_* placeholders;
    // GCC bug 105593, fixed in GCC 13).
    '-Wno-uninitialized',
    '-Wno-maybe-uninitialized',
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
    throw new NativeCpuBuildError(`g++ failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  renameSync(tmp, NATIVE_CPU_ADDON);
  writeFileSync(`${NATIVE_CPU_ADDON}.source`, `${nativeCpuSourceHash()}\n`);
  return NATIVE_CPU_ADDON;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    const path = buildNativeCpu({ force: process.argv.includes('--force'), log: (line) => console.log(line) });
    console.log(`built ${path}`);
  } catch (err) {
    console.error(`build:cpu: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  }
}
