// The whole stack for tests that restart it: a real S3-speaking server (moto) that outlives
// restarts, and a private redis-server, edge and worker that `restart()` stops and starts anew
// (a fresh, empty Redis: everything that must survive lives in the store). The edge keeps its
// port, so clients made before a restart reach it after, as they would a deployment's URL.
import { freePort } from '../stack/free-port.ts';
import { startRedisServer, type RedisServer } from '../stack/redis-server.ts';
import { startMotoServer, type MotoServer } from './moto-server.ts';
import { startTestServing, type TestServing } from './serving.ts';
import { writeTinyModel, type TinyModel } from './tiny-model.ts';

export interface RestartableStack {
  readonly url: string;
  readonly serving: TestServing;
  /** Stop edge, worker and Redis; start new ones on the same store. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startRestartableStack(env: Record<string, string> = {}): Promise<RestartableStack> {
  const moto: MotoServer = await startMotoServer();
  const bucket = 'states';
  await moto.createBucket(bucket);
  const model: TinyModel = await writeTinyModel();
  const port = await freePort();
  let redis: RedisServer | undefined;
  let serving: TestServing | undefined;
  const start = async () => {
    redis = await startRedisServer();
    serving = await startTestServing({
      redisUrl: redis.url,
      modelDir: model.dir,
      env: {
        STATE_STORE: `s3://${bucket}/t`,
        S3_ENDPOINT: moto.endpoint,
        S3_FORCE_PATH_STYLE: 'true',
        S3_REGION: 'us-east-1',
        PORT: String(port),
        ...env,
      },
    });
  };
  const stopRunning = async () => {
    await serving?.stop();
    await redis?.stop();
    serving = undefined;
    redis = undefined;
  };
  // The store takes credentials from the SDK's default chain, as in production.
  const saved = { id: process.env['AWS_ACCESS_KEY_ID'], secret: process.env['AWS_SECRET_ACCESS_KEY'] };
  process.env['AWS_ACCESS_KEY_ID'] = moto.credentials.accessKeyId;
  process.env['AWS_SECRET_ACCESS_KEY'] = moto.credentials.secretAccessKey;
  await start();
  return {
    get url() {
      return serving!.url;
    },
    get serving() {
      return serving!;
    },
    async restart() {
      await stopRunning();
      await start();
    },
    async stop() {
      await stopRunning();
      await model.remove();
      await moto.stop();
      for (const [name, value] of [
        ['AWS_ACCESS_KEY_ID', saved.id],
        ['AWS_SECRET_ACCESS_KEY', saved.secret],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    },
  };
}
