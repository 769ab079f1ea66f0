// The environment an e2e test starts the local stack with: the parent's, minus what would
// make the stack use something outside the test (a shared Redis, auth keys), plus a port
// and a cache and store of the test's own under dataDir.
import { join } from 'node:path';

export function testStackEnv(dataDir: string, overrides: Record<string, string>): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env };
  delete env['REDIS_URL'];
  delete env['API_KEYS'];
  return {
    ...env,
    PORT: '0',
    MODEL_CACHE_DIR: join(dataDir, 'cache'),
    STATE_STORE: `file:${join(dataDir, 'store')}`,
    ...overrides,
  };
}
