// The engine on the native kernels (native-engine.ts) as the engine contract asks of it: it runs
// on the caller's thread, so a prompt must give the event loop a turn between its pieces, and
// closing or freeing during those turns must stop it cleanly. Its numbers are held to ONNX
// Runtime's graph and to the references in native-kernels.test.ts, ort-engine.test.ts,
// ort-quantized.test.ts and golden.test.ts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type Checkpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint } from '../../model/testing/random-checkpoint.ts';
import { ReferenceEngine } from '../reference/reference-engine.ts';
import type { Engine } from '../engine.ts';
import { maxAbsDiff, tokensFor } from '../testing/compare.ts';
import { NativeKernelsEngine, PREFILL_PIECE } from './native-engine.ts';
import { OrtEngine } from './ort-engine.ts';
import { nativeKernelsUnavailable } from './testing/native-availability.ts';

const skip = nativeKernelsUnavailable();
if (skip) console.warn(`native engine tests skip: ${skip}`);

describe.skipIf(skip)('the engine on the native kernels', () => {
  let root: string;
  let ckpt: Checkpoint;
  let engine: Engine;
  const load = () => OrtEngine.load(ckpt, { cacheDir: join(root, 'cache'), intraOpThreads: 2, weightsDtype: 'int8', nativeKernels: 'on', log: { info: () => {}, warn: () => {} } });

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'ms-native-engine-'));
    await writeRandomCheckpoint(join(root, 'model'), { seed: 31, hiddenSize: 32, numLayers: 2, vocabSize: 120 });
    ckpt = await openCheckpoint(join(root, 'model'));
    engine = await load();
  });
  afterAll(async () => {
    await engine?.close();
    await rm(root, { recursive: true, force: true });
  });

  it('is what OrtEngine.load returns for a pure Mamba build here', () => {
    expect(engine).toBeInstanceOf(NativeKernelsEngine);
    expect(engine.kind).toBe('ort');
  });

  it('gives the event loop a turn between the pieces of a prompt', async () => {
    const pieces = 6;
    const tokens = tokensFor(pieces * PREFILL_PIECE - 3, ckpt.config.vocabSize, 2);
    // One count a turn of the event loop (its check phase), for as long as the prompt runs.
    let turns = 0;
    let counting = true;
    const count = () => {
      turns++;
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    const state = await engine.newState();
    const out = await engine.prefill(state, tokens);
    counting = false;
    expect(out.rows).toBe(1);
    expect(state.tokensAbsorbed).toBe(tokens.length);
    // A prompt run in one call would let the loop turn once or twice; pieces give it one turn each.
    expect(turns).toBeGreaterThanOrEqual(pieces - 1);
  });

  it('stops a prompt whose state is freed, or whose engine is closed, while the event loop has its turn', async () => {
    const tokens = tokensFor(3 * PREFILL_PIECE, ckpt.config.vocabSize, 3);
    const freed = await engine.newState();
    const running = engine.prefill(freed, tokens);
    setImmediate(() => engine.freeState(freed));
    await expect(running).rejects.toMatchObject({ code: 'state_freed' });

    const other = await load();
    const state = await other.newState();
    const closing = other.prefill(state, tokens);
    setImmediate(() => void other.close());
    await expect(closing).rejects.toMatchObject({ code: 'engine_closed' });
    await expect(other.newState()).rejects.toMatchObject({ code: 'engine_closed' });
    await expect(other.decode([{ state, token: 1 }])).rejects.toMatchObject({ code: 'engine_closed' });
  });

  it('refuses tokens outside the vocabulary, freed and foreign handles, and a state twice in a batch, touching no state', async () => {
    const state = await engine.newState();
    await engine.prefill(state, tokensFor(4, ckpt.config.vocabSize, 5));
    const untouched = await engine.cloneState(state);
    await expect(engine.prefill(state, Int32Array.of(1, ckpt.vocabRows))).rejects.toMatchObject({ code: 'token_out_of_range' });
    await expect(engine.decode([{ state, token: -1 }])).rejects.toMatchObject({ code: 'token_out_of_range' });
    for (const token of [1.5, Number.NaN, 2 ** 32 + 1]) await expect(engine.decode([{ state, token }])).rejects.toMatchObject({ code: 'token_out_of_range' });
    await expect(engine.decode([{ state, token: 1 }, { state, token: 2 }])).rejects.toMatchObject({ code: 'state_foreign' });
    expect(state.tokensAbsorbed).toBe(4);
    const after = await engine.decode([{ state, token: 3 }]);
    expect(maxAbsDiff(after.data, (await engine.decode([{ state: untouched, token: 3 }])).data)).toBe(0);

    const ref = await ReferenceEngine.load(ckpt);
    await expect(engine.prefill(await ref.newState(), Int32Array.of(1))).rejects.toMatchObject({ code: 'state_foreign' });
    const freed = await engine.cloneState(state);
    engine.freeState(freed);
    await expect(engine.decode([{ state: freed, token: 1 }])).rejects.toMatchObject({ code: 'state_freed' });
    expect(() => engine.freeState(freed)).toThrow(expect.objectContaining({ code: 'state_freed' }));
  });

  it('clones a state apart from its source, and imports what it exports', async () => {
    const a = await engine.newState();
    await engine.prefill(a, tokensFor(9, ckpt.config.vocabSize, 6));
    const b = await engine.cloneState(a);
    const bytes = await engine.exportState(a, { parentVersion: 3, transcriptHash: null });
    const { state: c, parentVersion } = await engine.importState(bytes);
    expect(parentVersion).toBe(3);
    expect(c.tokensAbsorbed).toBe(9);
    const fromA = await engine.decode([{ state: a, token: 7 }]);
    // a moved on; b and c did not.
    const fromB = await engine.decode([{ state: b, token: 7 }]);
    const fromC = await engine.decode([{ state: c, token: 7 }]);
    expect(maxAbsDiff(fromB.data, fromA.data)).toBe(0);
    expect(maxAbsDiff(fromC.data, fromA.data)).toBe(0);
    expect(a.tokensAbsorbed).toBe(10);
  });
});
