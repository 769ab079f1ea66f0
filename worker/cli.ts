// The `mamba-serve` command line: generate text, print logits for other implementations to
// check our numbers against, and describe a model. bin/mamba-serve.mjs runs main().
//
// Exit codes: 0 ok, 1 an error (with a code: "error [code]: message"), 2 bad arguments.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { createEngine, type EngineChoice } from './engine/create-engine.ts';
import type { Engine, Logits, StateHandle } from './engine/engine.ts';
import { generate } from './generate/generate.ts';
import { Sampler, type SamplingParams } from './generate/sampling.ts';
import { SequenceDecoder } from './generate/sequence.ts';
import { loadChatTemplate } from './model/chat-template.ts';
import { openCheckpoint } from './model/checkpoint.ts';
import { stateFloats } from './model/mamba-config.ts';
import { hubOptionsOf } from './model/hub-options.ts';
import { resolveModelDir } from './model/model-source.ts';
import { loadTokenizer } from './model/tokenizer.ts';
import { createLogger } from '../shared/logger.ts';
import { startProgress, type ProgressSink } from '../shared/progress.ts';

export const USAGE = `usage:
  mamba-serve generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
                       [--top-k K] [--seed S] [--engine auto|ort|reference] [--chat]
  mamba-serve logits   --model DIR --tokens 1,2,3 [--mode full|step] [--resume-at K]
                       [--engine auto|ort|reference]
  mamba-serve info     --model DIR

  --model       a Hugging Face Mamba checkpoint directory, or s3://bucket/prefix
                (downloaded to MODEL_CACHE_DIR, default .cache/mamba-serve)
  generate      streams the reply to stdout (a summary goes to stderr). --chat wraps the
                prompt as one user message of the model's chat template.
                Defaults: --max-tokens 256 --temperature 0.7 --top-p 0.95 --top-k 0 (0 = off);
                --temperature 0 is greedy.
  logits        prints {"logits": [[...], ...]}, one row per input token: --mode full runs one
                prefill, step one token at a time; --resume-at K runs K tokens, exports the
                state, imports it into a fresh engine and runs the rest.
  info          prints the config, parameter count, dtype and state bytes per session as JSON.`;

export class UsageError extends Error {
  override name = 'UsageError';
}

export interface CliIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
}

const COMMON = {
  model: { type: 'string' },
  engine: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, strict: true, allowPositionals: false }).values;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function number(name: string, raw: string | undefined, fallback: number, check: (v: number) => boolean, what: string): number {
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(v) || !check(v)) throw new UsageError(`--${name} must be ${what}, got "${raw}"`);
  return v;
}

const isInt = (v: number) => Number.isInteger(v);

function engineChoice(raw: string | undefined): EngineChoice {
  const choice = raw ?? 'auto';
  if (!['auto', 'ort', 'reference', 'cuda'].includes(choice)) throw new UsageError(`--engine must be auto, ort or reference, got "${choice}"`);
  return choice as EngineChoice;
}

function requireModel(model: string | undefined): string {
  if (model === undefined || model === '') throw new UsageError('--model is required');
  return model;
}

async function localModelDir(model: string, env: NodeJS.ProcessEnv): Promise<string> {
  return resolveModelDir(
    model,
    env.MODEL_CACHE_DIR || '.cache/mamba-serve',
    {
      endpoint: env.S3_ENDPOINT || undefined,
      region: env.S3_REGION || undefined,
      forcePathStyle: /^(1|true|yes)$/i.test(env.S3_FORCE_PATH_STYLE ?? ''),
    },
    hubOptionsOf({
      HF_ENDPOINT: env.HF_ENDPOINT || undefined,
      HF_TOKEN: env.HF_TOKEN || undefined,
      HF_HUB_OFFLINE: /^(1|true|yes|on)$/i.test(env.HF_HUB_OFFLINE ?? ''),
      HF_HUB_CACHE: env.HF_HUB_CACHE || undefined,
      HF_HOME: env.HF_HOME || undefined,
    }),
  );
}

async function withEngine<T>(modelDir: string, choice: EngineChoice, env: NodeJS.ProcessEnv, fn: (engine: Engine) => Promise<T>): Promise<T> {
  // Warnings only: a command's output is its data, and what the engine runs on (its info lines) is noise here.
  const { engine } = await createEngine({ modelDir, engine: choice, cacheDir: env.MODEL_CACHE_DIR || undefined, log: createLogger('engine', 'warn') });
  try {
    return await fn(engine);
  } finally {
    await engine.close();
  }
}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (error) => (error ? reject(error) : resolve()));
  });
}

const PREFILL_PIECE = 1024;

