import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../model/testing/random-checkpoint.ts';
import { createEngine } from './create-engine.ts';
import { cudaAvailability } from './cuda/cuda-addon.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-create-'));
  await writeRandomCheckpoint(join(root, 'model'), { seed: 3 });
  // d_inner 36: not a multiple of 16, which the native kernels' vectors need.
  await writeRandomCheckpoint(join(root, 'odd'), { seed: 4, hiddenSize: 24, expand: 1.5, numLayers: 2 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('createEngine', () => {
  const cuda = cudaAvailability();

  it(`'auto' picks ${cuda.ok ? 'cuda' : 'ort'} on this machine`, async () => {
    const { engine } = await createEngine({ modelDir: join(root, 'model'), cacheDir: join(root, 'cache'), intraOpThreads: 1 });
    try {
      expect(engine.kind).toBe(cuda.ok ? 'cuda' : 'ort');
    } finally {
      await engine.close();
    }
  });

  it.skipIf(cuda.ok)("'cuda' without a usable GPU says why", async () => {
    await expect(createEngine({ modelDir: join(root, 'model'), engine: 'cuda' })).rejects.toMatchObject({ code: 'cuda_unavailable' });
  });

  it("quantized weights run on 'ort' ('auto' picks it for them) and are refused by the other engines", async () => {
    const { engine } = await createEngine({ modelDir: join(root, 'model'), cacheDir: join(root, 'cache'), intraOpThreads: 1, weightsDtype: 'int8' });
    try {
      expect(engine.kind).toBe('ort');
    } finally {
      await engine.close();
    }
    await expect(createEngine({ modelDir: join(root, 'model'), engine: 'reference', weightsDtype: 'int4' })).rejects.toMatchObject({ code: 'weights_dtype_unsupported' });
    await expect(createEngine({ modelDir: join(root, 'model'), engine: 'ort', weightsDtype: 'int8', prepackWeights: false })).rejects.toMatchObject({ code: 'weights_dtype_unsupported' });
  });

  it('passes ORT_NATIVE_KERNELS to the ort engine: on refuses to start where the native kernels do not apply (here: d_inner 36)', async () => {
    await expect(createEngine({ modelDir: join(root, 'odd'), engine: 'ort', cacheDir: join(root, 'cache'), intraOpThreads: 1, nativeKernels: 'on' })).rejects.toMatchObject({
      code: 'native_kernels_unavailable',
      message: expect.stringMatching(/d_inner 36/),
    });
  });

  it('a missing model directory is a model_not_found error', async () => {
    await expect(createEngine({ modelDir: join(root, 'nope') })).rejects.toMatchObject({ code: 'model_not_found' });
  });
});
