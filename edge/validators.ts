// Path and query validation through @hono/zod-validator, with the hook that turns its raw
// safeParse failures into our 400 shape (without a hook it answers with zod's own JSON).
import { zValidator } from '@hono/zod-validator';
import { z } from 'zod';
import { SessionId } from '../shared/api-schemas.ts';
import { validationError } from './request-body.ts';

const hook = (where: string) => (result: { success: boolean; error?: unknown }) => {
  if (!result.success) throw validationError(result.error as z.ZodError, where);
};

export const sessionParam = zValidator('param', z.object({ id: SessionId }), hook('path'));

export function queryOf<S extends z.ZodType>(schema: S) {
  return zValidator('query', schema, hook('query'));
}
