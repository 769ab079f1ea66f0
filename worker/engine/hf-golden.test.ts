// The plain reference held to Hugging Face transformers' own MambaForCausalLM: the golden
// logits tools/gpu/hf_golden.py writes (float64, full and step modes) for the committed golden
// checkpoints, committed beside them as hf-golden.json. Every other engine is held to the
// reference, so this pins the whole family to HF. Skips, saying so, until a GPU session (which
// has torch and transformers) has produced the fixtures: see docs/cuda-engine.md.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openCheckpoint } from '../model/checkpoint.ts';
import { ReferenceEngine } from './reference/reference-engine.ts';
import { GOLDEN_CASES } from './testing/golden/cases.ts';

const here = dirname(fileURLToPath(import.meta.url));
const TOLERANCE = 1e-4;

interface HfGolden {
  transformers_version: string;
  model_safetensors_sha256: string | null;
  tokens: number[];
  full: number[][];
  step: number[][];
}

function maxDiff(rows: number[][], flat: Float32Array, vocab: number): number {
  let m = 0;
  rows.forEach((row, r) => row.forEach((v, i) => (m = Math.max(m, Math.abs(v - flat[r * vocab + i]!)))));
  return m;
}

// HF transformers has no model of the attention hybrid (a mamba-serve extension): those cases
// are held to the float64 PyTorch reference only (golden.test.ts).
const HF_CASES = GOLDEN_CASES.filter((c) => !c.options.hybrid);

describe.each(HF_CASES.map((c) => c.name))('reference engine vs HF transformers: %s', (name) => {
  const dir = join(here, 'testing', 'golden', name);
  const fixture = join(dir, 'hf-golden.json');
  const present = existsSync(fixture);

  it.skipIf(!present)(`full and step logits within 1e-4 of MambaForCausalLM${present ? '' : ' — skipped: no hf-golden.json yet (made by tools/gpu/hf_golden.py on a GPU machine)'}`, async () => {
    const golden = JSON.parse(await readFile(fixture, 'utf8')) as HfGolden;
    if (golden.model_safetensors_sha256) {
      const sha = createHash('sha256').update(await readFile(join(dir, 'model.safetensors'))).digest('hex');
      expect(sha, 'the fixture was made from other weights').toBe(golden.model_safetensors_sha256);
    }
    const engine = await ReferenceEngine.load(await openCheckpoint(dir));
    try {
      const tokens = Int32Array.from(golden.tokens);
      const full = await engine.prefill(await engine.newState(), tokens, { allLogits: true });
      const V = golden.full[0]!.length;
      // The engine's rows may be padded past HF's vocab_size; compare HF's columns.
      const cut = (data: Float32Array, rows: number) => {
        const out = new Float32Array(rows * V);
        for (let r = 0; r < rows; r++) out.set(data.subarray(r * engine.model.vocabRows, r * engine.model.vocabRows + V), r * V);
        return out;
      };
      expect(maxDiff(golden.full, cut(full.data, tokens.length), V)).toBeLessThan(TOLERANCE);
      const state = await engine.newState();
      const stepped = new Float32Array(tokens.length * engine.model.vocabRows);
      for (let t = 0; t < tokens.length; t++) stepped.set((await engine.decode([{ state, token: tokens[t]! }])).data, t * engine.model.vocabRows);
      expect(maxDiff(golden.step, cut(stepped, tokens.length), V)).toBeLessThan(TOLERANCE);
    } finally {
      await engine.close();
    }
  });
});
