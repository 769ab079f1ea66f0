// `npm run build:cuda`: builds the cuda engine's addon (worker/native/build/Release/mamba_native.node)
// and the scan benchmark, after checking for what the build needs so that a missing nvcc or
// cuBLAS is one clear sentence rather than a CMake trace. Never run by `npm install`: a clean
// install without CUDA must work (the ort engine needs no build).
//
//   npm run build:cuda                       addon + scan_bench, for sm_80/86/89/90
//   npm run build:cuda -- --check            compile everything that needs no cuBLAS, link no addon
//   npm run build:cuda -- --archs 90         only sm_90 (faster)
//   npm run build:cuda -- --cublas-root DIR  cuBLAS outside the toolkit (DIR/include, DIR/lib)
//   npm run build:cuda -- --jobs 8
//
// The compiler's register/spill report (ptxas --resource-usage) is kept in
// worker/native/build/build.log.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const buildDir = join(here, 'build');

class BuildError extends Error {}

interface Args {
  check: boolean;
  archs: string;
  cublasRoot: string | undefined;
  jobs: number;
  debug: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { check: false, archs: '80;86;89;90', cublasRoot: undefined, jobs: Number(process.env.MAMBA_BUILD_JOBS ?? 2), debug: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new BuildError(`${a} needs a value`);
      return v;
    };
    if (a === '--check') args.check = true;
    else if (a === '--debug') args.debug = true;
    else if (a === '--archs') args.archs = value().split(/[,;]/).join(';');
    else if (a === '--cublas-root') args.cublasRoot = resolve(value());
    else if (a === '--jobs') args.jobs = Number(value());
    else throw new BuildError(`unknown option ${a} (see the header of worker/native/build.ts)`);
  }
  if (!Number.isInteger(args.jobs) || args.jobs < 1) throw new BuildError('--jobs must be a positive integer');
  return args;
}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function findNvcc(): string {
  const candidates = [process.env.CUDACXX, which('nvcc'), '/usr/local/cuda/bin/nvcc'].filter((p): p is string => !!p);
  const nvcc = candidates.find((p) => existsSync(p));
  if (!nvcc) {
    throw new BuildError(
      'nvcc (the CUDA compiler) was not found on PATH, in $CUDACXX or at /usr/local/cuda/bin/nvcc. The cuda engine ' +
        'must be built on a machine with the CUDA toolkit (12.x or 13.x) and cuBLAS; everywhere else use the ort engine, ' +
        'which needs no build. See docs/cuda-engine.md.',
    );
  }
  return nvcc;
}

/** Where cuBLAS is: the toolkit's own, a given root, or the nvidia-cublas wheel beside PyTorch. */
function findCublas(nvcc: string, given: string | undefined): { root: string | undefined; where: string } | undefined {
  const hasLib = (dir: string) => existsSync(dir) && readdirSync(dir).some((f) => f.startsWith('libcublas.so'));
  if (given) {
    if (existsSync(join(given, 'include', 'cublas_v2.h')) && hasLib(join(given, 'lib'))) return { root: given, where: given };
    throw new BuildError(`--cublas-root ${given}: expected include/cublas_v2.h and lib/libcublas.so* there`);
  }
  const toolkit = resolve(dirname(realpathSync(nvcc)), '..'); // /usr/local/bin/nvcc is often a link
  const incs = [join(toolkit, 'include'), join(toolkit, 'targets', 'x86_64-linux', 'include')];
  const libs = [join(toolkit, 'lib64'), join(toolkit, 'lib'), join(toolkit, 'targets', 'x86_64-linux', 'lib')];
  if (incs.some((d) => existsSync(join(d, 'cublas_v2.h'))) && libs.some(hasLib)) return { root: undefined, where: toolkit };
  const py = spawnSync('python3', ['-c', 'import nvidia.cublas, os; print(list(nvidia.cublas.__path__)[0])'], { encoding: 'utf8' });
  const wheel = py.status === 0 ? py.stdout.trim() : '';
  if (wheel && existsSync(join(wheel, 'include', 'cublas_v2.h')) && hasLib(join(wheel, 'lib'))) return { root: wheel, where: `${wheel} (pip nvidia-cublas)` };
  return undefined;
}

async function run(cmd: string, argv: string[], log: NodeJS.WritableStream): Promise<void> {
  log.write(`$ ${cmd} ${argv.join(' ')}\n`);
  await new Promise<void>((ok, fail) => {
    const child = spawn(cmd, argv, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const both = (chunk: Buffer, to: NodeJS.WriteStream) => {
      to.write(chunk);
      log.write(chunk);
    };
    child.stdout.on('data', (c: Buffer) => both(c, process.stdout));
    child.stderr.on('data', (c: Buffer) => both(c, process.stderr));
    child.on('error', fail);
    child.on('close', (code) => (code === 0 ? ok() : fail(new BuildError(`${cmd} exited with status ${code} (full log: worker/native/build/build.log)`))));
  });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const nvcc = findNvcc();
  if (!which('cmake')) throw new BuildError('cmake was not found on PATH; install CMake >= 3.24 (apt-get install cmake)');
  const cublas = findCublas(nvcc, args.cublasRoot);
  if (!cublas && !args.check) {
    throw new BuildError(
      `cuBLAS was not found (no cublas_v2.h and libcublas.so next to ${nvcc}, no nvidia-cublas Python wheel). The addon's ` +
        'projections need it: install the CUDA toolkit with cuBLAS, or pass --cublas-root DIR. `npm run build:cuda -- --check` ' +
        'compiles everything else without it.',
    );
  }
  mkdirSync(buildDir, { recursive: true });
  const log = createWriteStream(join(buildDir, 'build.log'));
  const defines = [`--CDCMAKE_CUDA_ARCHITECTURES=${args.archs}`, `--CDCMAKE_CUDA_COMPILER=${nvcc}`];
  if (args.check) defines.push('--CDMAMBA_CHECK_ONLY=ON');
  else defines.push('--CDMAMBA_CHECK_ONLY=OFF');
  if (cublas?.root) defines.push(`--CDMAMBA_CUBLAS_ROOT=${cublas.root}`);
  console.log(`nvcc: ${nvcc}\ncuBLAS: ${cublas?.where ?? 'absent (check-only build)'}\narchs: ${args.archs}`);
  const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  if (!existsSync(cmakeJs)) throw new BuildError('node_modules/cmake-js is missing: run `npm install` first');
  await run(process.execPath, [cmakeJs, 'compile', '-d', here, '-O', buildDir, '-p', String(args.jobs), ...(args.debug ? ['-D'] : []), ...defines], log);
  log.end();
  console.log(
    args.check
      ? '\ncheck build done: kernels, engine and binding compiled; worker/native/build/scan_bench linked; no addon (no cuBLAS).'
      : `\nbuilt ${join(buildDir, args.debug ? 'Debug' : 'Release', 'mamba_native.node')} and ${join(buildDir, 'scan_bench')}`,
  );
}

main().catch((err: unknown) => {
  console.error(`build:cuda: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
