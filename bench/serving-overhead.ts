// Time to first token and the per-turn overhead of edge + queue + store beyond the engine's
// own time: 200 streamed turns, one after another, on one session, over loopback HTTP.
// Overhead = client-measured turn time - (prefill + decode) as the worker measured them, so
// it holds HTTP, admission, BullMQ, the token stream, the state load and the checkpoint.
//
//   npx tsx bench/serving-overhead.ts [--turns 200] [--max-tokens 16]     (ENGINE=ort by default)
import { parseArgs } from 'node:util';
import { benchModel, createSession, row, startBenchStack, streamedTurn } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { turns: { type: 'string', default: '200' }, 'max-tokens': { type: 'string', default: '16' } } });
const turns = Number(args.turns);
const maxTokens = Number(args['max-tokens']);

const modelDir = await benchModel('serving-small', { hiddenSize: 128, numLayers: 4, stateSize: 16 });
const stack = await startBenchStack(modelDir, { WORKER_CONCURRENCY: '4' });
try {
  const session = await createSession(stack.url);
  // Warm up (first ORT runs, connections).
  for (let i = 0; i < 5; i++) await streamedTurn(stack.url, session, { input: `warm up ${i}`, max_tokens: maxTokens, temperature: 0 });
  const ttft: number[] = [];
  const total: number[] = [];
  const engine: number[] = [];
  const overhead: number[] = [];
  const ttftOverhead: number[] = [];
  const checkpoint: number[] = [];
  const queue: number[] = [];
  for (let i = 0; i < turns; i++) {
    const { ttftMs, totalMs, result } = await streamedTurn(stack.url, session, { input: `message number ${i}`, max_tokens: maxTokens, temperature: 0 });
    const t = result.timings!;
    ttft.push(ttftMs);
    total.push(totalMs);
    engine.push(t.prefill_ms + t.decode_ms);
    overhead.push(totalMs - t.prefill_ms - t.decode_ms);
    // The engine's share of the first token: the prefill (sampling the first token is in decode, ~0).
    ttftOverhead.push(ttftMs - t.prefill_ms);
    checkpoint.push(t.checkpoint_ms);
    queue.push(t.queue_ms);
  }
  const worker = stack.serving.workers[0]!;
  console.log(`serving overhead: ${turns} streamed turns on one session, ${maxTokens} tokens each, engine ${worker.model.engine.kind}, model hidden 128 x 4 layers, state ${worker.model.engine.model.stateBytes} B, fs store, loopback`);
  console.log(row('time to first token', ttft));
  console.log(row('  of which not prefill (edge+queue+load)', ttftOverhead));
  console.log(row('turn, client-measured', total));
  console.log(row('  engine (prefill + decode)', engine));
  console.log(row('  overhead (edge + queue + store)', overhead));
  console.log(row('    queue wait', queue));
  console.log(row('    checkpoint (export + write + head)', checkpoint));
} finally {
  await stack.stop();
}