/** Absorb `tokens` into `state` in pieces, showing progress on `sink`; the number absorbed. */
async function prefillWithProgress(engine: Engine, state: StateHandle, tokens: Int32Array, sink: NodeJS.WritableStream): Promise<number> {
  if (tokens.length === 0) return 0;
  const progress = startProgress({ label: 'reading the prompt', total: tokens.length, unit: 'tokens', sink: sink as ProgressSink });
  try {
    for (let at = 0; at < tokens.length; at += PREFILL_PIECE) {
      await engine.prefill(state, tokens.subarray(at, Math.min(tokens.length, at + PREFILL_PIECE)));
      progress.update(Math.min(tokens.length, at + PREFILL_PIECE));
    }
  } finally {
    progress.finish();
  }
  return tokens.length;
}

async function cmdGenerate(args: string[], io: CliIo): Promise<void> {
  const v = parse(args, {
    prompt: { type: 'string' },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-p': { type: 'string' },
    'top-k': { type: 'string' },
    seed: { type: 'string' },
    chat: { type: 'boolean' },
  });
  const model = requireModel(v.model);
  if (v.prompt === undefined) throw new UsageError('--prompt is required');
  const maxTokens = number('max-tokens', v['max-tokens'], 256, (x) => isInt(x) && x >= 0, 'a whole number ≥ 0');
  const params: SamplingParams = {
    temperature: number('temperature', v.temperature, 0.7, (x) => x >= 0, 'a number ≥ 0'),
    topP: number('top-p', v['top-p'], 0.95, (x) => x > 0 && x <= 1, 'in (0, 1]'),
    topK: number('top-k', v['top-k'], 0, (x) => isInt(x) && x >= 0, 'a whole number ≥ 0'),
  };
  if (v.seed !== undefined) params.seed = number('seed', v.seed, 0, (x) => isInt(x) && x >= 0 && x < 2 ** 32, 'a whole number in [0, 2^32)');
  const choice = engineChoice(v.engine);

  const dir = await localModelDir(model, io.env);
  const checkpoint = await openCheckpoint(dir);
  const tokenizer = await loadTokenizer(dir, checkpoint.vocabRows);
  let prompt: number[];
  let stop: readonly string[] = [];
  let stopTokenIds: readonly number[] = [];
  if (v.chat) {
    const template = await loadChatTemplate(dir, tokenizer);
    prompt = [...template.encodeMessages([{ role: 'user', content: v.prompt }]), ...template.generationPromptIds];
    stop = template.stopStrings;
    stopTokenIds = template.stopTokenIds;
  } else {
    // A raw completion prompt is user text: special-token strings in it stay text.
    prompt = tokenizer.encode(v.prompt);
  }
  if (prompt.length === 0) throw new UsageError('--prompt is empty: the model needs at least one token to continue');

  await withEngine(dir, choice, io.env, async (engine) => {
    const decoder = new SequenceDecoder(tokenizer, new Sampler(params, tokenizer.vocabSize), { maxTokens, stop, stopTokenIds });
    const state = await engine.newState();
    const started = performance.now();
    let firstAt: number | undefined;
    // A long prompt is absorbed in pieces first, with a progress bar (shown past ~2 s), so a
    // 100k-token prompt on a CPU does not look hung; generate() then gets the last token.
    const ids = Int32Array.from(prompt);
    const absorbed = await prefillWithProgress(engine, state, ids.subarray(0, ids.length - 1), io.stderr);
    for await (const event of generate(engine, state, ids.subarray(absorbed), decoder)) {
      if (event.type === 'text') {
        firstAt ??= performance.now();
        await write(io.stdout, event.text);
      } else {
        await write(io.stdout, '\n');
        const seconds = (performance.now() - started) / 1000;
        await write(
          io.stderr,
          `[${event.finishReason}: ${event.promptTokens + absorbed} prompt + ${event.generatedTokens} generated tokens in ${seconds.toFixed(2)} s, engine ${engine.kind}]\n`,
        );
      }
    }
    engine.freeState(state);
  });
}

function parseTokens(raw: string | undefined): Int32Array {
  if (raw === undefined) throw new UsageError('--tokens is required (e.g. --tokens 1,2,3)');
  const parts = raw.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p))) throw new UsageError(`--tokens must be comma-separated token ids, got "${raw}"`);
  return Int32Array.from(parts, Number);
}

/** Runs `tokens` through `state` the chosen way; returns one logits row per token. */
async function runTokens(engine: Engine, state: StateHandle, tokens: Int32Array, mode: 'full' | 'step'): Promise<Float32Array[]> {
  if (tokens.length === 0) return [];
  const rowsOf = (l: Logits) => Array.from({ length: l.rows }, (_, r) => l.data.subarray(r * l.vocab, (r + 1) * l.vocab));
  if (mode === 'full') return rowsOf(await engine.prefill(state, tokens, { allLogits: true }));
  const rows = rowsOf(await engine.prefill(state, tokens.subarray(0, 1)));
  for (let i = 1; i < tokens.length; i++) rows.push(...rowsOf(await engine.decode([{ state, token: tokens[i]! }])));
  return rows;
}

