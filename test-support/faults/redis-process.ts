// A redis-server the fault suite can kill and start again on the same port (clients keep their
// URL and reconnect), restarting with its data or without it. "With its data" is its
// append-only file as a kill -9 leaves it (fsynced every second): what survives a crash, which
// may be a little older than what clients were told. "Without" is a new, empty server.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../stack/free-port.ts';
import { exited, pingRedis } from '../../stack/redis-server.ts';

export interface RedisProcess {
  readonly url: string;
  readonly port: number;
  /** SIGKILL now. */
  kill(): Promise<void>;
  /** Start again on the same port, from what the last one left on disk (`withData`) or empty. */
  start(options: { withData: boolean }): Promise<void>;
  stop(): Promise<void>;
}

export async function startRedisProcess(): Promise<RedisProcess> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'ms-faults-redis-'));
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--loglevel', 'warning'],
      { stdio: 'ignore' },
    );
    child = c;
    const started = Date.now();
    while (!(await pingRedis(port))) {
      if (c.exitCode !== null) throw new Error(`redis-server on port ${port} exited (${c.exitCode})`);
      if (Date.now() - started > 20_000) throw new Error(`redis-server on port ${port} did not answer within 20 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const kill = async () => {
    if (!child) return;
    child.kill('SIGKILL');
    await exited(child);
    child = undefined;
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill,
    async start({ withData }) {
      await kill();
      if (!withData) {
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
      }
      await launch();
    },
    async stop() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
