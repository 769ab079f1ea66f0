// Builds the ONNX graph + weights file of a checkpoint once and reuses it: a restart finds
// the build by the identity of the checkpoint's files (path, size, mtime) and the weights
// dtype without reading a byte of weights, and gets the model fingerprint from the build's
// metadata. Builds of one checkpoint in different dtypes (f32, int8, int4) live side by side.
import { createHash } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import type { Checkpoint } from '../../model/checkpoint.ts';
import { startProgress, type ProgressSink } from '../../../shared/progress.ts';
import type { NBitsActivations } from './linear.ts';
import { buildMambaGraph, GRAPH_VERSION } from './mamba-graph.ts';
import { publishDirectory } from './publish-directory.ts';
import { WEIGHTS_DTYPES, type WeightsDtype } from './quantize.ts';
import { graphWeightBytes, writeGraphWeights } from './weights-file.ts';

const MODEL_FILE = 'model.onnx';
const WEIGHTS_FILE = 'weights.bin';
const META_FILE = 'meta.json';

const BuildMeta = z.object({
  graph_version: z.literal(GRAPH_VERSION),
  weights_dtype: z.enum(WEIGHTS_DTYPES as [WeightsDtype, ...WeightsDtype[]]),
  activations: z.enum(['int8', 'f32']).optional(),
  fingerprint: z.string().regex(/^[0-9a-f]{64}$/),
  source: z.string(),
  built_at: z.string(),
});

export interface GraphBuild {
  readonly modelPath: string;
  readonly fingerprint: string;
  /** True when this call built it (false: reused). */
  readonly built: boolean;
}

async function buildKey(ckpt: Checkpoint, dtype: WeightsDtype, activations: NBitsActivations | undefined): Promise<string> {
  const files = [...new Set([...ckpt.tensors.values()].map((t) => resolve(t.file)))].sort();
  const ids = await Promise.all(
    [resolve(ckpt.dir, 'config.json'), ...files].map(async (f) => {
      const s = await stat(f);
      return [f, s.size, s.mtimeMs];
    }),
  );
  return createHash('sha256').update(JSON.stringify({ graph: GRAPH_VERSION, dtype, activations, ids })).digest('hex').slice(0, 24);
}

async function readMeta(dir: string, dtype: WeightsDtype): Promise<z.infer<typeof BuildMeta> | undefined> {
  try {
    const meta = BuildMeta.safeParse(JSON.parse(await readFile(join(dir, META_FILE), 'utf8')));
    if (!meta.success || meta.data.weights_dtype !== dtype) return undefined;
    await stat(join(dir, MODEL_FILE));
    await stat(join(dir, WEIGHTS_FILE));
    return meta.data;
  } catch {
    return undefined;
  }
}

export interface GraphBuildOptions {
  /** Weights dtype of the build (default f32). */
  readonly dtype?: WeightsDtype;
  /** Quantized builds only: MatMulNBits' activations ('f32' is for tests; default int8). */
  readonly activations?: NBitsActivations;
  /** Where a long build shows its progress (default stderr). */
  readonly progressSink?: ProgressSink;
}

/**
 * The graph build of `ckpt` in `dtype` under `cacheDir`, built first if there is none. A build
 * that takes more than a couple of seconds (a 130M model's takes ~10) shows its progress.
 */
export async function ensureGraphBuild(ckpt: Checkpoint, cacheDir: string, options: GraphBuildOptions = {}): Promise<GraphBuild> {
  const dtype = options.dtype ?? 'f32';
  const progressSink = options.progressSink;
  const activations = dtype === 'f32' ? undefined : options.activations;
  const dir = join(cacheDir, 'ort', await buildKey(ckpt, dtype, activations));
  const existing = await readMeta(dir, dtype);
  if (existing) return { modelPath: join(dir, MODEL_FILE), fingerprint: existing.fingerprint, built: false };
  // A directory without valid metadata is a build of an older format or a damaged cache: rebuild.
  await rm(dir, { recursive: true, force: true });

  // Built beside the final place and renamed (publish-directory.ts): a crash never leaves a
  // half-written build that a later start would trust.
  const fingerprint = await ckpt.fingerprint();
  await publishDirectory(
    dir,
    async (tmp) => {
      const progress = startProgress({
        label: `building the ONNX graph of ${ckpt.dir}${dtype === 'f32' ? '' : ` with ${dtype} weights`} (once)`,
        total: graphWeightBytes(ckpt),
        ...(progressSink ? { sink: progressSink } : {}),
      });
      let weights;
      try {
        weights = await writeGraphWeights(ckpt, join(tmp, WEIGHTS_FILE), WEIGHTS_FILE, (consumed) => progress.update(consumed), dtype);
      } finally {
        progress.finish();
      }
      await writeFile(join(tmp, MODEL_FILE), buildMambaGraph(ckpt, weights, activations ? { activations } : {}));
      const meta: z.infer<typeof BuildMeta> = {
        graph_version: GRAPH_VERSION,
        weights_dtype: dtype,
        ...(activations ? { activations } : {}),
        fingerprint,
        source: resolve(ckpt.dir),
        built_at: new Date().toISOString(),
      };
      await writeFile(join(tmp, META_FILE), JSON.stringify(meta, null, 2));
    },
    async () => (await readMeta(dir, dtype)) !== undefined,
  );
  return { modelPath: join(dir, MODEL_FILE), fingerprint, built: true };
}
