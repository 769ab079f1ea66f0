// The same serving path with the S3 state store (a real moto server speaking S3, path-style,
// with conditional writes): versions (and their items) land under the documented layout, and a
// fresh worker resumes from them.
import { GetObjectTaggingCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionCreated, TurnResponse } from '../shared/api-schemas.ts';
import { startMotoServer, type MotoServer } from '../test-support/moto-server.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const redis = useRedisServer();
let moto: MotoServer;
let model: TinyModel;
let serving: TestServing;
const saved = { id: process.env['AWS_ACCESS_KEY_ID'], secret: process.env['AWS_SECRET_ACCESS_KEY'] };

beforeAll(async () => {
  moto = await startMotoServer();
  await moto.createBucket('states');
  // The store takes credentials from the SDK's default chain, as in production.
  process.env['AWS_ACCESS_KEY_ID'] = moto.credentials.accessKeyId;
  process.env['AWS_SECRET_ACCESS_KEY'] = moto.credentials.secretAccessKey;
  model = await writeTinyModel();
  serving = await startTestServing({
    redisUrl: redis().url,
    modelDir: model.dir,
    env: { STATE_STORE: 's3://states/prod/v1', S3_ENDPOINT: moto.endpoint, S3_FORCE_PATH_STYLE: 'true', S3_REGION: 'us-east-1' },
  });
});
afterAll(async () => {
  await serving?.stop();
  await model?.remove();
  await moto?.stop();
  process.env['AWS_ACCESS_KEY_ID'] = saved.id;
  process.env['AWS_SECRET_ACCESS_KEY'] = saved.secret;
  if (saved.id === undefined) delete process.env['AWS_ACCESS_KEY_ID'];
  if (saved.secret === undefined) delete process.env['AWS_SECRET_ACCESS_KEY'];
});

const post = async (path: string, body: unknown) => {
  const res = await fetch(`${serving.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(res.status).toBeLessThan(300);
  return res.json();
};

describe('serving on S3', () => {
  it('stores versions under tenants/{tenant}/sessions/{session}/ and resumes from them', async () => {
    const s = SessionCreated.parse(await post('/v1/sessions', { id: 'on-s3' }));
    const t1 = TurnResponse.parse(await post(`/v1/sessions/${s.id}/turns`, { input: 'hello s3', max_tokens: 4, temperature: 0 }));
    const old = serving.workers.shift()!;
    await old.stop(0);
    await serving.addWorker();
    const t2 = TurnResponse.parse(await post(`/v1/sessions/${s.id}/turns`, { input: 'again', max_tokens: 4, temperature: 0 }));
    expect(t2.usage.cached_tokens).toBe(t1.usage.tokens_absorbed);

    const client = new S3Client({ endpoint: moto.endpoint, forcePathStyle: true, region: 'us-east-1', credentials: moto.credentials });
    const listed = await client.send(new ListObjectsV2Command({ Bucket: 'states', Prefix: 'prod/v1/' }));
    expect((listed.Contents ?? []).map((o) => o.Key).sort()).toEqual([
      // The tenant's session index (newest first: 10^13 - 1 minus the creation time in ms).
      expect.stringMatching(/^prod\/v1\/tenants\/local\/session-index\/\d{13}-on-s3$/),
      'prod/v1/tenants/local/sessions/on-s3/manifest.json',
      'prod/v1/tenants/local/sessions/on-s3/v1.items.json',
      'prod/v1/tenants/local/sessions/on-s3/v1.mstate',
      'prod/v1/tenants/local/sessions/on-s3/v2.items.json',
      'prod/v1/tenants/local/sessions/on-s3/v2.mstate',
    ]);
    // The replaced head is tagged for the deployment's retention rule; the head is not.
    const tags = async (v: number) =>
      (await client.send(new GetObjectTaggingCommand({ Bucket: 'states', Key: `prod/v1/tenants/local/sessions/on-s3/v${v}.mstate` }))).TagSet;
    expect(await tags(1)).toEqual([{ Key: 'mamba-serve:superseded', Value: 'true' }]);
    expect(await tags(2)).toEqual([]);
    client.destroy();
  });
});
