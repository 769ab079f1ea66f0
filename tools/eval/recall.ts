// Recall accuracy against distance, measured through the runtime the server uses (engine,
// tokenizer, chat template, sequence decoder), not through PyTorch.
//
//   npx tsx tools/eval/recall.ts [--model models/demo] [--probes tools/train/recall-probes.jsonl]
//                                [--engine ort] [--weights-dtype f32|int8|int4] [--max-tokens 64] [--batch 8] [--json FILE]
//
// A probe (tools/train/recall_eval.py writes them) is a conversation: a fact early on,
// about `distance_tokens` tokens of other conversation and distractor facts, then the
// question. It passes when the greedy reply contains `expected`. Probes with a `kind`
// (tools/train/copy-probes.jsonl: exact short-range copies of an 8-digit code or a misspelt
// name) are tallied by kind instead of by distance.
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { createEngine } from '../../worker/engine/create-engine.ts';
import { WEIGHTS_DTYPES, type WeightsDtype } from '../../worker/engine/ort/quantize.ts';
import type { StateHandle } from '../../worker/engine/engine.ts';
import { Sampler } from '../../worker/generate/sampling.ts';
import { SequenceDecoder } from '../../worker/generate/sequence.ts';
import { loadChatTemplate } from '../../worker/model/chat-template.ts';
import { loadTokenizer } from '../../worker/model/tokenizer.ts';

const Probe = z.object({
  distance_tokens: z.number().int().nonnegative(),
  distance_bucket: z.number().int().nonnegative().optional(),
  kind: z.string().optional(),
  fact_key: z.string(),
  expected: z.string().min(1),
  prompt_messages: z.array(z.object({ role: z.enum(['system', 'user', 'assistant']), content: z.string() })).min(1),
});
type Probe = z.infer<typeof Probe>;

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/demo' },
    probes: { type: 'string', default: 'tools/train/recall-probes.jsonl' },
    engine: { type: 'string', default: 'ort' },
    'weights-dtype': { type: 'string', default: 'f32' },
    'max-tokens': { type: 'string', default: '64' },
    batch: { type: 'string', default: '8' },
    verbose: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
});

const probes: Probe[] = (await readFile(args.probes, 'utf8'))
  .split('\n')
  .filter((line) => line.trim())
  .map((line, i) => {
    const parsed = Probe.safeParse(JSON.parse(line));
    if (!parsed.success) throw new Error(`${args.probes}:${i + 1}: ${parsed.error.message}`);
    return parsed.data;
  });

const weightsDtype = args['weights-dtype'] as WeightsDtype;
if (!WEIGHTS_DTYPES.includes(weightsDtype)) throw new Error(`--weights-dtype must be one of ${WEIGHTS_DTYPES.join(', ')}`);
const { engine, checkpoint } = await createEngine({ modelDir: args.model, engine: args.engine as 'ort' | 'reference', weightsDtype });
const tokenizer = await loadTokenizer(args.model, checkpoint.vocabRows);
const template = await loadChatTemplate(args.model, tokenizer);
const maxTokens = Number(args['max-tokens']);
const batchSize = Number(args.batch);

interface Running {
  probe: Probe;
  state: StateHandle;
  decoder: SequenceDecoder;
  next: number;
}

/** Prefill each probe alone, then decode the group's replies together in one batch. */
async function runGroup(group: Probe[]): Promise<{ probe: Probe; reply: string }[]> {
  const running: Running[] = [];
  const finished: { probe: Probe; reply: string }[] = [];
  for (const probe of group) {
    const state = await engine.newState();
    const ids = Int32Array.from([...template.encodeMessages(probe.prompt_messages), ...template.generationPromptIds]);
    const logits = await engine.prefill(state, ids);
    const decoder = new SequenceDecoder(tokenizer, new Sampler({ temperature: 0, topP: 1, topK: 0 }, tokenizer.vocabSize), {
      maxTokens,
      stop: template.stopStrings,
      stopTokenIds: template.stopTokenIds,
    });
    const step = decoder.next(logits.data);
    if (step.done) {
      finished.push({ probe, reply: decoder.text });
      engine.freeState(state);
    } else running.push({ probe, state, decoder, next: step.token });
  }
  while (running.length > 0) {
    const logits = await engine.decode(running.map((r) => ({ state: r.state, token: r.next })));
    for (let i = running.length - 1; i >= 0; i--) {
      const r = running[i]!;
      const step = r.decoder.next(logits.data.subarray(i * logits.vocab, (i + 1) * logits.vocab));
      if (step.done) {
        finished.push({ probe: r.probe, reply: r.decoder.text });
        engine.freeState(r.state);
        running.splice(i, 1);
      } else r.next = step.token;
    }
  }
  return finished;
}

const byDistance = new Map<number | string, { total: number; correct: number; tokens: number }>();
const started = performance.now();
for (let i = 0; i < probes.length; i += batchSize) {
  for (const { probe, reply } of await runGroup(probes.slice(i, i + batchSize))) {
    const key = probe.kind ?? probe.distance_bucket ?? probe.distance_tokens;
    const row = byDistance.get(key) ?? { total: 0, correct: 0, tokens: 0 };
    const ok = reply.includes(probe.expected);
    row.total++;
    row.tokens += probe.distance_tokens;
    if (ok) row.correct++;
    byDistance.set(key, row);
    if (args.verbose) console.log(`${ok ? 'ok  ' : 'MISS'} ${String(probe.distance_tokens).padStart(6)} ${probe.fact_key}: want ${JSON.stringify(probe.expected)}, got ${JSON.stringify(reply)}`);
  }
}
await engine.close();

console.log(`\nrecall through the ${engine.kind} engine (${weightsDtype} weights), model ${args.model}, ${probes.length} probes, ${((performance.now() - started) / 1000).toFixed(0)} s\n`);
console.log('| probes (distance: tokens between fact and question) | probes | recalled | accuracy |\n|---|---|---|---|');
const rows = [...byDistance].sort((a, b) => (typeof a[0] === 'number' && typeof b[0] === 'number' ? a[0] - b[0] : 0));
for (const [key, row] of rows) {
  console.log(`| ${key} (mean distance ${Math.round(row.tokens / row.total)}) | ${row.total} | ${row.correct} | ${((100 * row.correct) / row.total).toFixed(0)}% |`);
}
if (args.json) {
  const table = Object.fromEntries(rows.map(([key, row]) => [String(key), { passed: row.correct, total: row.total }]));
  await writeFile(args.json, `${JSON.stringify({ model: args.model, engine: engine.kind, weights_dtype: weightsDtype, table }, null, 1)}\n`);
}
