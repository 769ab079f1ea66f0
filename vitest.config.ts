import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['node_modules/**', 'cdk.out/**', 'dist/**'],
    // Engine and integration tests are CPU-heavy; two cores is the CI budget.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Builds the native kernels' addon where the machine can, so its tests run (they skip, saying
    // why, where it cannot).
    globalSetup: ['test-support/build-native-cpu.ts'],
  },
});
