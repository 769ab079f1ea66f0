// The worker process: `tsx worker/main.ts` (the container's entry, and the local stack's).
// SIGTERM/SIGINT stop it gracefully within SHUTDOWN_GRACE_MS.
import { pathToFileURL } from 'node:url';
import { parseEnv, WorkerConfigSchema, type WorkerConfig } from '../shared/config.ts';
import { startWorker, type RunningWorker } from './serve.ts';

async function main(): Promise<void> {
  let config: WorkerConfig;
  try {
    config = parseEnv(WorkerConfigSchema, process.env);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(2);
  }
  let worker: RunningWorker;
  try {
    worker = await startWorker(config);
  } catch (e) {
    process.stderr.write(`worker: ${(e as Error).message}\n`);
    process.exit(1);
  }
  if (process.send) process.send({ type: 'worker-ready', id: worker.id, model: worker.model.id, engine: worker.model.engine.kind });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    // The grace period plus a margin for releasing turns and closing connections.
    setTimeout(() => process.exit(1), config.SHUTDOWN_GRACE_MS + 15_000).unref();
    worker.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) void main();
