// A real S3-speaking server for tests: moto in server mode (`python3 -m moto.server`), which
// implements conditional PUTs (If-None-Match / If-Match → 412) and ListObjectsV2 paging.
// Prerequisite: `pip install 'moto[server]'` in the python3 on PATH (preinstalled on our CI
// machines; .ci/run checks it).
import { spawn } from 'node:child_process';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from '../stack/free-port.ts';

export interface MotoServer {
  readonly endpoint: string;
  readonly port: number;
  readonly credentials: { accessKeyId: string; secretAccessKey: string };
  createBucket(name: string): Promise<void>;
  /** SIGSTOP: the server keeps its sockets (connections are accepted by the kernel) but answers nothing, as a hung server does. */
  freeze(): void;
  /** SIGCONT after freeze(): it answers again, what it received meanwhile included. */
  thaw(): void;
  stop(): Promise<void>;
}

export const MOTO_CREDENTIALS = { accessKeyId: 'testing', secretAccessKey: 'testing' };

export async function startMotoServer(): Promise<MotoServer> {
  const python = process.env['PYTHON'] ?? 'python3';
  const port = await freePort();
  const child = spawn(python, ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const endpoint = `http://127.0.0.1:${port}`;
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`moto server exited (${child.exitCode}); is moto installed? (pip install 'moto[server]')\n${output.slice(-2000)}`);
    }
    const ok = await fetch(`${endpoint}/moto-api/`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() - started > 30_000) {
      child.kill('SIGKILL');
      throw new Error(`moto server did not answer within 30 s\n${output.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: MOTO_CREDENTIALS });
  return {
    endpoint,
    port,
    credentials: MOTO_CREDENTIALS,
    async createBucket(name: string) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
    },
    freeze() {
      child.kill('SIGSTOP');
    },
    thaw() {
      child.kill('SIGCONT');
    },
    async stop() {
      client.destroy();
      // A frozen process would never handle the SIGTERM below.
      child.kill('SIGCONT');
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise<void>((r) => child.once('exit', () => r()));
      }
    },
  };
}
