// `npm run test:gpu`: only the tests that need a GPU (*.gpu.test.ts). The top-level
// vitest.config.ts collects them too, where they skip with the reason (no addon, no GPU).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['**/*.gpu.test.ts'],
    exclude: ['node_modules/**', 'cdk.out/**', 'dist/**'],
    // One process: a GPU context per test file is costly, and compute-sanitizer follows one
    // process most cheaply.
    pool: 'forks',
    maxWorkers: 1,
    testTimeout: 300_000,
    hookTimeout: 300_000,
  },
});
