// State cartridges (docs/cartridges.md): N sessions that each start from the same ~32k-token
// corpus, either from one cartridge built once (a session is created from it, then asked a
// question) or each re-reading the documents (a fresh session whose first turn is the documents
// and the question). Prints the build, time to first token and tokens fed per session, and the
// ratio; checks that both ways answer alike (greedy), since they hold the same state.
//
// The model is a random byte-level one (hidden 128 x 4 layers, about a token a character): what
// is measured is where the time goes (prefill of the corpus vs one state load), which does not
// depend on what the model knows; the demo model has the same shape and would give the same
// figures.
//
//   npx tsx bench/cartridges.ts [--sessions 8] [--tokens 32768]     (ENGINE=ort by default)
import { parseArgs } from 'node:util';
import { SessionCreated } from '../shared/api-schemas.ts';
import { Cartridge } from '../shared/cartridges-api.ts';
import { benchModel, percentile, startBenchStack, streamedTurn } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { sessions: { type: 'string', default: '8' }, tokens: { type: 'string', default: '32768' } } });
const sessions = Number(args.sessions);
const corpusTokens = Number(args.tokens);

const modelDir = await benchModel('serving-small', { hiddenSize: 128, numLayers: 4, stateSize: 16 });
const stack = await startBenchStack(modelDir, { TURN_TIMEOUT_MS: '600000', MAX_INPUT_TOKENS_PER_TURN: String(corpusTokens * 2) });

const post = async (path: string, body: unknown) => {
  const res = await fetch(`${stack.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.status >= 300) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json();
};

// Ten documents of a company handbook, filler of the right length (its content is not the point).
const documents = Array.from({ length: 10 }, (_, d) => ({
  title: `Handbook chapter ${d + 1}`,
  text: Array.from({ length: Math.ceil(corpusTokens / 10 / 50) }, (_, s) => `Rule ${d}.${s}: requests of kind ${(d * 31 + s) % 97} go to desk ${(d + s) % 12} before noon.`)
    .join(' ')
    .slice(0, Math.floor(corpusTokens / 10) - 40),
}));
const asMessages = documents.map((d) => ({ role: 'system', content: `${d.title}\n\n${d.text}` }));
const question = (i: number) => `Question ${i}: which desk takes requests of kind 42?`;
const greedy = { max_tokens: 8, temperature: 0 };

try {
  const worker = stack.serving.workers[0]!;
  const warm = SessionCreated.parse(await post('/v1/sessions', {}));
  await streamedTurn(stack.url, warm.id, { input: 'warm up', ...greedy });

  const buildStart = performance.now();
  let cartridge = Cartridge.parse(await post('/v1/cartridges', { name: 'handbook', documents }));
  while (cartridge.status !== 'ready') {
    if (cartridge.status === 'failed') throw new Error(`build failed: ${JSON.stringify(cartridge.error)}`);
    await new Promise((r) => setTimeout(r, 100));
    cartridge = Cartridge.parse(await (await fetch(`${stack.url}/v1/cartridges/${cartridge.id}`)).json());
  }
  const buildMs = performance.now() - buildStart;
  console.log(
    `cartridges: a ${cartridge.progress.tokens_total}-token corpus (10 documents), ${sessions} sessions each way, engine ${worker.model.engine.kind}, random model hidden 128 x 4 layers (state ${worker.model.engine.model.stateBytes} B), fs store, loopback`,
  );
  console.log(`  build once: ${(buildMs / 1000).toFixed(2)} s (queued job, ${cartridge.state_bytes} B of state)`);

  const fromCartridge: { create: number; ttft: number; fed: number; source: string; output: string }[] = [];
  const reread: { ttft: number; fed: number; output: string }[] = [];
  for (let i = 0; i < sessions; i++) {
    const t0 = performance.now();
    const s = SessionCreated.parse(await post('/v1/sessions', { cartridge: cartridge.id }));
    const create = performance.now() - t0;
    const turn = await streamedTurn(stack.url, s.id, { input: question(i), ...greedy });
    fromCartridge.push({ create, ttft: create + turn.ttftMs, fed: turn.result.usage.input_tokens, source: turn.result.timings!.state_source, output: turn.result.output });

    const plain = SessionCreated.parse(await post('/v1/sessions', {}));
    const long = await streamedTurn(stack.url, plain.id, { input: [...asMessages, { role: 'user', content: question(i) }], ...greedy });
    reread.push({ ttft: long.ttftMs, fed: long.result.usage.input_tokens, output: long.result.output });
    if (long.result.output !== turn.result.output) throw new Error(`session ${i}: the cartridge's session answered "${turn.result.output}", the re-read "${long.result.output}"`);
  }
  const p50 = (v: number[]) => percentile(v, 50);
  const sum = (v: number[]) => v.reduce((a, b) => a + b, 0);
  const c = fromCartridge.map((r) => r.ttft);
  const r = reread.map((x) => x.ttft);
  console.log('  per session, to the first token of its first answer:');
  console.log(
    `    from the cartridge (create + first turn)   p50 ${p50(c).toFixed(1).padStart(8)} ms   of which create ${p50(fromCartridge.map((x) => x.create)).toFixed(1)} ms   fed ${fromCartridge[0]!.fed} tokens   state from: ${[...new Set(fromCartridge.map((x) => x.source))].join(', ')}`,
  );
  console.log(`    re-reading the documents                   p50 ${p50(r).toFixed(1).padStart(8)} ms   fed ${reread[0]!.fed} tokens`);
  console.log(`    ratio: ${(p50(r) / p50(c)).toFixed(1)}x`);
  console.log(
    `  all ${sessions} sessions: from the cartridge ${(sum(c) / 1000).toFixed(2)} s (+ the build ${(buildMs / 1000).toFixed(2)} s once = ${((sum(c) + buildMs) / 1000).toFixed(2)} s); re-reading ${(sum(r) / 1000).toFixed(2)} s; ${(sum(r) / (sum(c) + buildMs)).toFixed(1)}x with the build counted`,
  );
} finally {
  await stack.stop();
}
