// A tiny random Mamba model with a byte-level tokenizer, for serving tests: hidden 32, two
// layers, 304 vocabulary rows, so even the reference engine answers in milliseconds.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../worker/model/testing/random-checkpoint.ts';

export interface TinyModel {
  readonly dir: string;
  remove(): Promise<void>;
}

export async function writeTinyModel(options: RandomCheckpointOptions = {}): Promise<TinyModel> {
  const root = await mkdtemp(join(tmpdir(), 'ms-tiny-model-'));
  const dir = join(root, 'tiny');
  await writeRandomCheckpoint(dir, { hiddenSize: 32, numLayers: 2, vocabSize: 300, seed: 7, ...options });
  return { dir, remove: () => rm(root, { recursive: true, force: true }) };
}
