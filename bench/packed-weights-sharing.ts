// What the packed-weights file saves when several engine processes share a host: N processes
// load the same f32 build, each packing at load (ORT_PACKED_WEIGHTS_FILE=false) or mapping the
// file (the default), run a 64-token prefill and 10 decode steps, then hold still while their
// resident and proportional set sizes (/proc/PID/smaps_rollup: PSS splits shared pages between
// the processes that map them) are read.
//
//   npx tsx bench/packed-weights-sharing.ts [--processes 2]
//
// Uses bench/engine-cpu.ts's random mamba-130m-shaped checkpoint (.cache/bench/; run that
// first) and makes the packed-weights file before measuring. Linux only (smaps_rollup).
import { fork } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { OrtEngine } from '../worker/engine/ort/ort-engine.ts';
import { ensureGraphBuild } from '../worker/engine/ort/graph-cache.ts';
import { ensurePackedModel } from '../worker/engine/ort/packed-weights.ts';
import { openCheckpoint } from '../worker/model/checkpoint.ts';

const { values: args } = parseArgs({
  options: {
    processes: { type: 'string', default: '2' },
    'cache-dir': { type: 'string', default: '.cache/bench' },
    /** Internal: be one engine process ('file' or 'at-load'). */
    child: { type: 'string' },
  },
});
const modelDir = join(args['cache-dir'], 'mamba-130m-random');
const graphsDir = join(args['cache-dir'], 'graphs');

if (args.child) {
  const ckpt = await openCheckpoint(modelDir);
  const engine = await OrtEngine.load(ckpt, { cacheDir: graphsDir, intraOpThreads: 1, packedWeightsFile: args.child === 'file' });
  const state = await engine.newState();
  await engine.prefill(state, Int32Array.from({ length: 64 }, (_, i) => (i * 7919) % 50000));
  for (let i = 0; i < 10; i++) await engine.decode([{ state, token: i }]);
  process.send!('ready');
  await new Promise((resolve) => process.once('message', resolve));
  await engine.close();
  process.exit(0);
}

if (!existsSync(join(modelDir, 'model.safetensors'))) throw new Error(`no checkpoint in ${modelDir}: run npx tsx bench/engine-cpu.ts first (it writes it)`);
const ckpt = await openCheckpoint(modelDir);
await ensurePackedModel((await ensureGraphBuild(ckpt, graphsDir)).modelPath);

const MB = (kb: number) => kb / 1024;
function rollup(pid: number): { rss: number; pss: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: MB(kb('Rss')), pss: MB(kb('Pss')) };
}

const n = Number(args.processes);
console.log(`${n} f32 engine processes on one host (mamba-130m-shaped, 517 MB of weights), after a 64-token prefill and 10 decode steps each\n`);
console.log('| packing | RSS each | PSS each | PSS together |\n|---|---|---|---|');
for (const mode of ['at-load', 'file'] as const) {
  const children = Array.from({ length: n }, () =>
    fork(fileURLToPath(import.meta.url), ['--child', mode, '--cache-dir', args['cache-dir']], { execArgv: ['--import', 'tsx'] }),
  );
  await Promise.all(children.map((c) => new Promise((resolve, reject) => (c.once('message', resolve), c.once('exit', (code) => reject(new Error(`exited ${code}`)))))));
  const sizes = children.map((c) => rollup(c.pid!));
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)} MB`;
  const label = mode === 'file' ? 'mapped from the packed-weights file (default)' : 'at load (ORT_PACKED_WEIGHTS_FILE=false)';
  console.log(`| ${label} | ${range(sizes.map((s) => s.rss))} | ${range(sizes.map((s) => s.pss))} | ${sizes.reduce((t, s) => t + s.pss, 0).toFixed(0)} MB |`);
  for (const c of children) c.send('done');
  await Promise.all(children.map((c) => new Promise((resolve) => c.once('exit', resolve))));
}
