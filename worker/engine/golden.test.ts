// Every CPU engine against numbers it did not compute: logits of the independent PyTorch
// reference (tools/reference/mamba_ref.py, float64) for committed small checkpoints.
// Regenerate with worker/engine/testing/golden/make-golden.ts.
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../model/checkpoint.ts';
import type { Engine, StateHandle } from './engine.ts';
import { exportHostState, zeroHostState } from './host-state.ts';
import { OrtEngine } from './ort/ort-engine.ts';
import { ReferenceEngine } from './reference/reference-engine.ts';
import { GOLDEN_CASES } from './testing/golden/cases.ts';

const here = dirname(fileURLToPath(import.meta.url));
const TOLERANCE = 1e-4;

let cacheDir: string;
beforeAll(async () => {
  cacheDir = await mkdtemp(join(tmpdir(), 'ms-golden-'));
});
afterAll(async () => {
  await rm(cacheDir, { recursive: true, force: true });
});

interface Golden {
  tokens: number[];
  /** Absolute position of the first token (absent in fixtures older than hybrids: 0). */
  position?: number;
  full: number[][];
  step: number[][];
}

function maxDiff(rows: number[][], flat: Float32Array | Float64Array, vocab: number): number {
  let m = 0;
  rows.forEach((row, r) => row.forEach((v, i) => (m = Math.max(m, Math.abs(v - flat[r * vocab + i]!)))));
  return m;
}

const engines: [string, (dir: string) => Promise<Engine>][] = [
  ['reference', async (dir) => ReferenceEngine.load(await openCheckpoint(dir))],
  // As it runs by default (f32 on the native kernels where they are built), and on ONNX Runtime's graph.
  ['ort', async (dir) => OrtEngine.load(await openCheckpoint(dir), { cacheDir, intraOpThreads: 1 })],
  ['ort (ONNX Runtime graph)', async (dir) => OrtEngine.load(await openCheckpoint(dir), { cacheDir, intraOpThreads: 1, nativeKernels: 'off' })],
];

/** A fresh state, or (for a far-position case) a zero state that has counted `position` tokens. */
async function startState(engine: Engine, position: number): Promise<StateHandle> {
  if (position === 0) return engine.newState();
  const zero = zeroHostState('reference', engine.model);
  zero.tokensAbsorbed = position;
  return (await engine.importState(exportHostState(engine.model, zero, { parentVersion: null, transcriptHash: null }))).state;
}

describe.each(GOLDEN_CASES.map((c) => c.name))('golden case %s', (name) => {
  const dir = join(here, 'testing', 'golden', name);
  let golden: Golden;
  beforeAll(async () => {
    golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8')) as Golden;
  });

  it('the PyTorch reference agrees with itself (full == step)', () => {
    const flat = Float64Array.from(golden.step.flat());
    expect(maxDiff(golden.full, flat, golden.full[0]!.length)).toBeLessThan(1e-9);
  });

  it.each(engines)('%s engine: full prompt, step by step and resumed all match the reference', async (_, load) => {
    const engine = await load(dir);
    try {
      const tokens = Int32Array.from(golden.tokens);
      const position = golden.position ?? 0;
      const V = engine.model.vocabRows;
      const full = await engine.prefill(await startState(engine, position), tokens, { allLogits: true });
      expect(maxDiff(golden.full, full.data, V)).toBeLessThan(TOLERANCE);

      const state = await startState(engine, position);
      const stepped = new Float32Array(tokens.length * V);
      for (let t = 0; t < tokens.length; t++) stepped.set((await engine.decode([{ state, token: tokens[t]! }])).data, t * V);
      expect(maxDiff(golden.step, stepped, V)).toBeLessThan(TOLERANCE);

      const K = 5;
      const head = await startState(engine, position);
      await engine.prefill(head, tokens.subarray(0, K));
      const bytes = await engine.exportState(head, { parentVersion: null, transcriptHash: null });
      const other = await load(dir);
      try {
        const { state: resumed } = await other.importState(bytes);
        const rest = await other.prefill(resumed, tokens.subarray(K), { allLogits: true });
        expect(maxDiff(golden.full.slice(K), rest.data, V)).toBeLessThan(TOLERANCE);
      } finally {
        await other.close();
      }
    } finally {
      await engine.close();
    }
  });
});
