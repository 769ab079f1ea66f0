// Builds the ONNX graph + weights file of a checkpoint once and reuses it: a restart finds
// the build by the identity of the checkpoint's files (path, size, mtime) without reading
// a byte of weights, and gets the model fingerprint from the build's metadata.
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import type { Checkpoint } from '../../model/checkpoint.ts';
import { startProgress, type ProgressSink } from '../../../shared/progress.ts';
import { buildMambaGraph, GRAPH_VERSION } from './mamba-graph.ts';
import { graphWeightBytes, writeGraphWeights } from './weights-file.ts';

const MODEL_FILE = 'model.onnx';
const WEIGHTS_FILE = 'weights.bin';
const META_FILE = 'meta.json';

const BuildMeta = z.object({
  graph_version: z.literal(GRAPH_VERSION),
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

async function buildKey(ckpt: Checkpoint): Promise<string> {
  const files = [...new Set([...ckpt.tensors.values()].map((t) => resolve(t.file)))].sort();
  const ids = await Promise.all(
    [resolve(ckpt.dir, 'config.json'), ...files].map(async (f) => {
      const s = await stat(f);
      return [f, s.size, s.mtimeMs];
    }),
  );
  return createHash('sha256').update(JSON.stringify({ graph: GRAPH_VERSION, ids })).digest('hex').slice(0, 24);
}

async function readMeta(dir: string): Promise<z.infer<typeof BuildMeta> | undefined> {
  try {
    const meta = BuildMeta.safeParse(JSON.parse(await readFile(join(dir, META_FILE), 'utf8')));
    if (!meta.success) return undefined;
    await stat(join(dir, MODEL_FILE));
    await stat(join(dir, WEIGHTS_FILE));
    return meta.data;
  } catch {
    return undefined;
  }
}

/**
 * The graph build of `ckpt` under `cacheDir`, built first if there is none. A build that takes
 * more than a couple of seconds (a 130M model's takes ~10) shows its progress on `progressSink`
 * (default stderr).
 */
export async function ensureGraphBuild(ckpt: Checkpoint, cacheDir: string, progressSink?: ProgressSink): Promise<GraphBuild> {
  const dir = join(cacheDir, 'ort', await buildKey(ckpt));
  const existing = await readMeta(dir);
  if (existing) return { modelPath: join(dir, MODEL_FILE), fingerprint: existing.fingerprint, built: false };
  // A directory without valid metadata is a build of an older format or a damaged cache: rebuild.
  await rm(dir, { recursive: true, force: true });

  // Build beside the final place and rename: a crash never leaves a half-written build that
  // a later start would trust, and two processes building at once both end with a whole one.
  const fingerprint = await ckpt.fingerprint();
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(tmp, { recursive: true });
  try {
    const progress = startProgress({
      label: `building the ONNX graph of ${ckpt.dir} (once)`,
      total: graphWeightBytes(ckpt),
      ...(progressSink ? { sink: progressSink } : {}),
    });
    let weights;
    try {
      weights = await writeGraphWeights(ckpt, join(tmp, WEIGHTS_FILE), WEIGHTS_FILE, (written) => progress.update(written));
    } finally {
      progress.finish();
    }
    await writeFile(join(tmp, MODEL_FILE), buildMambaGraph(ckpt, weights));
    const meta: z.infer<typeof BuildMeta> = {
      graph_version: GRAPH_VERSION,
      fingerprint,
      source: resolve(ckpt.dir),
      built_at: new Date().toISOString(),
    };
    await writeFile(join(tmp, META_FILE), JSON.stringify(meta, null, 2));
    try {
      await rename(tmp, dir);
    } catch (err) {
      if (!(await readMeta(dir))) throw err;
      await rm(tmp, { recursive: true, force: true }); // another process won the race
    }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return { modelPath: join(dir, MODEL_FILE), fingerprint, built: true };
}
