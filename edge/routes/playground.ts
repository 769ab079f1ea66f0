// GET /: the playground page (edge/playground/page.ts), when PLAYGROUND is on (the default
// locally; the AWS stack turns it on with the `playground` context key). The page is a
// client of the public API from the same origin; its Content-Security-Policy lets no script
// run but its own (by hash) and lets it talk to nothing but this origin.
import { createHash } from 'node:crypto';
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { mount } from '../openapi.ts';
import { PLAYGROUND_HTML, PLAYGROUND_SCRIPT } from '../playground/page.ts';

const page = createRoute({
  method: 'get',
  path: '/',
  operationId: 'playground',
  tags: ['Playground'],
  security: [],
  summary: 'The playground: a page to try sessions, chat, versions, forks, export/import and cartridges in a browser',
  responses: { 200: { description: 'The page', content: { 'text/html': { schema: z.string() } } } },
});

const scriptHash = createHash('sha256').update(PLAYGROUND_SCRIPT).digest('base64');
const POLICY = [
  "default-src 'none'",
  `script-src 'sha256-${scriptHash}'`,
  "style-src 'unsafe-inline'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export function playgroundRoutes(): OpenAPIHono {
  const app = new OpenAPIHono();
  mount(app, page, (c) =>
    c.html(PLAYGROUND_HTML, 200, {
      'content-security-policy': POLICY,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'cache-control': 'no-cache',
    }),
  );
  return app;
}
