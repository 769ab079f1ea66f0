// Which builds of the native kernels the tests can run here, and if none why: they need
// the builds the tests' global setup makes (test-support/build-native-cpu.ts) and a CPU that runs
// them. A CPU with AVX-512 VNNI runs both the avx512 build (the engine's choice) and the avx2 one.
import { existsSync } from 'node:fs';
import { nativeCpuAddonCurrent, nativeCpuBuildsRunnable, nativeCpuUnsupported, type NativeCpuBuild } from '../../../native-cpu/support.ts';

/** The builds this machine can test, best first. */
export function testableNativeBuilds(): NativeCpuBuild[] {
  return nativeCpuBuildsRunnable().filter((b) => existsSync(b.addon) && nativeCpuAddonCurrent(b.addon));
}

export function nativeKernelsUnavailable(): string | undefined {
  const cpu = nativeCpuUnsupported();
  if (cpu) return cpu;
  const runnable = nativeCpuBuildsRunnable();
  if (!runnable.some((b) => existsSync(b.addon))) return `${runnable[0]!.addon} was not built (g++ missing? see the global setup's warning)`;
  if (testableNativeBuilds().length === 0) return `${runnable[0]!.addon} is older than its sources`;
  return undefined;
}
