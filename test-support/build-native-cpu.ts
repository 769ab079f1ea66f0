// Vitest global setup: builds the ORT engine's native kernels' addon (`npm run build:cpu`)
// before the tests, where this machine can, so `npm test` tests the native kernels and not only
// ONNX Runtime's. Where it cannot (neither AVX-512 VNNI nor AVX2, not Linux x86-64, no g++), the
// native kernels' tests skip and say why (worker/engine/ort/testing/native-availability.ts).
import { buildNativeCpu } from '../worker/native-cpu/build.ts';
import { nativeCpuUnsupported } from '../worker/native-cpu/support.ts';

export default function setup(): void {
  if (nativeCpuUnsupported()) return;
  try {
    buildNativeCpu();
  } catch (err) {
    // The tests that need the addon skip, with this reason, rather than failing every run on a
    // machine without a compiler.
    console.warn(`native kernels' addon not built: ${err instanceof Error ? err.message : String(err)}`);
  }
}
