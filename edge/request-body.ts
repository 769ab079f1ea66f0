// Reading a JSON request body: size (413, also enforced by bodyLimit while streaming in),
// strict UTF-8 (400 invalid_utf8: a replacement character must never reach the tokenizer),
// JSON syntax (400 invalid_json), then the route's zod schema (400 invalid_request with every
// issue listed). Any Content-Type is accepted, so `curl -d` works without -H.
import type { Context } from 'hono';
import type { z } from 'zod';
import { ApiError } from '../shared/errors.ts';

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

export function zodIssues(error: z.ZodError): Array<{ path: string; message: string }> {
  return error.issues.map((i) => ({ path: i.path.join('.') || '(body)', message: i.message }));
}

/** The 400 every validation failure answers, whichever validator found it. */
export function validationError(error: z.ZodError, where: string): ApiError {
  const issues = zodIssues(error);
  const first = issues[0];
  return new ApiError('invalid_request', `invalid ${where}${first ? `: ${first.path}: ${first.message}` : ''}`, { details: issues });
}

export async function readJsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  const bytes = new Uint8Array(await c.req.arrayBuffer());
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw new ApiError('invalid_utf8', 'request body is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = text.trim() === '' ? undefined : JSON.parse(text);
  } catch (e) {
    throw new ApiError('invalid_json', `request body is not valid JSON: ${(e as Error).message}`);
  }
  if (json === undefined) json = {};
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw validationError(parsed.error, 'request body');
  return parsed.data;
}
