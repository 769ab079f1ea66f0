// The packed-weights model of a graph build: ONNX Runtime's packed matmul weights written
// once into a file beside the build and mapped at every load, instead of packed at every
// load into the process's own memory.
//
// Why: a session packs every constant matmul weight into its kernels' layout (MLAS's GEMM
// panels for f32 MatMul/Gemm, MatMulNBits' blocks for int8/int4). Packed at load, the process
// holds the mapped build file and the packed copy at once (f32 mamba-130m: a 1.35 GB peak for
// 517 MB of weights) and keeps the packed copy in anonymous memory no other process can share.
// ORT can save its packed weights into an optimized model's external data
// (`session.save_external_prepacked_constant_initializers`) and, loading that model, map them
// instead of packing: the load peak is gone, and the packed pages are page cache that every
// worker on the host mapping the same file shares (docs/cpu-engine.md, "Memory", has the figures).
//
// The packed layout is the kernels' for this CPU and this ORT: the file is keyed by the ORT
// version, the CPU's model and instruction-set flags, and lives inside the build's directory
// (a rebuilt build drops it; making one removes those another ORT version made). It is made by
// a child process (pack-weights.mjs) so the packing's own peak is not the serving process's,
// checked there by loading it, and renamed into place whole, like the build itself
// (publish-directory.ts).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { publishDirectory } from './publish-directory.ts';

const MODEL_FILE = 'model.onnx';
const WEIGHTS_FILE = 'weights.bin';
const META_FILE = 'meta.json';
const CHILD = fileURLToPath(new URL('./pack-weights.mjs', import.meta.url));

/** meta.json of a packed-weights file: what its layout was made for. */
export const PackedMeta = z.object({
  ort_version: z.string(),
  cpu: z.string(),
  arch: z.string(),
  built_at: z.string(),
});

export class PackedWeightsError extends Error {
  readonly code = 'packed_weights_failed';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PackedWeightsError';
  }
}

/** The onnxruntime-node version the engine loads (its package.json; no native code loaded). */
export function ortVersion(): string {
  return (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
}

/**
 * What the packed layout depends on besides ORT: the CPU model and the instruction sets it
 * offers (Linux's /proc/cpuinfo flags; elsewhere the model name alone).
 */
export function cpuSignature(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const first = (key: string) => new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim() ?? '';
    const flags = first('flags') || first('Features');
    if (flags) return `${first('model name') || first('CPU part')}|${flags.split(/\s+/).sort().join(' ')}`;
  } catch {
    // not Linux: below
  }
  return cpus()[0]?.model ?? 'unknown';
}

export interface PackedModel {
  readonly modelPath: string;
  /** True when this call made it (false: reused). */
  readonly built: boolean;
}

function packedDir(buildModelPath: string): string {
  const key = createHash('sha256')
    .update(JSON.stringify({ ort: ortVersion(), arch: process.arch, cpu: cpuSignature() }))
    .digest('hex')
    .slice(0, 16);
  return join(dirname(buildModelPath), `packed-${key}`);
}

async function isWhole(dir: string): Promise<boolean> {
  try {
    PackedMeta.parse(JSON.parse(await readFile(join(dir, META_FILE), 'utf8')));
    await stat(join(dir, MODEL_FILE));
    await stat(join(dir, WEIGHTS_FILE));
    return true;
  } catch {
    return false;
  }
}

function runChild(source: string, outDir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    // Plain node, no loader flags: the child is JavaScript and needs only onnxruntime-node.
    execFile(process.execPath, [CHILD, source, outDir], { maxBuffer: 1 << 20 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const detail = stderr.trim().split('\n').slice(-3).join(' | ') || err.message;
      reject(new PackedWeightsError(`packing the weights of ${source} failed: ${detail}`, { cause: err }));
    });
  });
}

/**
 * The packed-weights model of the graph build at `buildModelPath`, made first if there is
 * none for this ORT and CPU (`onMake` hears of it before the work starts: seconds for
 * mamba-130m, minutes for billions of weights). Throws PackedWeightsError when it cannot be made (ORT fails to
 * write or read it, the disk is full): the caller can load the build itself instead.
 */
export async function ensurePackedModel(buildModelPath: string, options: { readonly onMake?: (dir: string) => void } = {}): Promise<PackedModel> {
  const dir = packedDir(buildModelPath);
  const modelPath = join(dir, MODEL_FILE);
  if (await isWhole(dir)) return { modelPath, built: false };
  await rm(dir, { recursive: true, force: true });
  options.onMake?.(dir);

  try {
    await publishDirectory(
      dir,
      async (tmp) => {
        await runChild(buildModelPath, tmp);
        const meta: z.infer<typeof PackedMeta> = { ort_version: ortVersion(), cpu: cpuSignature(), arch: process.arch, built_at: new Date().toISOString() };
        await writeFile(join(tmp, META_FILE), JSON.stringify(meta, null, 2));
      },
      () => isWhole(dir),
    );
  } catch (err) {
    // One error type for every way this fails (ORT, a full disk, a read-only cache): the
    // caller's answer is the same, load the build and pack in memory.
    throw err instanceof PackedWeightsError ? err : new PackedWeightsError(`making the packed-weights file ${dir} failed: ${(err as Error).message}`, { cause: err });
  }
  await removeOtherOrtVersions(dirname(dir), dir);
  return { modelPath, built: true };
}

/**
 * Packed-weights files of this build made by another ORT version: after an upgrade they are
 * never read again, and each is the size of the weights or more (a 2.8B f32 model's: ~25 GB).
 * Files of other CPUs with this ORT stay: a cache shared by unlike hosts needs each of them.
 */
async function removeOtherOrtVersions(buildDir: string, keep: string): Promise<void> {
  const version = ortVersion();
  for (const name of await readdir(buildDir)) {
    const dir = join(buildDir, name);
    if (!name.startsWith('packed-') || name.includes('.tmp-') || dir === keep) continue;
    try {
      const meta = PackedMeta.parse(JSON.parse(await readFile(join(dir, META_FILE), 'utf8')));
      if (meta.ort_version === version) continue;
    } catch {
      continue; // unreadable: another process may be making it right now
    }
    await rm(dir, { recursive: true, force: true });
  }
}

/** Remove the packed-weights model at `modelPath` (one ORT could not load): the next ensurePackedModel makes it again. */
export async function discardPackedModel(modelPath: string): Promise<void> {
  await rm(dirname(modelPath), { recursive: true, force: true });
}
