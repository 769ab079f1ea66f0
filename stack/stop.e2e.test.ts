// `npm start` stops cleanly and quickly however it is told to: Ctrl-C in a terminal (SIGINT to
// the whole foreground process group: npm, node, the worker, the edge) or SIGINT/SIGTERM to the
// npm process alone (a process manager). Before, a Ctrl-C could reach the private Redis first
// (the worker then retried against it, ~33 ECONNREFUSED lines, and waited out 30 s), and a
// SIGINT to npm alone did nothing (the shell between npm and node did not pass it on).
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { REPO_ROOT } from './service-process.ts';
import { testStackEnv } from './test-stack-env.ts';

let model: TinyModel;
let dataDir: string;

beforeAll(async () => {
  model = await writeTinyModel();
  dataDir = await mkdtemp(join(tmpdir(), 'ms-stop-'));
});
afterAll(async () => {
  await model?.remove();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

async function runAndStop(target: 'group' | 'npm', signal: NodeJS.Signals, command: 'npm start' | 'mamba-serve serve' = 'npm start') {
  // A process group of its own, as a terminal gives a foreground job.
  const [file, args] = command === 'npm start' ? [npm, ['start']] : [process.execPath, [join(REPO_ROOT, 'bin', 'mamba-serve.mjs'), 'serve']];
  const child = spawn(file, args, {
    cwd: REPO_ROOT,
    env: testStackEnv(dataDir, { MODEL_DIR: model.dir, MODEL_ID: 'tiny', ENGINE: 'reference', LOG_LEVEL: 'warn' }) as NodeJS.ProcessEnv,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const started = Date.now();
  while (!/is ready at (http:\/\/\S+)/.test(output)) {
    if (Date.now() - started > 120_000 || child.exitCode !== null) throw new Error(`npm start did not get ready:\n${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const url = /is ready at (http:\/\/\S+)/.exec(output)![1]!;
  expect((await fetch(`${url}/v1/sessions`, { method: 'POST', body: '{}' })).status).toBe(201);
  // The `try:` request it prints answers, and answers again (it appends to its session).
  const tryBlock = output.slice(output.indexOf('try: curl'));
  const headers = Object.fromEntries([...tryBlock.matchAll(/-H '([^:]+): ([^']+)'/g)].map((m) => [m[1]!, m[2]!]));
  const body = /-d '([^']+)'/.exec(tryBlock)![1]!;
  for (let i = 0; i < 2; i++) {
    const res = await fetch(/curl -s (\S+)/.exec(tryBlock)![1]!, { method: 'POST', headers, body });
    expect(res.status, await res.clone().text()).toBe(200);
  }
  const redisPort = /Redis redis:\/\/127\.0\.0\.1:(\d+)/.exec(output)![1]!;

  const t0 = Date.now();
  if (target === 'group') process.kill(-child.pid!, signal);
  else process.kill(child.pid!, signal);
  const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
  const seconds = (Date.now() - t0) / 1000;
  if (code === 'timeout') process.kill(-child.pid!, 'SIGKILL');
  // Nothing of the stack is left: its Redis port no longer answers.
  const redisAlive = await fetch(`http://127.0.0.1:${redisPort}`).then(
    () => true,
    (e: Error & { cause?: { code?: string } }) => e.cause?.code !== 'ECONNREFUSED',
  );
  return { code, seconds, output, redisAlive };
}

describe('npm start stops', () => {
  const cases: [string, 'group' | 'npm', NodeJS.Signals, 'npm start' | 'mamba-serve serve'][] = [
    ['Ctrl-C (SIGINT to the foreground group)', 'group', 'SIGINT', 'npm start'],
    ['SIGINT to the npm process alone', 'npm', 'SIGINT', 'npm start'],
    ['SIGTERM to the npm process alone', 'npm', 'SIGTERM', 'npm start'],
    ['`mamba-serve serve`, Ctrl-C', 'group', 'SIGINT', 'mamba-serve serve'],
  ];
  it.each(cases)('%s: within a few seconds, with no error spam and nothing left running', async (_, target, signal, command) => {
    const r = await runAndStop(target, signal, command);
    expect(r.code, r.output).not.toBe('timeout');
    expect(r.seconds).toBeLessThan(8);
    expect(r.output).toContain('mamba-serve: stopped.');
    expect(r.output).not.toMatch(/ECONNREFUSED|Error:/);
    expect(r.redisAlive).toBe(false);
  });
});
