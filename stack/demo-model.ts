// The model `npm start` serves when MODEL_DIR is not set: the bundled demo model
// (models/demo, trained by tools/train). A checkout without it still starts: it serves a
// clearly-labelled random, untrained model generated into the cache (it answers gibberish,
// but every API works).
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeRandomCheckpoint } from '../worker/model/testing/random-checkpoint.ts';

export const DEMO_MODEL_DIR = 'models/demo';
/** The same demo with a sliding-window attention layer (docs/demo-model.md, "The hybrid"). */
export const DEMO_HYBRID_MODEL_DIR = 'models/demo-hybrid';

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

export async function demoModelDir(root: string, cacheDir: string): Promise<{ dir: string; random: boolean }> {
  const demo = join(root, DEMO_MODEL_DIR);
  if (await exists(join(demo, 'config.json'))) return { dir: demo, random: false };
  const dir = join(cacheDir, 'random-demo-model');
  if (!(await exists(join(dir, 'config.json')))) {
    // Byte-level (256 bytes + padding), small enough to answer quickly on any CPU.
    await writeRandomCheckpoint(dir, { hiddenSize: 64, numLayers: 2, vocabSize: 256, stateSize: 16, seed: 42 });
  }
  return { dir, random: true };
}
