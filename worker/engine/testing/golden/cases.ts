import type { RandomCheckpointOptions } from '../../../model/testing/random-checkpoint.ts';

export interface GoldenCase {
  readonly name: string;
  readonly options: RandomCheckpointOptions;
  readonly length: number;
}

/** Small enough to commit (tens of KB), varied enough to exercise every loader path. */
export const GOLDEN_CASES: readonly GoldenCase[] = [
  { name: 'hf-f32-tied', options: { seed: 101, hiddenSize: 32, numLayers: 2, vocabSize: 64, stateSize: 8 }, length: 14 },
  {
    name: 'hf-bf16-untied-bias',
    options: { seed: 102, dtype: 'BF16', tied: false, bias: true, hiddenSize: 24, numLayers: 3, vocabSize: 50, stateSize: 5, convKernel: 3 },
    length: 11,
  },
];

export function goldenTokens(c: GoldenCase): number[] {
  return Array.from({ length: c.length }, (_, i) => (i * 37 + 11) % (c.options.vocabSize ?? 300));
}
