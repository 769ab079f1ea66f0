// The Lambda entry through hono's streamHandle, with the Lambda runtime's global stubbed
// (the only thing a real server cannot give a test): a Function URL event in, a streamed
// response out, against a real Redis, store and worker.
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;
type Handler = (event: unknown, stream: PassThrough, context: unknown) => Promise<void>;
let handler: Handler;
let metadata: { statusCode?: number; headers?: Record<string, string> } = {};
const KEY = 'lambda-key-123';
const saved = { ...process.env };

beforeAll(async () => {
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir });
  vi.stubGlobal('awslambda', {
    streamifyResponse: (fn: Handler) => fn,
    HttpResponseStream: {
      from: (stream: PassThrough, meta: typeof metadata) => {
        metadata = meta;
        return stream;
      },
    },
  });
  Object.assign(process.env, { ...serving.env, API_KEYS: `${KEY}:lambda-tenant`, PORT: '' });
  handler = (await import('./lambda.ts')).handler as unknown as Handler;
});
afterAll(async () => {
  vi.unstubAllGlobals();
  process.env = saved;
  await serving?.stop();
  await model?.remove();
});

async function invoke(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  metadata = {};
  await handler(
    {
      version: '2.0',
      rawPath: path,
      rawQueryString: '',
      headers: { host: 'lambda.example', ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      requestContext: { http: { method, path, sourceIp: '127.0.0.1', protocol: 'HTTP/1.1', userAgent: 'test' }, domainName: 'lambda.example', requestId: 'r1', stage: '$default' },
      body: body === undefined ? undefined : JSON.stringify(body),
      isBase64Encoded: false,
    },
    stream,
    {},
  );
  return { status: metadata.statusCode ?? 0, headers: metadata.headers ?? {}, body: Buffer.concat(chunks).toString() };
}

describe('edge/lambda.ts', () => {
  it('authenticates with the configured keys', async () => {
    const denied = await invoke('GET', '/v1/models');
    expect(denied.status).toBe(401);
    expect(JSON.parse(denied.body).error.code).toBe('unauthorized');
    const ok = await invoke('GET', '/v1/models', undefined, { authorization: `Bearer ${KEY}` });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body).data[0].id).toBe('tiny');
  });

  it('streams a turn as server-sent events', async () => {
    const auth = { authorization: `Bearer ${KEY}` };
    expect((await invoke('POST', '/v1/sessions', { id: 'via-lambda' }, auth)).status).toBe(201);
    const res = await invoke('POST', '/v1/sessions/via-lambda/turns', { input: 'hi', max_tokens: 5, stream: true }, auth);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/event-stream/);
    expect(res.body).toMatch(/event: token/);
    const done = /event: done\ndata: (.*)\n/.exec(res.body);
    expect(JSON.parse(done![1]!)).toMatchObject({ session_id: 'via-lambda', version: 1 });
  });
});
