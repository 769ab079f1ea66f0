import type { RandomCheckpointOptions } from '../../../model/testing/random-checkpoint.ts';

export interface GoldenCase {
  readonly name: string;
  readonly options: RandomCheckpointOptions;
  readonly length: number;
  /** Absolute position of the first token: the engines start from a zero state that has counted this many. */
  readonly position?: number;
}

/** Small enough to commit (tens of KB), varied enough to exercise every loader path. */
export const GOLDEN_CASES: readonly GoldenCase[] = [
  { name: 'hf-f32-tied', options: { seed: 101, hiddenSize: 32, numLayers: 2, vocabSize: 64, stateSize: 8 }, length: 14 },
  {
    name: 'hf-bf16-untied-bias',
    options: { seed: 102, dtype: 'BF16', tied: false, bias: true, hiddenSize: 24, numLayers: 3, vocabSize: 50, stateSize: 5, convKernel: 3 },
    length: 11,
  },
  // The attention hybrid: grouped KV heads, biases, RoPE, a window the prompt wraps three times.
  {
    name: 'hybrid-f32-window',
    options: {
      seed: 103,
      hiddenSize: 32,
      numLayers: 3,
      vocabSize: 64,
      stateSize: 8,
      hybrid: { attentionLayers: [1], window: 5, heads: 4, kvHeads: 2, headDim: 8, bias: true },
    },
    length: 17,
  },
  // The same kind of model ten million tokens into a session: RoPE angles must stay exact there.
  {
    name: 'hybrid-f32-far',
    options: {
      seed: 104,
      hiddenSize: 32,
      numLayers: 3,
      vocabSize: 64,
      stateSize: 8,
      hybrid: { attentionLayers: [0, 2], window: 4, heads: 2, kvHeads: 1, headDim: 16, ropeTheta: 10000 },
    },
    length: 9,
    position: 10_000_000,
  },
];

export function goldenTokens(c: GoldenCase): number[] {
  return Array.from({ length: c.length }, (_, i) => (i * 37 + 11) % (c.options.vocabSize ?? 300));
}