async function cmdLogits(args: string[], io: CliIo): Promise<void> {
  const v = parse(args, { tokens: { type: 'string' }, mode: { type: 'string' }, 'resume-at': { type: 'string' } });
  const model = requireModel(v.model);
  const tokens = parseTokens(v.tokens);
  const mode = v.mode ?? 'full';
  if (mode !== 'full' && mode !== 'step') throw new UsageError(`--mode must be full or step, got "${mode}"`);
  const resumeAt = v['resume-at'] === undefined ? undefined : number('resume-at', v['resume-at'], 0, (x) => isInt(x) && x >= 0 && x <= tokens.length, `a whole number in [0, ${tokens.length}] (the number of tokens)`);
  const choice = engineChoice(v.engine);
  const dir = await localModelDir(model, io.env);

  let rows: Float32Array[];
  if (resumeAt === undefined) {
    rows = await withEngine(dir, choice, io.env, async (engine) => runTokens(engine, await engine.newState(), tokens, mode));
  } else {
    // The state crosses engines only as .mstate bytes, as it does between workers.
    let bytes!: Uint8Array;
    const head = await withEngine(dir, choice, io.env, async (engine) => {
      const state = await engine.newState();
      const out = await runTokens(engine, state, tokens.subarray(0, resumeAt), mode);
      bytes = await engine.exportState(state, { parentVersion: null, transcriptHash: null });
      return out;
    });
    const tail = await withEngine(dir, choice, io.env, async (engine) => {
      const { state } = await engine.importState(bytes);
      return runTokens(engine, state, tokens.subarray(resumeAt), mode);
    });
    rows = [...head, ...tail];
  }
  // One JSON object, written row by row (1000 positions of a 50k vocabulary would be a
  // gigabyte as one string). Floats are JSON numbers: the exact float32 values.
  await write(io.stdout, '{"logits": [');
  for (let i = 0; i < rows.length; i++) {
    const row = Array.from(rows[i]!, (x) => (Number.isFinite(x) ? String(x) : 'null')).join(',');
    await write(io.stdout, `${i === 0 ? '' : ','}[${row}]`);
  }
  await write(io.stdout, ']}\n');
}

async function cmdInfo(args: string[], io: CliIo): Promise<void> {
  const v = parse(args, {});
  const dir = await localModelDir(requireModel(v.model), io.env);
  const checkpoint = await openCheckpoint(dir);
  const { conv, ssm, attention } = stateFloats(checkpoint.config);
  const tokenizer = await loadTokenizer(dir, checkpoint.vocabRows);
  const template = await loadChatTemplate(dir, tokenizer);
  const info = {
    model_dir: dir,
    config: checkpoint.config,
    vocab_rows: checkpoint.vocabRows,
    parameter_count: checkpoint.parameterCount,
    dtype: checkpoint.dtype,
    tied_embeddings: !checkpoint.has.lmHead,
    state_bytes: 4 * (conv + ssm + attention), // fp32 .mstate tensors, per session
    fingerprint: await checkpoint.fingerprint(),
    tokenizer: { vocab_size: tokenizer.vocabSize, stop_token_ids: tokenizer.stopTokenIds },
    chat_template: { source: template.source, generation_prompt: template.generationPrompt, reply_suffix: template.replySuffix, stop_strings: template.stopStrings },
  };
  await write(io.stdout, `${JSON.stringify(info, null, 2)}\n`);
}

const COMMANDS: Record<string, (args: string[], io: CliIo) => Promise<void>> = {
  generate: cmdGenerate,
  logits: cmdLogits,
  info: cmdInfo,
};

/** Runs the CLI; resolves to the exit code. Never throws. */
export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    await write(command === undefined ? io.stderr : io.stdout, `${USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  try {
    if (!run) throw new UsageError(`unknown command "${command}"`);
    if (rest.includes('--help') || rest.includes('-h')) {
      await write(io.stdout, `${USAGE}\n`);
      return 0;
    }
    await run(rest, io);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      await write(io.stderr, `error: ${error.message}\n\n${USAGE}\n`);
      return 2;
    }
    const code = (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    if (typeof code === 'string' && /^[a-z][a-z0-9_]*$/.test(code)) {
      await write(io.stderr, `error [${code}]: ${message}\n`);
    } else {
      await write(io.stderr, `error: ${error instanceof Error && io.env.DEBUG ? error.stack : message}\n`);
    }
    return 1;
  }
}
