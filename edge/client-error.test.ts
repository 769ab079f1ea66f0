// Requests Node's HTTP parser refuses (client-error.ts), over real TCP on loopback: the client
// reads the answer and the connection ends cleanly, even while it is still uploading, and on a
// keep-alive connection that already carried a response.
import { fork } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { answerRefusedRequests } from './client-error.ts';

const LONG_PATH = `/${'y'.repeat(70_000)}`; // past Node's 16 KiB of request line + headers

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function listen(drainMs?: number): Promise<number> {
  server = createServer((_req, res) => res.end('ok'));
  answerRefusedRequests(server, drainMs);
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', () => resolve()));
  return (server.address() as AddressInfo).port;
}

interface Exchange {
  /** Everything the server sent. */
  received: string;
  /** How the connection ended: 'end' (the server closed in order) or the error that cut it. */
  ended: string;
  ms: number;
}

/**
 * Send `first` (if any) and read its answer, then `head`, then keep uploading `uploadBytes` of
 * body in 64 KiB chunks (or forever with Infinity) while reading whatever comes back.
 */
function exchange(port: number, head: string, uploadBytes: number, first?: string): Promise<Exchange> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = connect(port, '127.0.0.1');
    let received = '';
    let sent = 0;
    let done = false;
    const finish = (ended: string) => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ received, ended, ms: Date.now() - started });
    };
    const chunk = Buffer.alloc(65_536, 'x');
    const upload = () => {
      socket.write(head);
      const pump = () => {
        while (!done && sent < uploadBytes) {
          sent += chunk.length;
          if (!socket.write(chunk)) return void socket.once('drain', pump);
        }
      };
      pump();
    };
    socket.on('data', (d) => {
      received += d.toString('latin1');
      if (first && received.includes('\r\n\r\nok') && !received.includes('431')) {
        const wasFirst = first;
        first = undefined;
        if (wasFirst) upload();
      }
    });
    socket.on('end', () => finish('end'));
    socket.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? err.message));
    socket.on('connect', () => (first ? socket.write(first) : upload()));
  });
}

/** fetch's answers to `tries` POSTs of a 70 KB path and a 9 MB body, to a server in another process. */
async function uploadsPastTheHeaderLimit(tries: number, env: Record<string, string> = {}): Promise<string[]> {
  const child = fork(new URL('../test-support/refused-requests-server.ts', import.meta.url), { execArgv: ['--import', 'tsx'], env: { ...process.env, ...env } });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m) => resolve(m as number));
      child.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    });
    const body = 'x'.repeat(9_000_000);
    const answers: string[] = [];
    for (let i = 0; i < tries; i++) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}${LONG_PATH}`, { method: 'POST', body });
        await res.arrayBuffer();
        answers.push(String(res.status));
      } catch (e) {
        answers.push(`no answer: ${String((e as Error).cause ?? e)}`);
      }
    }
    return answers;
  } finally {
    child.kill();
  }
}

describe('answerRefusedRequests', () => {
  it("every client uploading past the header limit reads its 431 (a server in another process; with Node's own handling most lose it)", async () => {
    expect(await uploadsPastTheHeaderLimit(10)).toEqual(Array.from({ length: 10 }, () => '431'));
  });

  it('answers 431 to headers past 16 KiB while the client is still uploading a body, and the connection ends in order', async () => {
    const port = await listen();
    const head = `POST ${LONG_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: ${8 << 20}\r\n\r\n`;
    const result = await exchange(port, head, 8 << 20);
    expect(result.received).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    expect(result.received).toMatch(/Connection: close/i);
    expect(result.ended).toBe('end');
  });

  it('answers 431 on a keep-alive connection that already carried a response', async () => {
    const port = await listen();
    const result = await exchange(port, `GET ${LONG_PATH} HTTP/1.1\r\nHost: x\r\n\r\n`, 0, 'GET /first HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(result.received).toMatch(/^HTTP\/1\.1 200 OK[\s\S]*\r\n\r\nok/);
    expect(result.received).toMatch(/HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    expect(result.ended).toBe('end');
  });

  it('answers 400 to a malformed request line', async () => {
    const port = await listen();
    const result = await exchange(port, 'NOT HTTP AT ALL\r\n\r\n', 0);
    expect(result.received).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(result.ended).toBe('end');
  });

  it('cuts a refused client that keeps sending after the drain time', async () => {
    const port = await listen(300);
    const result = await exchange(port, `POST ${LONG_PATH} HTTP/1.1\r\nHost: x\r\n\r\n`, Infinity);
    expect(result.received).toMatch(/^HTTP\/1\.1 431 /);
    expect(result.ms).toBeLessThan(5_000);
  });

  it('leaves ordinary requests alone', async () => {
    const port = await listen();
    const res = await fetch(`http://127.0.0.1:${port}/fine`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('ok');
  });
});
