// The whole system on one machine: Redis (REDIS_URL, or a private redis-server from PATH),
// one worker process and one edge process, the state store under ./data unless STATE_STORE
// says otherwise. `npm start` runs it; the end-to-end tests start it the same way.
import { join, resolve } from 'node:path';
import { EdgeConfigSchema, parseEnv, WorkerConfigSchema } from '../shared/config.ts';
import { demoModelDir } from './demo-model.ts';
import { startRedisServer, type RedisServer } from './redis-server.ts';
import { REPO_ROOT, startService, type ServiceProcess } from './service-process.ts';

export interface LocalStack {
  readonly url: string;
  readonly redisUrl: string;
  readonly modelId: string;
  readonly engine: string;
  readonly randomModel: boolean;
  readonly env: Record<string, string | undefined>;
  worker: ServiceProcess<WorkerReady>;
  readonly edge: ServiceProcess<EdgeReady>;
  /** Start another worker process with the stack's environment (tests: after killing one). */
  startWorker(extraEnv?: Record<string, string>): Promise<ServiceProcess<WorkerReady>>;
  stop(): Promise<void>;
}

interface WorkerReady {
  type: 'worker-ready';
  id: string;
  model: string;
  engine: string;
}
interface EdgeReady {
  type: 'edge-ready';
  url: string;
  port: number;
}

export interface LocalStackOptions {
  readonly env?: Record<string, string | undefined>;
  readonly stdio?: 'inherit' | 'pipe';
  readonly onOutput?: (chunk: string) => void;
  /** The first start builds the ONNX graph of the model: allow for it. */
  readonly readyTimeoutMs?: number;
  /** Keep the private Redis out of the terminal's Ctrl-C (npm start): it is stopped last, after the services. */
  readonly redisOwnProcessGroup?: boolean;
}

/** The local stack's default grace for in-flight turns on stop (a deployment's default is 30 s). */
export const LOCAL_SHUTDOWN_GRACE_MS = 3000;

export async function startLocalStack(options: LocalStackOptions = {}): Promise<LocalStack> {
  const base = { ...(options.env ?? process.env) };
  const cacheDir = resolve(REPO_ROOT, base['MODEL_CACHE_DIR'] || '.cache/mamba-serve');
  let redis: RedisServer | undefined;
  const started: Array<{ stop(): Promise<void> }> = [];
  try {
    let redisUrl = base['REDIS_URL'];
    if (!redisUrl) {
      redis = await startRedisServer({ ownProcessGroup: options.redisOwnProcessGroup === true });
      redisUrl = redis.url;
    }
    let modelDir = base['MODEL_DIR'];
    let randomModel = false;
    let modelId = base['MODEL_ID'];
    if (!modelDir) {
      const demo = await demoModelDir(REPO_ROOT, cacheDir);
      modelDir = demo.dir;
      randomModel = demo.random;
      modelId ??= demo.random ? 'demo-random-untrained' : 'demo';
    }
    const env: Record<string, string | undefined> = {
      ...base,
      REDIS_URL: redisUrl,
      STATE_STORE: base['STATE_STORE'] || `file:${join(REPO_ROOT, 'data')}`,
      MODEL_DIR: modelDir,
      MODEL_CACHE_DIR: cacheDir,
      ...(modelId ? { MODEL_ID: modelId } : {}),
      PORT: base['PORT'] || '8787',
      // One local worker serves everything: it is the default model of every new session.
      WORKER_CONCURRENCY: base['WORKER_CONCURRENCY'] || '8',
      // Ctrl-C should stop the stack in seconds: in-flight turns get this long to finish, then
      // they are released to the queue (durably: the next start runs them from their session's
      // last version). A deployment's workers keep the longer default.
      SHUTDOWN_GRACE_MS: base['SHUTDOWN_GRACE_MS'] || String(LOCAL_SHUTDOWN_GRACE_MS),
    };
    // Fail here, with the variable named, rather than in a child's log.
    parseEnv(EdgeConfigSchema, env);
    parseEnv(WorkerConfigSchema, env);
    const timeoutMs = options.readyTimeoutMs ?? 600_000;
    const stdio = options.stdio ?? 'pipe';
    const startWorker = (extra: Record<string, string> = {}) =>
      startService<WorkerReady>({
        entry: 'worker/main.ts',
        env: { ...env, ...extra },
        readyType: 'worker-ready',
        timeoutMs,
        stdio,
        ...(options.onOutput ? { onOutput: options.onOutput } : {}),
      });
    const worker = await startWorker();
    started.push(worker);
    const edge = await startService<EdgeReady>({
      entry: 'edge/node.ts',
      env,
      readyType: 'edge-ready',
      timeoutMs: 60_000,
      stdio,
      ...(options.onOutput ? { onOutput: options.onOutput } : {}),
    });
    started.push(edge);
    const extraWorkers: ServiceProcess<WorkerReady>[] = [];
    const stack: LocalStack = {
      url: edge.ready.url,
      redisUrl,
      modelId: worker.ready.model,
      engine: worker.ready.engine,
      randomModel,
      env,
      worker,
      edge,
      async startWorker(extraEnv = {}) {
        const w = await startWorker(extraEnv);
        extraWorkers.push(w);
        return w;
      },
      async stop() {
        await edge.stop();
        // The worker's own grace, then a little to release what is left, before SIGKILL.
        const grace = Number(env['SHUTDOWN_GRACE_MS']) + 5000;
        await Promise.all([stack.worker, ...extraWorkers].map((w) => w.stop(grace)));
        await redis?.stop();
      },
    };
    return stack;
  } catch (e) {
    await Promise.all(started.map((s) => s.stop().catch(() => {})));
    await redis?.stop();
    throw e;
  }
}
