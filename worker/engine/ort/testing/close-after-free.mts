// Run by ort-engine.test.ts in a child process: load, free a state, close, ten times, with nothing
// else keeping the event loop alive. A close() that leaves its thread unref'd lets the process
// exit in the middle of `await close()` (exit code 13): only a fresh process shows that.
import { openCheckpoint } from '../../../model/checkpoint.ts';
import { OrtEngine } from '../ort-engine.ts';

const [dir, cacheDir] = process.argv.slice(2);
for (let round = 0; round < 10; round++) {
  // Quiet about what it runs on (f32 on the native kernels where built); warnings fail the test.
  const log = { info: () => {}, warn: (msg: string, fields?: Record<string, unknown>) => console.error(msg, fields) };
  const engine = await OrtEngine.load(await openCheckpoint(dir!), { cacheDir: cacheDir!, intraOpThreads: 1, log });
  const state = await engine.newState();
  await engine.prefill(state, Int32Array.of(1, 2, 3));
  engine.freeState(state);
  await engine.close();
}
console.log('closed cleanly');
