// Whether the native decode tests can run here, and if not why: they need the addon that the
// tests' global setup builds (test-support/build-native-cpu.ts) and a CPU it runs on.
import { existsSync } from 'node:fs';
import { NATIVE_CPU_ADDON, nativeCpuAddonCurrent, nativeCpuUnsupported } from '../../../native-cpu/support.ts';

export function nativeDecodeUnavailable(): string | undefined {
  const cpu = nativeCpuUnsupported();
  if (cpu) return cpu;
  if (!existsSync(NATIVE_CPU_ADDON)) return `${NATIVE_CPU_ADDON} was not built (g++ missing? see the global setup's warning)`;
  if (!nativeCpuAddonCurrent()) return `${NATIVE_CPU_ADDON} is older than its sources`;
  return undefined;
}
