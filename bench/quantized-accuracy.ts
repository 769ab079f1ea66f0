// What WEIGHTS_DTYPE int8 / int4 cost in accuracy, next to f32, through the ORT engine as it
// serves (int8 activations in the quantized matmuls):
//
// - logit error against the independent PyTorch float64 reference on the committed golden
//   fixtures (worker/engine/testing/golden/): max |Δ logit| over every position, and relative
//   to the fixture's largest logit;
// - the demo model's loss (nats per byte token; the demo model is byte-level) on the recall
//   and copy probes' conversations (Jane Austen's Persuasion, never trained on, as filler
//   between chat turns), and how often its greedy next token agrees with f32's.
//
//   npx tsx bench/quantized-accuracy.ts [--model models/demo] [--probes N]
//
// The demo model's recall tables per dtype come from tools/eval/recall.ts --weights-dtype.
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openCheckpoint } from '../worker/model/checkpoint.ts';
import { loadChatTemplate } from '../worker/model/chat-template.ts';
import { loadTokenizer } from '../worker/model/tokenizer.ts';
import { OrtEngine } from '../worker/engine/ort/ort-engine.ts';
import type { WeightsDtype } from '../worker/engine/ort/quantize.ts';
import { GOLDEN_CASES } from '../worker/engine/testing/golden/cases.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/demo' },
    probes: { type: 'string', default: '60' },
  },
});
const here = dirname(fileURLToPath(import.meta.url));
const DTYPES: WeightsDtype[] = ['f32', 'int8', 'int4'];
const cacheDir = await mkdtemp(join(tmpdir(), 'ms-qacc-'));

// ---- golden fixtures --------------------------------------------------------------------------

interface Golden {
  tokens: number[];
  full: number[][];
}
console.log('logits vs the PyTorch float64 reference (every position of the golden prompts):\n');
console.log(`| golden case | ${DTYPES.map((d) => `${d}: max |Δ| (relative)`).join(' | ')} |\n|---|${DTYPES.map(() => '---').join('|')}|`);
const goldenRows: Record<string, Record<string, number>> = {};
for (const c of GOLDEN_CASES.filter((g) => g.position === undefined)) {
  const dir = join(here, '..', 'worker', 'engine', 'testing', 'golden', c.name);
  const golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8')) as Golden;
  const ckpt = await openCheckpoint(dir);
  const scale = golden.full.flat().reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const cells: string[] = [];
  goldenRows[c.name] = {};
  for (const dtype of DTYPES) {
    const engine = await OrtEngine.load(ckpt, { cacheDir, intraOpThreads: 1, weightsDtype: dtype });
    const out = await engine.prefill(await engine.newState(), Int32Array.from(golden.tokens), { allLogits: true });
    await engine.close();
    let err = 0;
    golden.full.forEach((row, r) => row.forEach((v, i) => (err = Math.max(err, Math.abs(v - out.data[r * engine.model.vocabRows + i]!)))));
    goldenRows[c.name]![dtype] = err;
    cells.push(`${err.toExponential(1)} (${Number(((100 * err) / scale).toPrecision(2))} %)`);
  }
  console.log(`| ${c.name} (largest logit ${scale.toFixed(1)}) | ${cells.join(' | ')} |`);
}

// ---- the demo model ----------------------------------------------------------------------------

const ProbeLine = (line: string) => JSON.parse(line) as { prompt_messages: { role: 'system' | 'user' | 'assistant'; content: string }[] };
const perFile = Number(args.probes);
const conversations = (
  await Promise.all(
    ['tools/train/recall-probes.jsonl', 'tools/train/copy-probes.jsonl'].map(async (f) =>
      (await readFile(join(here, '..', f), 'utf8'))
        .split('\n')
        .filter((l) => l.trim())
        .slice(0, perFile)
        .map(ProbeLine),
    ),
  )
).flat();
const ckpt = await openCheckpoint(args.model);
const tokenizer = await loadTokenizer(args.model, ckpt.vocabRows);
const template = await loadChatTemplate(args.model, tokenizer);
const texts = conversations.map((c) => Int32Array.from(template.encodeMessages(c.prompt_messages)));
const totalTokens = texts.reduce((n, t) => n + t.length - 1, 0);

/** Mean negative log-likelihood (nats per token) of each next token, and every position's argmax. */
async function evaluate(dtype: WeightsDtype): Promise<{ nll: number; argmax: Int32Array[] }> {
  const engine = await OrtEngine.load(ckpt, { cacheDir, weightsDtype: dtype });
  let nll = 0;
  const argmax: Int32Array[] = [];
  for (const tokens of texts) {
    const state = await engine.newState();
    const logits = await engine.prefill(state, tokens, { allLogits: true });
    engine.freeState(state);
    const V = logits.vocab;
    const best = new Int32Array(tokens.length - 1);
    for (let t = 0; t + 1 < tokens.length; t++) {
      const row = logits.data.subarray(t * V, (t + 1) * V);
      let max = -Infinity;
      let arg = 0;
      for (let i = 0; i < V; i++) if (row[i]! > max) [max, arg] = [row[i]!, i];
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp(row[i]! - max);
      nll += max + Math.log(sum) - row[tokens[t + 1]!]!;
      best[t] = arg;
    }
    argmax.push(best);
  }
  await engine.close();
  return { nll: nll / totalTokens, argmax };
}

const demo = new Map<WeightsDtype, { nll: number; argmax: Int32Array[] }>();
for (const dtype of DTYPES) demo.set(dtype, await evaluate(dtype));
const base = demo.get('f32')!;
console.log(`\nthe demo model (${args.model}) on ${texts.length} probe conversations, ${totalTokens.toLocaleString('en-US')} next-token predictions:\n`);
console.log('| weights | loss, nats per byte token | change vs f32 | greedy next token same as f32 |\n|---|---|---|---|');
for (const dtype of DTYPES) {
  const r = demo.get(dtype)!;
  let same = 0;
  r.argmax.forEach((a, i) => a.forEach((v, t) => (same += v === base.argmax[i]![t] ? 1 : 0)));
  console.log(`| ${dtype} | ${r.nll.toFixed(4)} | ${dtype === 'f32' ? '—' : `${r.nll - base.nll >= 0 ? '+' : ''}${(r.nll - base.nll).toFixed(4)} (${((100 * (r.nll - base.nll)) / base.nll).toFixed(2)} %)`} | ${((100 * same) / totalTokens).toFixed(2)} % |`);
}
console.log(
  JSON.stringify({
    bench: 'quantized-accuracy',
    golden_max_abs_logit_error: goldenRows,
    demo_nll_nats_per_token: Object.fromEntries([...demo].map(([k, v]) => [k, v.nll])),
  }),
);
await rm(cacheDir, { recursive: true, force: true });
