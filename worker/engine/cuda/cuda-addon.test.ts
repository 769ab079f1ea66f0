// What every machine can check of the cuda engine's TypeScript side: without a built addon or
// a GPU, availability says why in one sentence and loading fails with that sentence, never with
// a loader trace. (The engine's numbers are checked in cuda-engine.gpu.test.ts, on a GPU.)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openCheckpoint } from '../../model/checkpoint.ts';
import { writeRandomCheckpoint } from '../../model/testing/random-checkpoint.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-cuda-addon-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
  vi.unstubAllEnvs();
});

describe('cuda availability', () => {
  it('reports this machine, with the reason when unavailable', async () => {
    const { cudaAvailability } = await import('./cuda-addon.ts');
    const a = cudaAvailability();
    if (a.ok) {
      expect(a.device).toMatch(/sm_\d+/);
    } else {
      expect(a.reason.length).toBeGreaterThan(20);
      console.info(`cuda engine unavailable here (GPU tests skip): ${a.reason}`);
    }
  });

  it('names a missing addon build and how to make one', async () => {
    vi.resetModules();
    vi.stubEnv('MAMBA_CUDA_ADDON', join(root, 'nowhere', 'mamba_native.node'));
    const { cudaAvailability, loadCudaAddon, CudaUnavailableError } = await import('./cuda-addon.ts');
    const a = cudaAvailability();
    expect(a.ok).toBe(false);
    if (!a.ok) expect(a.reason).toMatch(/not built: .*nowhere.*npm run build:cuda/);
    expect(() => loadCudaAddon()).toThrow(CudaUnavailableError);
    vi.unstubAllEnvs();
  });

  it('a file that is not an addon fails to load with the loader\'s reason', async () => {
    vi.resetModules();
    const fake = join(root, 'fake.node');
    await (await import('node:fs/promises')).writeFile(fake, 'not an ELF file');
    vi.stubEnv('MAMBA_CUDA_ADDON', fake);
    const { cudaAvailability } = await import('./cuda-addon.ts');
    const a = cudaAvailability();
    expect(a.ok).toBe(false);
    if (!a.ok) expect(a.reason).toMatch(/failed to load/);
    vi.unstubAllEnvs();
  });

  it('CudaEngine.load rejects with CudaUnavailableError carrying the reason', async () => {
    vi.resetModules();
    vi.stubEnv('MAMBA_CUDA_ADDON', join(root, 'nowhere', 'mamba_native.node'));
    const { CudaEngine } = await import('./cuda-engine.ts');
    const dir = join(root, 'ckpt');
    await writeRandomCheckpoint(dir, { seed: 1 });
    await expect(CudaEngine.load(await openCheckpoint(dir))).rejects.toMatchObject({
      name: 'CudaUnavailableError',
      code: 'cuda_unavailable',
      message: expect.stringMatching(/not built/),
    });
    vi.unstubAllEnvs();
  });
});
