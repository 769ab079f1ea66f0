// TurnService.follow against a real Redis and real BullMQ jobs, driven by hand (a manual
// BullMQ worker and a TurnStreamWriter in place of the worker process), so the moment a job
// moves from active to completed can be placed exactly.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker, type Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgeConfigSchema, parseEnv } from '../shared/config.ts';
import type { TurnJob, TurnResult } from '../shared/jobs.ts';
import { createLogger } from '../shared/logger.ts';
import { TurnStreamWriter } from '../shared/turn-stream.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { createEdgeDeps, type EdgeDeps } from './deps.ts';
import { TurnService, type TurnOutput } from './turn-service.ts';

const redis = useRedisServer();
const MODEL = 'tiny';
let deps: EdgeDeps;
let dataDir: string;
let worker: Worker<TurnJob, TurnResult>;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'ms-turn-service-'));
  const config = parseEnv(EdgeConfigSchema, { REDIS_URL: redis().url, REDIS_PREFIX: 'ts', STATE_STORE: `file:${dataDir}` });
  deps = createEdgeDeps(config, { log: createLogger('test', 'error') });
  // No processor: jobs are taken and completed by the test (BullMQ's manual processing).
  worker = new Worker<TurnJob, TurnResult>(deps.keys.turnQueue(MODEL), null, {
    connection: deps.redis.duplicate({ maxRetriesPerRequest: null }),
    prefix: deps.keys.bullPrefix,
  });
});
afterAll(async () => {
  await worker?.close();
  await deps?.close();
  await rm(dataDir, { recursive: true, force: true });
});

function resultOf(turnId: string, output: string): TurnResult {
  return {
    turn_id: turnId,
    session: 's1',
    version: 1,
    base_version: 0,
    output,
    finish_reason: 'length',
    usage: { input_tokens: 3, output_tokens: 3, cached_tokens: 0, tokens_absorbed: 6 },
  };
}

/** A turn taken by the (manual) worker whose events are all in its stream, still `active` in BullMQ. */
async function streamedButActiveTurn(turnId: string): Promise<{ job: Job<TurnJob, TurnResult>; token: string; result: TurnResult }> {
  const now = Date.now();
  await deps.queues.of(MODEL).add(
    'turn',
    {
      turn_id: turnId,
      tenant: 't',
      session: 's1',
      model: MODEL,
      kind: 'turn',
      base: { kind: 'head', if_version: null },
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
      sampling: { temperature: 0, top_p: 1, top_k: 0, seed: 1 },
      stop: [],
      deadline_ms: now + 30_000,
      owns_turn_slot: false,
      enqueued_at: now,
    },
    { jobId: turnId },
  );
  const token = `tok-${turnId}`;
  const job = (await worker.getNextJob(token, { block: false })) as Job<TurnJob, TurnResult>;
  expect(job.id).toBe(turnId);
  const stream = new TurnStreamWriter(deps.redis, { stream: deps.keys.turnStream(turnId), owner: deps.keys.turnStreamOwner(turnId) }, 60_000, 'a0');
  await stream.claim();
  for (const text of ['a', 'b', 'c']) await stream.token(text, [text.charCodeAt(0)]);
  const result = resultOf(turnId, 'abc');
  await stream.append({ type: 'done', result });
  return { job, token, result };
}

async function collect(gen: AsyncGenerator<TurnOutput>): Promise<TurnOutput[]> {
  const out: TurnOutput[] = [];
  for await (const o of gen) out.push(o);
  return out;
}

describe('following a turn', () => {
  it('replays from the stream when the job completes between reading it and reading its state', async () => {
    const { job, token, result } = await streamedButActiveTurn('race-1');
    const turns = new TurnService(deps);
    const all = await collect(turns.follow({ turnId: 'race-1', model: MODEL, deadlineMs: Date.now() + 10_000, replayed: true }));
    expect(all.map((o) => o.type)).toEqual(['text', 'text', 'text', 'done']);

    // The worker reports the job done to BullMQ just after the edge's first look at the job
    // (whatever it reads first sees it active) and before its next: the window a client
    // resuming right after `done` falls into.
    const queue = deps.queues.of(MODEL);
    const originals = { getJob: queue.getJob, getJobState: queue.getJobState, turnQueuesGetJob: deps.queues.getJob };
    let completed = false;
    const completeAfter = <A extends unknown[], R>(read: (...args: A) => Promise<R>) =>
      async (...args: A): Promise<R> => {
        const value = await read(...args);
        if (!completed) {
          completed = true;
          await job.moveToCompleted(result, token, false);
        }
        return value;
      };
    queue.getJob = completeAfter(originals.getJob.bind(queue));
    queue.getJobState = completeAfter(originals.getJobState.bind(queue));
    deps.queues.getJob = completeAfter(originals.turnQueuesGetJob.bind(deps.queues));
    try {
      const rest = await collect(turns.follow({ turnId: 'race-1', model: MODEL, deadlineMs: Date.now() + 10_000, replayed: true }, { afterChars: Number(all[1]!.id) }));
      expect(rest.map((o) => o.id)).toEqual(all.slice(2).map((o) => o.id));
      expect(rest.at(-1)).toMatchObject({ type: 'done', result });
    } finally {
      Object.assign(queue, { getJob: originals.getJob, getJobState: originals.getJobState });
      deps.queues.getJob = originals.turnQueuesGetJob;
    }
    expect(completed).toBe(true);
    expect(await job.getState()).toBe('completed');
  });

  it('replays a completed turn from its stream with exact ids, and from its stored result once the stream is gone', async () => {
    const { job, token, result } = await streamedButActiveTurn('done-1');
    await job.moveToCompleted(result, token, false);
    const turns = new TurnService(deps);
    const turn = { turnId: 'done-1', model: MODEL, deadlineMs: Date.now() + 10_000, replayed: true };
    const all = await collect(turns.follow(turn));
    expect(all.map((o) => (o.type === 'text' ? o.text : o.type))).toEqual(['a', 'b', 'c', 'done']);
    const rest = await collect(turns.follow(turn, { afterChars: Number(all[0]!.id) }));
    expect(rest.map((o) => o.id)).toEqual(all.slice(1).map((o) => o.id));

    await deps.redis.del(deps.keys.turnStream('done-1'));
    expect(await collect(turns.follow(turn))).toEqual([
      { type: 'text', text: 'abc', id: '3' },
      { type: 'done', result, id: '3' },
    ]);
    // Ids count the characters sent, so a resume is exact whichever way the turn is replayed.
    expect(await collect(turns.follow(turn, { afterChars: 2 }))).toEqual([
      { type: 'text', text: 'c', id: '3' },
      { type: 'done', result, id: '3' },
    ]);
  });
});
