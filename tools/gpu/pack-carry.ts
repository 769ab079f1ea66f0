// Packs what a GPU machine (no Node, no network) needs to build and test the cuda engine into
// .device-carry/ (git-ignored), to be named in the device tool's `carry`:
//   .device-carry/node.xz              this machine's Node binary, xz-compressed
//   .device-carry/node_modules.tar.xz  the packages the build, the GPU tests and the benchmark
//                                      import, with only linux-x64 native binaries
// Run here, before the first device call:  npx tsx tools/gpu/pack-carry.ts [--no-ort]
// tools/gpu/runbook.sh unpacks them there. The carry limit is 64 MiB with the working tree.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const out = join(root, '.device-carry');
const withOrt = !process.argv.includes('--no-ort');

// What the GPU steps import: vitest (test:gpu), tsx (build script, benchmark), cmake-js and
// node-addon-api (the build), zod (config and .mstate), ORT and its protobuf (the cross-engine test).
const roots = ['vitest', 'tsx', 'cmake-js', 'node-addon-api', 'node-api-headers', 'zod', ...(withOrt ? ['onnxruntime-node', 'onnx-proto', 'protobufjs'] : [])];

function pkgDir(name: string): string | undefined {
  const dir = join(root, 'node_modules', name);
  return existsSync(join(dir, 'package.json')) ? dir : undefined;
}

const closure = new Set<string>();
const queue = [...roots];
while (queue.length > 0) {
  const name = queue.pop()!;
  if (closure.has(name)) continue;
  const dir = pkgDir(name);
  if (!dir) continue; // an optional dependency for another platform
  closure.add(name);
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>;
  for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies']) {
    for (const dep of Object.keys(pkg[field] ?? {})) queue.push(dep);
  }
}

mkdirSync(out, { recursive: true });
const paths = [...closure].sort().map((n) => join('node_modules', n));
const excludes = [
  '--exclude=node_modules/onnxruntime-node/bin/napi-v*/darwin',
  '--exclude=node_modules/onnxruntime-node/bin/napi-v*/win32',
  '--exclude=node_modules/onnxruntime-node/bin/napi-v*/linux/arm64',
];
console.log(`packing ${closure.size} packages…`);
execFileSync('tar', ['-cJf', join(out, 'node_modules.tar.xz'), ...excludes, '-C', root, ...paths], {
  stdio: 'inherit',
  env: { ...process.env, XZ_OPT: '-6 -T2' },
});
console.log('compressing the Node binary…');
execFileSync('sh', ['-c', `xz -6 -T2 -c "${process.execPath}" > "${join(out, 'node.xz')}"`], { stdio: 'inherit' });

const mib = (f: string) => statSync(join(out, f)).size / 2 ** 20;
const total = mib('node_modules.tar.xz') + mib('node.xz');
console.log(`.device-carry: node.xz ${mib('node.xz').toFixed(1)} MiB, node_modules.tar.xz ${mib('node_modules.tar.xz').toFixed(1)} MiB (total ${total.toFixed(1)} MiB of the 64 MiB a call may carry, with the working tree)`);
if (total > 58) console.warn('close to the limit: rerun with --no-ort to leave onnxruntime-node behind');
