// Runs one of our TypeScript entry points (edge/node.ts, worker/main.ts) as a child Node
// process through tsx, and waits for the message it sends when it is ready.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

export interface ServiceProcess<M> {
  readonly child: ChildProcess;
  readonly ready: M;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL now (tests: a crash). */
  kill(): Promise<void>;
}

export class ServiceStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServiceStartError';
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

export async function startService<M extends { type: string }>(options: {
  /** Path relative to the repository root. */
  entry: string;
  env: Record<string, string | undefined>;
  readyType: M['type'];
  timeoutMs: number;
  /** Where the child's stdout/stderr go ('inherit' for npm start, 'pipe' to capture). */
  stdio?: 'inherit' | 'pipe' | 'ignore';
  onOutput?: (chunk: string) => void;
}): Promise<ServiceProcess<M>> {
  const child = fork(join(REPO_ROOT, options.entry), [], {
    cwd: REPO_ROOT,
    env: options.env as NodeJS.ProcessEnv,
    execArgv: ['--import', 'tsx'],
    stdio: options.stdio === 'inherit' ? ['ignore', 'inherit', 'inherit', 'ipc'] : ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let output = '';
  const capture = (d: Buffer) => {
    const s = d.toString();
    output = (output + s).slice(-8000);
    options.onOutput?.(s);
  };
  child.stdout?.on('data', capture);
  child.stderr?.on('data', capture);
  const ready = await new Promise<M>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new ServiceStartError(`${options.entry} was not ready within ${options.timeoutMs} ms\n${output}`));
    }, options.timeoutMs);
    child.on('message', (m: M) => {
      if (m && m.type === options.readyType) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new ServiceStartError(`${options.entry} exited (${signal ?? code}) before it was ready\n${output}`));
    });
  });
  return {
    child,
    ready,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited(child);
      clearTimeout(timer);
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited(child);
    },
  };
}
