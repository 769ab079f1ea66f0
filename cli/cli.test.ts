// The CLI as people use it, against a real server (edge, BullMQ on a real Redis, a worker on a
// tiny model): chat through stdin with streamed replies, every sessions command, --json for
// scripts, and errors that are one line with the server's code.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionList } from '../shared/api-schemas.ts';
import { readMStateHeader } from '../shared/mstate.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';
import { freePort } from '../stack/free-port.ts';
import { main } from './main.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;
let dir: string;

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir });
  dir = await mkdtemp(join(tmpdir(), 'ms-cli-'));
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function run(args: string[], stdinLines: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (append: (s: string) => void) => new Writable({ write: (chunk, _enc, cb) => (append(String(chunk)), cb()) });
  const code = await main(args, {
    stdout: sink((s) => (stdout += s)),
    stderr: sink((s) => (stderr += s)),
    stdin: Readable.from(stdinLines.map((l) => `${l}\n`)),
    env: { MAMBA_SERVE_URL: serving.url },
  });
  return { code, stdout, stderr };
}

describe('mamba-serve chat', () => {
  it('makes a session, streams a reply per line, and continues it later by id', async () => {
    const first = await run(['chat', '--max-tokens', '5', '--temperature', '0'], ['hello there', '/info', 'and again']);
    expect(first.code, first.stderr).toBe(0);
    const id = /session (\S+) \(new/.exec(first.stderr)![1]!;
    expect(first.stderr).toMatch(/\[v1 · \d+ tokens · \d+ remembered\]/);
    expect(first.stderr).toMatch(new RegExp(`${id}: version 1, 2 versions`));
    expect(first.stderr).toMatch(/\[v2 · /);
    expect(first.stdout.trim().split('\n')).toHaveLength(2); // two replies

    const later = await run(['chat', id, '--max-tokens', '3'], ['one more']);
    expect(later.stderr).toMatch(new RegExp(`session ${id}: version 2, \\d+ tokens remembered`));
    expect(later.stderr).toMatch(/\[v3 · /);
  });

  it('a named session that does not exist yet is created under that name', async () => {
    const r = await run(['chat', 'named-one', '--max-tokens', '2'], ['hi']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/session named-one \(new\)/);
  });
});

describe('mamba-serve sessions', () => {
  it('ls, show, versions, fork, export, import, rm', async () => {
    await run(['chat', 'cli-s', '--max-tokens', '3', '--temperature', '0'], ['first', 'second']);
    const ls = await run(['sessions', 'ls']);
    expect(ls.code).toBe(0);
    expect(ls.stdout.split('\n')[0]).toMatch(/^ID\s+MODEL\s+VERSION\s+TOKENS\s+UPDATED\s+METADATA$/);
    expect(ls.stdout).toMatch(/^cli-s\s+tiny\s+2\s/m);
    const json = SessionList.parse(JSON.parse((await run(['sessions', 'ls', '--json', '--all'])).stdout));
    expect(json.data.map((s) => s.id)).toContain('cli-s');

    expect((await run(['sessions', 'show', 'cli-s'])).stdout).toMatch(/head version\s+2/);
    expect((await run(['sessions', 'fork', 'cli-s', '--version', '1', '--to', 'cli-fork'])).stdout).toMatch(/forked cli-s at v1 into cli-fork/);
    await run(['chat', 'cli-fork', '--max-tokens', '2'], ['branch']);
    const tree = (await run(['sessions', 'versions', 'cli-fork'])).stdout.trimEnd().split('\n');
    // The fork's own history: its first version (from cli-s v1), then the turn under it.
    expect(tree[0]).toMatch(/^v0\s+created/);
    expect(tree.at(-1)).toMatch(/^\s+v\d+ \(head\)\s+turn/);

    const file = join(dir, 'cli-s.mstate');
    expect((await run(['sessions', 'export', 'cli-s', '-o', file])).stdout).toMatch(/wrote .*cli-s\.mstate \(.*, cli-s v2\)/);
    expect(readMStateHeader(new Uint8Array(await readFile(file))).header.tokens_absorbed).toBeGreaterThan(0);
    const imported = await run(['sessions', 'import', file, '--id', 'cli-copy']);
    expect(imported.stdout).toMatch(/imported .* into cli-copy \(v1, [\d,]+ tokens\)/);
    expect((await run(['sessions', 'show', 'cli-copy', '--json'])).stdout).toMatch(/"imported_from": "cli-s\.mstate"/);

    const gone = await run(['sessions', 'rm', 'cli-copy', 'cli-fork']);
    expect(gone.stdout).toMatch(/deleted cli-copy \(\d+ versions\)\ndeleted cli-fork/);
  });

  it('errors are one line with the server code (exit 1); bad arguments show the usage (exit 2)', async () => {
    const missing = await run(['sessions', 'show', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('error [session_not_found]: session nope not found\n');
    const closed = `http://127.0.0.1:${await freePort()}`; // nothing listens there
    const nowhere = await run(['sessions', 'ls', '--url', closed]);
    expect(nowhere.code).toBe(1);
    expect(nowhere.stderr).toMatch(/^error \[unreachable\]: cannot reach http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\); is `mamba-serve serve` \(or npm start\) running\?/);
    expect(nowhere.stderr.trim().split('\n')).toHaveLength(1);
    expect((await run(['sessions', 'ls', '--url', closed, '--debug'])).stderr).toMatch(/\n\s+at /);
    for (const args of [['sessions'], ['sessions', 'frob'], ['sessions', 'show'], ['sessions', 'ls', '--limit', 'x'], ['chat', 'a', 'b'], ['serve', 'x']]) {
      const r = await run(args);
      expect(r.code, JSON.stringify(args)).toBe(2);
      expect(r.stderr).toContain('usage:');
    }
  });

  it('the bin runs them (exports to stdout with -o -)', async () => {
    const bin = resolve(import.meta.dirname, '../bin/mamba-serve.mjs');
    const out = await new Promise<Buffer>((done, fail) =>
      execFile(process.execPath, [bin, 'sessions', 'export', 'cli-s', '-o', '-', '--url', serving.url], { encoding: 'buffer', maxBuffer: 64 << 20 }, (e, stdout) => (e ? fail(e) : done(stdout))),
    );
    expect(readMStateHeader(new Uint8Array(out)).header.layout.num_layers).toBe(2);
    expect((await stat(join(dir, 'cli-s.mstate'))).size).toBe(out.length);
  });
});
