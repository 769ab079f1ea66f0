// Starts a private redis-server from PATH on a free loopback port: the local stack uses it
// when REDIS_URL is unset, the tests always (never the shared 6379). Nothing is persisted.
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { freePort } from './free-port.ts';

export interface RedisServer {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export class RedisServerMissingError extends Error {
  readonly code = 'redis_server_missing';
  constructor() {
    super(
      'redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; ' +
        'macOS: `brew install redis`) or point REDIS_URL at a running Redis (>= 6.2).',
    );
    this.name = 'RedisServerMissingError';
  }
}

/** Whether a Redis answers PING on this loopback port (within 500 ms). */
export function pingRedis(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.on('error', () => done(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

/** Resolves once the child has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

export interface RedisServerOptions {
  readonly binary?: string;
  /**
   * Run it in a process group of its own, so that Ctrl-C in a terminal (SIGINT to the whole
   * foreground group) does not stop it before the services that use it have stopped: they
   * would then retry against a dead server (ECONNREFUSED spam) and wait out their grace time.
   * The owner stops it last. (A hard kill of the owner leaves it running.)
   */
  readonly ownProcessGroup?: boolean;
}

export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const binary = options.binary ?? 'redis-server';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = spawn(
      binary,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning', '--daemonize', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: options.ownProcessGroup === true },
    );
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    const spawnError = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
      child.once('error', (e) => resolve(e));
      child.once('spawn', () => resolve(null));
    });
    if (spawnError) {
      if (spawnError.code === 'ENOENT') throw new RedisServerMissingError();
      throw spawnError;
    }
    const started = Date.now();
    while (Date.now() - started < 10_000 && child.exitCode === null) {
      if (await pingRedis(port)) {
        return {
          url: `redis://127.0.0.1:${port}`,
          port,
          async stop() {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
            await exited(child);
          },
        };
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGKILL');
    await exited(child);
    if (!/Address already in use/i.test(output) && attempt === 4) throw new Error(`redis-server did not start: ${output.trim()}`);
  }
  throw new Error('redis-server did not start: no free port after 5 attempts');
}
