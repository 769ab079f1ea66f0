// README runs as written: every curl example, in the order written, against the local stack
// started as `npm start` starts it (the demo model), the whole sequence twice on one store (the
// examples clean up after themselves), each run with the restart "See it remember" asks for.
// Each answer must have the status its note promises (2xx when it names none) and the fields
// its `# → …` line shows; the demo model's replies shown there must be what it answers on the
// first run (greedy). The examples' `$U` is this stack's URL.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalStack, type LocalStack } from './local-stack.ts';
import { documentedKeys, hasPath, promisedStatus, readmeSteps, type ReadmeStep } from './readme-examples.ts';
import { REPO_ROOT } from './service-process.ts';
import { testStackEnv } from './test-stack-env.ts';

let dataDir: string;
let workDir: string;
let stack: LocalStack | undefined;
let steps: ReadmeStep[];
const env = () => testStackEnv(dataDir, { LOG_LEVEL: 'warn', MODEL_CACHE_DIR: join(dataDir, 'cache') });

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'ms-readme-'));
  workDir = await mkdtemp(join(tmpdir(), 'ms-readme-cwd-'));
  steps = readmeSteps(await readFile(join(REPO_ROOT, 'README.md'), 'utf8'));
  stack = await startLocalStack({ env: env(), readyTimeoutMs: 180_000 });
}, 240_000);
afterAll(async () => {
  await stack?.stop();
  await rm(dataDir, { recursive: true, force: true });
  await rm(workDir, { recursive: true, force: true });
});

function bash(script: string, vars: Record<string, string>): Promise<{ stdout: string; code: number }> {
  return new Promise((resolve) => {
    execFile('bash', ['-c', script], { cwd: workDir, env: { ...process.env, ...vars }, maxBuffer: 16 << 20, timeout: 60_000 }, (error, stdout) =>
      resolve({ stdout, code: error ? Number((error as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

/** Quoted string values the documented answer shows for these keys (the demo model's replies). */
function documentedText(documented: string, key: string): string[] {
  return [...documented.matchAll(new RegExp(`"${key}":"([^"…]*)"`, 'g'))].map((m) => m[1]!);
}

function textsOf(value: unknown, key: string): string[] {
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => (k === key && typeof v === 'string' ? [v] : textsOf(v, key)));
}

async function runReadme(run: number): Promise<string[]> {
  const problems: string[] = [];
  const vars: Record<string, string> = { U: stack!.url };
  for (const step of steps) {
    if (step.kind === 'restart') {
      await stack!.stop();
      stack = await startLocalStack({ env: env(), readyTimeoutMs: 180_000 });
      vars.U = stack.url;
      continue;
    }
    if (step.kind === 'assign') {
      if (step.name === 'U') continue; // this stack's URL, not the README's default port
      const r = await bash(`printf %s ${step.value}`, vars);
      if (r.code !== 0 || r.stdout === '' || r.stdout === 'null') problems.push(`README:${step.line}: ${step.name}=${step.value} gave "${r.stdout}"`);
      vars[step.name] = r.stdout;
      continue;
    }
    const where = `README:${step.line} (run ${run}): ${step.command}`;
    const r = await bash(step.command.replace(/^curl /, `curl -w '\\n@@status %{http_code}' `), vars);
    const at = r.stdout.lastIndexOf('\n@@status ');
    const status = at >= 0 ? Number(r.stdout.slice(at + 10)) : 0;
    const body = at >= 0 ? r.stdout.slice(0, at) : r.stdout;
    const promised = promisedStatus(step.note, step.documented);
    if (promised !== undefined ? status !== promised : status < 200 || status >= 300) {
      problems.push(`${where}: HTTP ${status}${promised ? ` (promised ${promised})` : ''}: ${body.slice(0, 300)}`);
      continue;
    }
    if (!step.documented) continue;
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      problems.push(`${where}: documented as JSON, answered ${body.slice(0, 200)}`);
      continue;
    }
    for (const key of documentedKeys(step.documented)) if (!hasPath(json, key)) problems.push(`${where}: the answer has no "${key}"`);
    if (run === 1) {
      for (const key of ['content', 'output']) {
        for (const want of documentedText(step.documented, key)) {
          if (!textsOf(json, key).includes(want)) problems.push(`${where}: README shows ${key} "${want}", the model answered ${JSON.stringify(textsOf(json, key))}`);
        }
      }
    }
  }
  return problems;
}

describe('README', () => {
  it('has curl examples, a restart among them, and the answers they show', () => {
    expect(steps.filter((s) => s.kind === 'command').length).toBeGreaterThan(20);
    expect(steps.some((s) => s.kind === 'restart')).toBe(true);
    expect(steps.filter((s) => s.kind === 'command' && s.documented).length).toBeGreaterThan(3);
  });

  it('runs as written on a fresh stack, again on the same store, each with a restart', async () => {
    expect(await runReadme(1)).toEqual([]);
    expect(await runReadme(2)).toEqual([]);
  }, 600_000);
});
