// What the serving benchmarks share: a private redis-server, the edge on loopback and one
// in-process worker (ORT engine unless --engine says otherwise), a generated random model,
// percentiles, and a small client of the native API.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TurnResponse } from '../shared/api-schemas.ts';
import { sseEvents } from '../shared/sse-events.ts';
import { startRedisServer, type RedisServer } from '../stack/redis-server.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeRandomCheckpoint, type RandomCheckpointOptions } from '../worker/model/testing/random-checkpoint.ts';

export interface BenchStack {
  readonly serving: TestServing;
  readonly url: string;
  stop(): Promise<void>;
}

/** A byte-level random model in .cache/bench (generated once). */
export async function benchModel(name: string, options: RandomCheckpointOptions): Promise<string> {
  const dir = join('.cache', 'bench', name);
  if (!existsSync(join(dir, 'config.json'))) await writeRandomCheckpoint(dir, { vocabSize: 256, seed: 11, ...options });
  return dir;
}

export async function startBenchStack(modelDir: string, env: Record<string, string> = {}): Promise<BenchStack> {
  const redis: RedisServer = await startRedisServer();
  const serving = await startTestServing({
    redisUrl: redis.url,
    modelDir,
    env: { ENGINE: process.env['ENGINE'] ?? 'ort', MODEL_CACHE_DIR: '.cache/bench', LOG_LEVEL: 'error', ...env },
  });
  return {
    serving,
    url: serving.url,
    async stop() {
      await serving.stop();
      await redis.stop();
    },
  };
}

export async function createSession(url: string, id?: string): Promise<string> {
  const res = await fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(id ? { id } : {}) });
  if (res.status !== 201) throw new Error(`create session: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { id: string }).id;
}

export async function turn(url: string, session: string, body: Record<string, unknown>): Promise<TurnResponse> {
  const res = await fetch(`${url}/v1/sessions/${session}/turns`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.status !== 200) throw new Error(`turn: ${res.status} ${await res.text()}`);
  return TurnResponse.parse(await res.json());
}

/** A streamed turn: milliseconds to the first token event and to the final event, and the result. */
export async function streamedTurn(url: string, session: string, body: Record<string, unknown>): Promise<{ ttftMs: number; totalMs: number; result: TurnResponse }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/sessions/${session}/turns`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (res.status !== 200 || !res.body) throw new Error(`turn: ${res.status} ${await res.text()}`);
  let ttftMs: number | undefined;
  for await (const { event, data } of sseEvents(res.body)) {
    if (event === 'token') ttftMs ??= performance.now() - t0;
    if (event === 'error') throw new Error(`turn failed: ${data}`);
    if (event === 'done') {
      const totalMs = performance.now() - t0;
      return { ttftMs: ttftMs ?? totalMs, totalMs, result: TurnResponse.parse(JSON.parse(data)) };
    }
  }
  throw new Error('stream ended without a done event');
}

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

export function row(label: string, values: readonly number[]): string {
  return `  ${label.padEnd(44)} p50 ${fmt(percentile(values, 50)).padStart(10)}   p99 ${fmt(percentile(values, 99)).padStart(10)}`;
}

/** A streamed chat completion: milliseconds to the first content chunk and to [DONE], the text and the usage. */
export async function streamedChat(
  url: string,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
): Promise<{ ttftMs: number; totalMs: number; text: string; cachedTokens: number; promptTokens: number }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200 || !res.body) throw new Error(`chat: ${res.status} ${await res.text()}`);
  let ttftMs: number | undefined;
  let text = '';
  let usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } | undefined;
  for await (const { data } of sseEvents(res.body)) {
    if (data === '[DONE]') {
      if (!usage) throw new Error('no usage chunk');
      const totalMs = performance.now() - t0;
      return { ttftMs: ttftMs ?? totalMs, totalMs, text, cachedTokens: usage.prompt_tokens_details.cached_tokens, promptTokens: usage.prompt_tokens };
    }
    const json = JSON.parse(data);
    if (json.error) throw new Error(`chat failed: ${data}`);
    const delta = json.choices?.[0]?.delta?.content;
    if (delta) {
      ttftMs ??= performance.now() - t0;
      text += delta;
    }
    if (json.usage) usage = json.usage;
  }
  throw new Error('stream ended without [DONE]');
}

/**
 * Aggregate generation throughput (tokens/s) of one worker on a fresh stack with `env`, for
 * each number of sessions in `loads` generating `tokens` each at once (after one warm-up turn).
 */
export async function servedThroughput(modelDir: string, env: Record<string, string>, loads: readonly number[], tokens: number): Promise<number[]> {
  const stack = await startBenchStack(modelDir, { WORKER_CONCURRENCY: '16', MAX_QUEUE_DEPTH: '1000', ...env });
  try {
    const warm = await createSession(stack.url);
    await turn(stack.url, warm, { input: 'warm up', max_tokens: 8 });
    const rates: number[] = [];
    for (const sessions of loads) {
      const ids = await Promise.all(Array.from({ length: sessions }, () => createSession(stack.url)));
      const t0 = performance.now();
      const results = await Promise.all(ids.map((id, i) => turn(stack.url, id, { input: `a prompt of a few words for session ${i}`, max_tokens: tokens, temperature: 1, seed: i })));
      rates.push(results.reduce((n, r) => n + r.usage.output_tokens, 0) / ((performance.now() - t0) / 1000));
    }
    return rates;
  } finally {
    await stack.stop();
  }
}
