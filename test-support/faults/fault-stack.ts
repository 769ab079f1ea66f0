// The whole system as separate processes the fault suite can hurt with real signals: moto
// (the S3 store) behind a TCP proxy, a redis-server that can be killed and restarted with or
// without its data, the edge, and N workers that a supervisor starts again whenever one dies
// (killed from outside, or by its own crash points). Every process keeps its port across
// restarts, as a deployment's services keep their addresses.
import { freePort } from '../../stack/free-port.ts';
import { startService, type ServiceProcess } from '../../stack/service-process.ts';
import { startMotoServer, type MotoServer } from '../moto-server.ts';
import { writeTinyModel, type TinyModel } from '../tiny-model.ts';
import { startRedisProcess, type RedisProcess } from './redis-process.ts';
import { startTcpProxy, type TcpProxy } from './tcp-proxy.ts';

export const TENANT_KEYS = { load: 'fault-key-load', fuzz: 'fault-key-fuzz' } as const;
export const TENANTS = { load: 'load', fuzz: 'fuzz' } as const;
export const BUCKET = 'states';
export const PREFIX = 'f';

export interface FaultStackOptions {
  readonly workers: number;
  /** FAULT_CRASH_POINTS of every worker (worker/fault-points.ts). */
  readonly crashPoints?: string;
  /** Extra environment for edge and workers (timeouts). */
  readonly env?: Record<string, string>;
}

export interface FaultStack {
  readonly url: string;
  readonly redis: RedisProcess;
  readonly moto: MotoServer;
  readonly proxy: TcpProxy;
  readonly env: Record<string, string>;
  /** Worker processes that died without being asked to (killed from outside or by a crash point). */
  readonly workerDeaths: number;
  killWorker(): Promise<boolean>;
  killEdge(): Promise<void>;
  startEdge(): Promise<void>;
  /** Replace every worker by one with these crash points (undefined: none), and wait until they are up. */
  replaceWorkers(crashPoints: string | undefined): Promise<void>;
  /** The last lines the processes wrote (for a failed run's report). */
  output(): string;
  stop(): Promise<void>;
}

export async function startFaultStack(options: FaultStackOptions): Promise<FaultStack> {
  const moto = await startMotoServer();
  await moto.createBucket(BUCKET);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: moto.port });
  const redis = await startRedisProcess();
  const model: TinyModel = await writeTinyModel();
  const port = await freePort();
  let log = '';
  const onOutput = (chunk: string) => {
    log = (log + chunk).slice(-40_000);
  };
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    REDIS_URL: redis.url,
    REDIS_PREFIX: 'ms',
    STATE_STORE: `s3://${BUCKET}/${PREFIX}`,
    S3_ENDPOINT: `http://127.0.0.1:${proxy.port}`,
    S3_FORCE_PATH_STYLE: 'true',
    S3_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: moto.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: moto.credentials.secretAccessKey,
    MODEL_DIR: model.dir,
    MODEL_ID: 'tiny',
    ENGINE: 'reference',
    PORT: String(port),
    HOST: '127.0.0.1',
    API_KEYS: `${TENANT_KEYS.load}:${TENANTS.load},${TENANT_KEYS.fuzz}:${TENANTS.fuzz}`,
    LOG_LEVEL: 'error',
    // Faults are noticed in seconds, not the production half-minutes.
    QUEUE_LOCK_MS: '2000',
    LEASE_TTL_MS: '2000',
    WORKER_STALE_MS: '3000',
    STORE_TIMEOUT_MS: '1500',
    TURN_TIMEOUT_MS: '20000',
    TURN_BACKOFF_MS: '200',
    SHUTDOWN_GRACE_MS: '0',
    SSE_KEEPALIVE_MS: '0',
    WORKER_CONCURRENCY: '4',
    ...options.env,
  };
  delete env['REDIS_PASSWORD'];

  let crashPoints = options.crashPoints;
  let stopping = false;
  let deaths = 0;
  let spawned = 0;
  const workers = new Set<ServiceProcess<{ type: 'worker-ready' }>>();
  const startWorker = async (): Promise<void> => {
    const w = await startService<{ type: 'worker-ready' }>({
      entry: 'worker/main.ts',
      env: { ...env, WORKER_ID: `fw-${++spawned}`, ...(crashPoints ? { FAULT_CRASH_POINTS: crashPoints } : {}) },
      readyType: 'worker-ready',
      timeoutMs: 120_000,
      onOutput,
    });
    workers.add(w);
    w.child.once('exit', () => {
      workers.delete(w);
      if (stopping) return;
      deaths++;
      // The supervisor (ECS, systemd) starts a replacement after a moment.
      const respawn = () => {
        if (!stopping) void startWorker().catch((e: unknown) => onOutput(`worker restart failed: ${String(e)}\n`));
      };
      setTimeout(respawn, 300 + Math.random() * 700).unref();
    });
  };
  for (let i = 0; i < options.workers; i++) await startWorker();

  let edge: ServiceProcess<{ type: 'edge-ready'; url: string }> | undefined;
  const startEdge = async () => {
    edge = await startService<{ type: 'edge-ready'; url: string }>({ entry: 'edge/node.ts', env, readyType: 'edge-ready', timeoutMs: 60_000, onOutput });
  };
  await startEdge();

  return {
    url: `http://127.0.0.1:${port}`,
    redis,
    moto,
    proxy,
    env,
    get workerDeaths() {
      return deaths;
    },
    async killWorker() {
      const alive = [...workers];
      const victim = alive[Math.floor(Math.random() * alive.length)];
      if (!victim) return false;
      await victim.kill();
      return true;
    },
    async killEdge() {
      await edge?.kill();
      edge = undefined;
    },
    startEdge,
    async replaceWorkers(spec) {
      crashPoints = spec;
      const old = [...workers];
      stopping = true; // the old ones' exits are not deaths to replace
      await Promise.all(old.map((w) => w.kill()));
      stopping = false;
      for (let i = 0; i < options.workers; i++) await startWorker();
    },
    output: () => log,
    async stop() {
      stopping = true;
      await edge?.kill();
      await Promise.all([...workers].map((w) => w.kill()));
      await redis.stop();
      moto.thaw();
      await proxy.close();
      await moto.stop();
      await model.remove();
    },
  };
}
