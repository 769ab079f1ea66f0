// Run by native-kernels.test.ts in a child process: load an int8 engine on two threads with
// ORT_NATIVE_KERNELS as given, prefill and decode once, say whether ONNX Runtime's library is
// mapped into the process (/proc/self/maps), close the engine and exit: only a fresh process
// shows what an engine alone loads, and that it closes without taking the process down.
import { readFileSync } from 'node:fs';
import { openCheckpoint } from '../../../model/checkpoint.ts';
import { OrtEngine } from '../ort-engine.ts';
import type { NativeKernelsSetting } from '../native-kernels.ts';

const [dir, cacheDir, setting] = process.argv.slice(2);
const engine = await OrtEngine.load(await openCheckpoint(dir!), {
  cacheDir: cacheDir!,
  intraOpThreads: 2,
  weightsDtype: 'int8',
  nativeKernels: setting as NativeKernelsSetting,
  log: { info: () => {}, warn: () => {} },
});
const state = await engine.newState();
await engine.prefill(state, Int32Array.of(1, 2, 3));
const logits = await engine.decode([{ state, token: 4 }]);
const onnxruntimeMapped = readFileSync('/proc/self/maps', 'utf8').includes('libonnxruntime');
await engine.close();
console.log(JSON.stringify({ onnxruntimeMapped, logitsFinite: logits.data.every(Number.isFinite) }));
