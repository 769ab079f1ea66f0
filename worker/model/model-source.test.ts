// Against a real S3-speaking server (moto), on a free port of its own.
import { DeleteObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMotoServer, type MotoServer } from '../../test-support/moto-server.ts';
import { openCheckpoint } from './checkpoint.ts';
import { ModelError } from './errors.ts';
import { parseS3Url, resolveModelDir, type S3SourceOptions } from './model-source.ts';
import { writeRandomCheckpoint } from './testing/random-checkpoint.ts';

let moto: MotoServer;
let client: S3Client;
let root: string;
let local: string;
let opts: S3SourceOptions;

async function upload(bucket: string, key: string, body: Uint8Array | string): Promise<void> {
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
}

async function uploadDir(dir: string, bucket: string, prefix: string): Promise<void> {
  for (const name of await readdir(dir)) await upload(bucket, `${prefix}/${name}`, await readFile(join(dir, name)));
}

beforeAll(async () => {
  moto = await startMotoServer();
  client = new S3Client({ endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: moto.credentials });
  opts = { endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: moto.credentials };
  root = await mkdtemp(join(tmpdir(), 'src-'));
  local = join(root, 'local-model');
  await writeRandomCheckpoint(local, { hiddenSize: 16, numLayers: 1, vocabSize: 264, shards: 2 });
  await writeFile(join(local, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|end|>' }));
  await moto.createBucket('models');
  await uploadDir(local, 'models', 'team/tiny');
  await upload('models', 'team/tiny/README.md', 'not a model file');
  await upload('models', 'team/tiny/nested/config.json', '{}');
}, 60_000);
afterAll(async () => {
  client?.destroy();
  await moto?.stop();
  await rm(root, { recursive: true, force: true });
});

async function mtimes(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const name of await readdir(dir)) out[name] = (await stat(join(dir, name))).mtimeMs;
  return out;
}

describe('resolveModelDir', () => {
  it('returns a local path unchanged', async () => {
    expect(await resolveModelDir('models/demo', join(root, 'cache'))).toBe('models/demo');
  });

  it('parses s3 URLs', () => {
    expect(parseS3Url('s3://my-bucket/a/b/')).toEqual({ bucket: 'my-bucket', prefix: 'a/b' });
    expect(parseS3Url('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(parseS3Url('s3://Bad_Bucket/x')).toBeUndefined();
  });

  it('downloads the model files of an s3 prefix into the cache and the checkpoint opens', async () => {
    const cache = join(root, 'cache1');
    const dir = await resolveModelDir('s3://models/team/tiny', cache, opts);
    expect(dir).toBe(join(cache, 'models', 'models', 'team', 'tiny'));
    const files = (await readdir(dir)).filter((n) => !n.startsWith('.')).sort();
    expect(files).toEqual((await readdir(local)).sort()); // README.md and nested/ are not model files
    const [remote, mine] = await Promise.all([openCheckpoint(dir), openCheckpoint(local)]);
    expect(await remote.fingerprint()).toBe(await mine.fingerprint());
  });

  it('skips files already cached with the same size and ETag, re-fetches changed ones', async () => {
    const cache = join(root, 'cache2');
    const dir = await resolveModelDir('s3://models/team/tiny', cache, opts);
    const before = await mtimes(dir);
    await new Promise((r) => setTimeout(r, 20));
    await resolveModelDir('s3://models/team/tiny', cache, opts);
    const after = await mtimes(dir);
    for (const name of Object.keys(before)) if (!name.startsWith('.')) expect(after[name]).toBe(before[name]);

    // A local file damaged (wrong size) is fetched again.
    await writeFile(join(dir, 'config.json'), '{}');
    await resolveModelDir('s3://models/team/tiny', cache, opts);
    expect(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')).model_type).toBe('mamba');

    // A file changed in S3 (new ETag) is fetched again; no temp files are left behind.
    const tok = JSON.stringify({ eos_token: '<|endoftext|>' });
    await upload('models', 'team/tiny/tokenizer_config.json', tok);
    await resolveModelDir('s3://models/team/tiny', cache, opts);
    expect(await readFile(join(dir, 'tokenizer_config.json'), 'utf8')).toBe(tok);
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
    await upload('models', 'team/tiny/tokenizer_config.json', JSON.stringify({ eos_token: '<|end|>' }));
  });

  it('removes cached files the prefix no longer has', async () => {
    await moto.createBucket('swap');
    const a = join(root, 'swap-a');
    await writeRandomCheckpoint(a, { hiddenSize: 16, numLayers: 1, vocabSize: 264 });
    await uploadDir(a, 'swap', 'm');
    const cache = join(root, 'cache3');
    const dir = await resolveModelDir('s3://swap/m', cache, opts);
    expect(await readdir(dir)).toContain('model.safetensors');
    // Re-published sharded: the old single file must go, or the loader would see both.
    await client.send(new DeleteObjectCommand({ Bucket: 'swap', Key: 'm/model.safetensors' }));
    const b = join(root, 'swap-b');
    await writeRandomCheckpoint(b, { hiddenSize: 16, numLayers: 1, vocabSize: 264, shards: 2 });
    await uploadDir(b, 'swap', 'm');
    await resolveModelDir('s3://swap/m', cache, opts);
    expect(await readdir(dir)).not.toContain('model.safetensors');
    expect(await (await openCheckpoint(dir)).fingerprint()).toBe(await (await openCheckpoint(b)).fingerprint());
  });

  it('a prefix without config.json, a missing bucket, or an unreachable server is a coded error', async () => {
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (e) {
        expect(e).toBeInstanceOf(ModelError);
        return `${(e as ModelError).code} ${(e as Error).message}`;
      }
      throw new Error('expected an error');
    };
    expect(await code(resolveModelDir('s3://models/nothing-here', join(root, 'c4'), opts))).toMatch(/^model_not_found s3:\/\/models\/nothing-here: no config\.json/);
    expect(await code(resolveModelDir('s3://no-such-bucket/x', join(root, 'c4'), opts))).toMatch(/^model_not_found s3:\/\/no-such-bucket\/x/);
    expect(await code(resolveModelDir('s3://models/../etc', join(root, 'c4'), opts))).toMatch(/^model_not_found .*"\.\."/);
    const down = { ...opts, endpoint: 'http://127.0.0.1:9' }; // discard port: nothing listens
    expect(await code(resolveModelDir('s3://models/team/tiny', join(root, 'c4'), down))).toMatch(/^model_download_failed s3:\/\/models\/team\/tiny: listing the prefix failed/);
  });
});
