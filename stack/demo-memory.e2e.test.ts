// The point of the system, end to end through the HTTP API with the bundled demo model:
// a session is told a fact; the worker is restarted (the state must come back from the
// store); several turns of other conversation follow; the question is asked; the greedy
// answer contains the fact.
//
// The acceptance check for the bundled demo models: models/demo (the default) and
// models/demo-hybrid (the same with a sliding-window attention layer; docs/demo-model.md has
// both recall tables). Greedy decoding makes it deterministic.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_HYBRID_MODEL_DIR, DEMO_MODEL_DIR } from './demo-model.ts';
import { startLocalStack, type LocalStack } from './local-stack.ts';
import { testStackEnv } from './test-stack-env.ts';
import { REPO_ROOT } from './service-process.ts';

describe.each([
  { dir: DEMO_MODEL_DIR, id: 'demo' },
  { dir: DEMO_HYBRID_MODEL_DIR, id: 'demo-hybrid' },
])('the bundled $id model', ({ dir, id }) => {
let dataDir: string;
let stack: LocalStack;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'ms-demo-memory-'));
  stack = await startLocalStack({
    env: testStackEnv(dataDir, {
      MODEL_DIR: join(REPO_ROOT, dir),
      MODEL_ID: id,
      // No hot-state cache: every turn after the restart reads its state from the store.
      STATE_CACHE_BYTES: '0',
      SHUTDOWN_GRACE_MS: '5000',
      LOG_LEVEL: 'warn',
    }),
    readyTimeoutMs: 180_000,
  });
}, 240_000);

afterAll(async () => {
  await stack?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

async function post(path: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(`${stack.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await res.json()) as Record<string, unknown>;
  expect(res.status, JSON.stringify(json)).toBeLessThan(300);
  return json;
}

const turn = async (session: string, input: string) =>
  String((await post(`/v1/sessions/${session}/turns`, { input, max_tokens: 48, temperature: 0 })).output);

describe('the demo model remembers across a restart', () => {
  it('a fact told before the worker restarts is recalled after other conversation', async () => {
    await post('/v1/sessions', { id: 'memory' });
    expect(await turn('memory', 'My locker code is 4812.')).toContain('4812'); // the acknowledgement restates it

    // A new worker process: the old one's memory is gone, only the store has the state.
    await stack.worker.stop();
    stack.worker = await stack.startWorker();

    await turn('memory', 'The meeting moved to Tuesday.');
    await turn('memory', 'My dog is called Biscuit.');
    await turn('memory', 'Please continue: It was a bright cold day in April, and the clocks were striking');
    await turn('memory', 'Thank you. My favourite colour is green.');
    const answer = await turn('memory', 'What is my locker code?');
    expect(answer).toContain('4812');
  }, 180_000);
});
});
