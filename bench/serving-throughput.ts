// Aggregate generation throughput of one worker with 1, 4 and 16 sessions generating at once
// (WORKER_CONCURRENCY 16): with continuous batching their decode steps share one batched
// engine call, so tokens/s should grow with the number of sessions.
//
//   npx tsx bench/serving-throughput.ts [--tokens 64] [--rounds 3]     (ENGINE=ort by default)
import { parseArgs } from 'node:util';
import { benchModel, createSession, startBenchStack, turn } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { tokens: { type: 'string', default: '64' }, rounds: { type: 'string', default: '3' } } });
const tokens = Number(args.tokens);
const rounds = Number(args.rounds);

const modelDir = await benchModel('serving-medium', { hiddenSize: 384, numLayers: 6, stateSize: 16 });
const stack = await startBenchStack(modelDir, { WORKER_CONCURRENCY: '16', MAX_QUEUE_DEPTH: '1000' });
try {
  const worker = stack.serving.workers[0]!;
  console.log(`serving throughput: one worker, engine ${worker.model.engine.kind}, model hidden 384 x 6 layers, ${tokens} tokens per turn, ${rounds} rounds`);
  const warm = await createSession(stack.url);
  await turn(stack.url, warm, { input: 'warm up', max_tokens: 8 });
  let base: number | undefined;
  for (const sessions of [1, 4, 16]) {
    const ids = await Promise.all(Array.from({ length: sessions }, () => createSession(stack.url)));
    const stepsBefore = worker.scheduler.stats.steps;
    const batchedBefore = worker.scheduler.stats.batchedTokens;
    const t0 = performance.now();
    let generated = 0;
    for (let r = 0; r < rounds; r++) {
      // A turn has no stop token in a random model's byte vocabulary, so each generates `tokens`.
      const results = await Promise.all(ids.map((id, i) => turn(stack.url, id, { input: `session ${i} round ${r}`, max_tokens: tokens, temperature: 1, seed: i })));
      generated += results.reduce((n, res) => n + res.usage.output_tokens, 0);
    }
    const seconds = (performance.now() - t0) / 1000;
    const rate = generated / seconds;
    base ??= rate;
    const steps = worker.scheduler.stats.steps - stepsBefore;
    const meanBatch = (worker.scheduler.stats.batchedTokens - batchedBefore) / Math.max(1, steps);
    console.log(
      `  ${String(sessions).padStart(2)} concurrent sessions: ${rate.toFixed(1).padStart(7)} tokens/s aggregate (${(rate / base).toFixed(2)}x), mean decode batch ${meanBatch.toFixed(1)}, ${generated} tokens in ${seconds.toFixed(1)} s`,
    );
  }
} finally {
  await stack.stop();
}
