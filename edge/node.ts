// The edge as a Node HTTP server (@hono/node-server): the local stack and container
// deployments. Without API_KEYS it serves without authentication, so it binds loopback only
// and refuses any other HOST.
import { serve, type ServerType } from '@hono/node-server';
import type { Server } from 'node:http';
import { pathToFileURL } from 'node:url';
import { ConfigError, EdgeConfigSchema, parseEnv, type EdgeConfig } from '../shared/config.ts';
import { createLogger } from '../shared/logger.ts';
import { createApp } from './app.ts';
import { answerRefusedRequests } from './client-error.ts';
import { createEdgeDeps, type EdgeDeps } from './deps.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export interface RunningEdge {
  readonly url: string;
  readonly port: number;
  readonly deps: EdgeDeps;
  close(): Promise<void>;
}

export async function startNodeEdge(config: EdgeConfig): Promise<RunningEdge> {
  const log = createLogger('edge', config.LOG_LEVEL);
  const host = config.HOST ?? (config.API_KEYS ? '0.0.0.0' : '127.0.0.1');
  if (!config.API_KEYS && !LOOPBACK.has(host)) {
    throw new ConfigError(`HOST=${host} without API_KEYS would serve every session to anyone on the network: set API_KEYS (key:tenant,…) or bind loopback`);
  }
  if (!config.API_KEYS) {
    log.warn('API_KEYS is not set: NO AUTHENTICATION. Listening on loopback only; every request acts as tenant "local".');
  }
  const deps = createEdgeDeps(config, { log });
  const app = createApp(deps);
  const server: ServerType = await new Promise((resolve) => {
    const s = serve({ fetch: app.fetch, port: config.PORT, hostname: host }, () => resolve(s));
  });
  answerRefusedRequests(server as Server);
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.PORT;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shownHost === '0.0.0.0' ? '127.0.0.1' : shownHost}:${port}`,
    port,
    deps,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Streaming responses hold connections open; they end by their own deadlines, but shutdown should not wait for them.
        (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
      });
      await deps.close();
    },
  };
}

async function main(): Promise<void> {
  let config: EdgeConfig;
  try {
    config = parseEnv(EdgeConfigSchema, process.env);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(2);
  }
  let edge: RunningEdge;
  try {
    edge = await startNodeEdge(config);
  } catch (e) {
    process.stderr.write(`edge: ${(e as Error).message}\n`);
    process.exit(e instanceof ConfigError ? 2 : 1);
  }
  process.stderr.write(JSON.stringify({ t: new Date().toISOString(), level: 'info', component: 'edge', msg: 'listening', url: edge.url }) + '\n');
  // Machine-readable line for whoever started us (the local stack waits for it).
  if (process.send) process.send({ type: 'edge-ready', url: edge.url, port: edge.port });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    edge.close().then(() => process.exit(0), () => process.exit(1));
    setTimeout(() => process.exit(1), 5_000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) void main();
