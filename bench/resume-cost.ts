// Resume cost of a session that has absorbed 100 tokens vs one that has absorbed 100k: the
// state is fixed-size, so loading it from the store and continuing should cost the same.
// The hot-state cache is off (STATE_CACHE_BYTES=0), so every turn resumes from the store.
//
//   npx tsx bench/resume-cost.ts [--turns 20] [--long 100000]     (ENGINE=ort by default)
import { parseArgs } from 'node:util';
import { benchModel, createSession, row, startBenchStack, turn } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { turns: { type: 'string', default: '20' }, long: { type: 'string', default: '100000' } } });
const turns = Number(args.turns);
const longTokens = Number(args.long);

const modelDir = await benchModel('serving-medium', { hiddenSize: 384, numLayers: 6, stateSize: 16 });
const stack = await startBenchStack(modelDir, {
  STATE_CACHE_BYTES: '0',
  MAX_INPUT_TOKENS_PER_TURN: String(longTokens + 1000),
  TURN_TIMEOUT_MS: '1800000',
  PREFILL_CHUNK_TOKENS: '4096',
});
try {
  const worker = stack.serving.workers[0]!;
  // Byte-level model: one token per ASCII character. The text is filler; its length is the point.
  const filler = (n: number) => 'the quick brown fox jumps over the lazy dog. '.repeat(Math.ceil(n / 45)).slice(0, n);
  const shortSession = await createSession(stack.url);
  const longSession = await createSession(stack.url);
  const t0 = performance.now();
  const a = await turn(stack.url, shortSession, { input: filler(80), max_tokens: 1 });
  const b = await turn(stack.url, longSession, { input: filler(longTokens), max_tokens: 1 });
  console.log(
    `resume cost: engine ${worker.model.engine.kind}, model hidden 384 x 6 layers, state ${worker.model.engine.model.stateBytes} B; sessions at ${a.usage.tokens_absorbed} and ${b.usage.tokens_absorbed} tokens absorbed (built in ${((performance.now() - t0) / 1000).toFixed(1)} s); ${turns} one-token turns each, hot cache off`,
  );
  for (const [label, session] of [
    [`${a.usage.tokens_absorbed} tokens absorbed`, shortSession],
    [`${b.usage.tokens_absorbed} tokens absorbed`, longSession],
  ] as const) {
    const load: number[] = [];
    const total: number[] = [];
    for (let i = 0; i < turns; i++) {
      const t = performance.now();
      const r = await turn(stack.url, session, { input: 'ok', max_tokens: 1 });
      total.push(performance.now() - t);
      load.push(r.timings!.load_ms);
      if (r.timings!.state_source !== 'store') throw new Error(`expected a resume from the store, got ${r.timings!.state_source}`);
    }
    console.log(`  ${label}:`);
    console.log(row('    state load from the store', load));
    console.log(row('    whole one-token turn', total));
  }
} finally {
  await stack.stop();
}
