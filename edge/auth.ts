// Bearer API keys → tenant. Every /v1 route runs behind this; the tenant scopes every session
// id, so another tenant's session is indistinguishable from a missing one (404).
import type { MiddlewareHandler } from 'hono';
import { ApiError } from '../shared/errors.ts';
import { LOCAL_TENANT } from './deps.ts';

export type EdgeEnv = { Variables: { tenant: string } };

export function authenticate(apiKeys: ReadonlyMap<string, string> | undefined): MiddlewareHandler<EdgeEnv> {
  return async (c, next) => {
    if (!apiKeys) {
      // No keys configured: the local stack, listening on loopback only (edge/node.ts enforces it).
      c.set('tenant', LOCAL_TENANT);
      return next();
    }
    const header = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const tenant = m ? apiKeys.get(m[1]!) : undefined;
    if (!tenant) {
      c.header('WWW-Authenticate', 'Bearer');
      throw new ApiError('unauthorized', m ? 'invalid API key' : 'missing API key: send "Authorization: Bearer <key>"');
    }
    c.set('tenant', tenant);
    return next();
  };
}
