// In-process serving for integration tests: a real edge on a loopback port and real workers
// (tiny model, reference engine unless ENGINE says otherwise) against a real Redis and a
// state store in a temp directory (or the S3 server given).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EdgeConfigSchema, parseEnv, WorkerConfigSchema, type EdgeConfig, type WorkerConfig } from '../shared/config.ts';
import { createLogger } from '../shared/logger.ts';
import { startNodeEdge, type RunningEdge } from '../edge/node.ts';
import { startWorker, type RunningWorker } from '../worker/serve.ts';

export interface TestServing {
  readonly edge: RunningEdge;
  readonly url: string;
  readonly env: Record<string, string>;
  readonly workers: RunningWorker[];
  addWorker(extraEnv?: Record<string, string>): Promise<RunningWorker>;
  stop(): Promise<void>;
}

const quiet = () => createLogger('test', (process.env['TEST_LOG_LEVEL'] as 'debug' | undefined) ?? 'error');

export async function startTestServing(options: {
  redisUrl: string;
  modelDir: string;
  env?: Record<string, string>;
  workers?: number;
}): Promise<TestServing> {
  const dataDir = await mkdtemp(join(tmpdir(), 'ms-data-'));
  const env: Record<string, string> = {
    REDIS_URL: options.redisUrl,
    REDIS_PREFIX: `t${Math.random().toString(36).slice(2, 10)}`,
    STATE_STORE: `file:${dataDir}`,
    MODEL_DIR: options.modelDir,
    MODEL_ID: 'tiny',
    ENGINE: process.env['TEST_ENGINE'] ?? 'reference',
    PORT: '0',
    WORKER_CONCURRENCY: '4',
    LOG_LEVEL: 'error',
    ...options.env,
  };
  let edge: RunningEdge;
  try {
    const edgeConfig: EdgeConfig = parseEnv(EdgeConfigSchema, env);
    edge = await startNodeEdge(edgeConfig);
  } catch (e) {
    await rm(dataDir, { recursive: true, force: true });
    throw e;
  }
  const workers: RunningWorker[] = [];
  const addWorker = async (extraEnv: Record<string, string> = {}) => {
    const config: WorkerConfig = parseEnv(WorkerConfigSchema, { ...env, WORKER_ID: `w${workers.length + 1}`, ...extraEnv });
    const w = await startWorker(config, { log: quiet() });
    workers.push(w);
    return w;
  };
  for (let i = 0; i < (options.workers ?? 1); i++) await addWorker();
  return {
    edge,
    url: edge.url,
    env,
    workers,
    addWorker,
    async stop() {
      await Promise.all(workers.map((w) => w.stop(0)));
      await edge.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
