// A private redis-server per test file (started in beforeAll, stopped in afterAll), never the
// shared 6379. Usage: `const redis = useRedisServer();` then `redis().url` inside tests.
import { afterAll, beforeAll } from 'vitest';
import { startRedisServer, type RedisServer } from '../stack/redis-server.ts';

export function useRedisServer(): () => RedisServer {
  let server: RedisServer | undefined;
  beforeAll(async () => {
    server = await startRedisServer();
  });
  afterAll(async () => {
    await server?.stop();
  });
  return () => {
    if (!server) throw new Error('redis-server is not started (call useRedisServer() at the top of the test file)');
    return server;
  };
}
