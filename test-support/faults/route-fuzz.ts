// A fuzz of every route the API describes (its OpenAPI document at /openapi.json): each
// operation is called with malformed, mistyped, oversized and hostile parameters, bodies and
// headers, and valid-looking ones, under a tenant of its own. Every answer must be one the
// document lists for the operation (or an answer any route may give: 401, 404 for an unknown
// id, 413, 503 during an outage), and an error must be our error shape with a code whose
// status is that status. A 500 is always a finding.
import { ERROR_STATUS } from '../../shared/errors.ts';
import { Rng } from '../../shared/rng.ts';

interface Operation {
  readonly method: string;
  readonly path: string;
  readonly statuses: ReadonlySet<string>;
  readonly pathParams: readonly string[];
  readonly queryParams: ReadonlyArray<{ name: string; schema: Record<string, unknown> }>;
  readonly headers: readonly string[];
  readonly body: Record<string, unknown> | undefined;
}

export interface FuzzReport {
  readonly requests: number;
  readonly operations: number;
  readonly findings: string[];
}

/** Answers any route may give, whatever its document lists. */
const ANY_ROUTE = new Set(['401', '404', '413', '429', '503']);
/** Answers of the HTTP server itself, before any route runs (a request line or headers past Node's 16 KiB). */
const TRANSPORT = new Set(['414', '431']);

function operationsOf(doc: { paths: Record<string, Record<string, Record<string, unknown>>> }): Operation[] {
  const ops: Operation[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const params = (op['parameters'] as Array<{ in: string; name: string; schema?: Record<string, unknown> }> | undefined) ?? [];
      const body = (op['requestBody'] as { content?: Record<string, { schema?: Record<string, unknown> }> } | undefined)?.content;
      ops.push({
        method: method.toUpperCase(),
        path,
        statuses: new Set(Object.keys((op['responses'] as Record<string, unknown>) ?? {})),
        pathParams: params.filter((p) => p.in === 'path').map((p) => p.name),
        queryParams: params.filter((p) => p.in === 'query').map((p) => ({ name: p.name, schema: p.schema ?? {} })),
        headers: params.filter((p) => p.in === 'header').map((p) => p.name),
        body: body?.['application/json']?.schema ?? (body ? {} : undefined),
      });
    }
  }
  return ops;
}

class Generator {
  constructor(private readonly rng: Rng) {}

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.rng.next() * items.length)]!;
  }

  chance(p: number): boolean {
    return this.rng.next() < p;
  }

  /** Strings that break naive code: empty, huge, traversal, unicode, control characters, injection. */
  nastyString(): string {
    return this.pick([
      '',
      'a',
      'x'.repeat(129),
      'y'.repeat(70_000),
      '../../etc/passwd',
      '..',
      '%2e%2e%2f',
      'ünïcødé-名前',
      '\u0000\u0001',
      '<script>alert(1)</script>',
      "'; DROP TABLE sessions; --",
      'resp_' + 'A'.repeat(40),
      'conv_x',
      's_' + 'B'.repeat(22),
      'cart_0c8wq2rbsx3Jm2kQ9vT0aZpL',
      'msg_' + Buffer.from('s/t/0').toString('base64url'),
      String(2 ** 53),
      '-1',
      'null',
    ]);
  }

  nastyValue(depth = 0): unknown {
    const r = this.rng.next();
    if (r < 0.15) return this.nastyString();
    if (r < 0.3) return this.pick([0, -1, 1.5, 2 ** 53 + 2, -(2 ** 31), 1e308, Number.MAX_SAFE_INTEGER, 4097, 100_000]);
    if (r < 0.4) return this.pick([true, false, null]);
    if (r < 0.55 && depth < 4) return Array.from({ length: Math.floor(this.rng.next() * 4) }, () => this.nastyValue(depth + 1));
    if (r < 0.7 && depth < 4) return Object.fromEntries(Array.from({ length: Math.floor(this.rng.next() * 4) }, () => [this.pick(['role', 'content', 'input', 'id', 'model', 'type', '__proto__', 'constructor', 'x']), this.nastyValue(depth + 1)]));
    return this.pick(['hi', 'user', 'assistant', 'system', 'tool', 'demo', 'tiny', 'text', 'message', 'input_text']);
  }

  /** A value that follows `schema` where it is simple, or breaks it on purpose. */
  fromSchema(schema: Record<string, unknown>, depth = 0): unknown {
    if (this.chance(0.12) || depth > 5) return this.nastyValue(depth);
    const variants = (schema['anyOf'] ?? schema['oneOf']) as Record<string, unknown>[] | undefined;
    if (variants?.length) return this.fromSchema(this.pick(variants), depth + 1);
    if (schema['enum']) return this.pick(schema['enum'] as unknown[]);
    if (schema['const'] !== undefined) return schema['const'];
    switch (schema['type']) {
      case 'string':
        return this.chance(0.6) ? this.pick(['hello', 'tiny', 'a-b_c', 'user', 'x'.repeat(8)]) : this.nastyString();
      case 'integer':
      case 'number': {
        const min = typeof schema['minimum'] === 'number' ? schema['minimum'] : 0;
        const max = typeof schema['maximum'] === 'number' ? Math.min(schema['maximum'], min + 64) : min + 64;
        return this.chance(0.7) ? Math.floor(min + this.rng.next() * (max - min + 1)) : this.nastyValue(depth);
      }
      case 'boolean':
        return this.chance(0.5);
      case 'array': {
        const items = (schema['items'] as Record<string, unknown> | undefined) ?? {};
        return Array.from({ length: Math.floor(this.rng.next() * 3) + (this.chance(0.7) ? 1 : 0) }, () => this.fromSchema(items, depth + 1));
      }
      case 'object':
      default: {
        const props = (schema['properties'] as Record<string, Record<string, unknown>> | undefined) ?? {};
        const required = new Set((schema['required'] as string[] | undefined) ?? []);
        const out: Record<string, unknown> = {};
        for (const [name, prop] of Object.entries(props)) if (required.has(name) ? this.chance(0.9) : this.chance(0.3)) out[name] = this.fromSchema(prop, depth + 1);
        if (this.chance(0.15)) out[this.nastyString().slice(0, 20) || 'extra'] = this.nastyValue(depth + 1);
        return out;
      }
    }
  }

  /** A body as bytes: JSON from the schema mostly, else malformed JSON, invalid UTF-8, or too large. */
  body(schema: Record<string, unknown>): string | Uint8Array {
    const r = this.rng.next();
    if (r < 0.06) return '{"unterminated": ';
    if (r < 0.1) return Uint8Array.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]);
    if (r < 0.12) return JSON.stringify({ input: 'z'.repeat(9 * 1024 * 1024) });
    if (r < 0.15) return '[]';
    if (r < 0.18) return '';
    if (r < 0.21) return '{"a":'.repeat(3000) + '1' + '}'.repeat(3000);
    return JSON.stringify(this.fromSchema(schema));
  }
}

/** Check one answer: a documented status, and for errors our shape with a code of that status. */
async function judge(op: Operation, res: Response, where: string): Promise<string | undefined> {
  const status = String(res.status);
  const text = await res.text();
  if (TRANSPORT.has(status)) return undefined;
  if (res.status >= 500 && res.status !== 503 && res.status !== 504) return `${where}: ${status} ${text.slice(0, 200)}`;
  if (!op.statuses.has(status) && !ANY_ROUTE.has(status) && !(status === '200' && op.statuses.has('201'))) return `${where}: ${status} is not among the documented answers (${[...op.statuses].join(', ')})`;
  if (res.status < 400) return undefined;
  let body: { error?: { code?: string; message?: unknown } };
  try {
    body = JSON.parse(text);
  } catch {
    return `${where}: ${status} with a body that is not JSON: ${text.slice(0, 120)}`;
  }
  const code = body.error?.code;
  if (typeof code !== 'string' || typeof body.error?.message !== 'string') return `${where}: ${status} without {error: {code, message}}`;
  if (!Object.hasOwn(ERROR_STATUS, code) || ERROR_STATUS[code as keyof typeof ERROR_STATUS] !== res.status) return `${where}: code ${code} with status ${status}`;
  if (/at [\w.<>]+ \(|node:internal|\/work\/|ECONN|stack/i.test(body.error.message)) return `${where}: the message leaks internals: ${body.error.message.slice(0, 160)}`;
  return undefined;
}

/** Fuzz every operation of the document `requests` times in all, as `apiKey`'s tenant. */
export async function fuzzRoutes(url: string, apiKey: string, options: { requests: number; seed: number; known: { session: string } }): Promise<FuzzReport> {
  const doc = (await (await fetch(`${url}/openapi.json`)).json()) as { paths: Record<string, Record<string, Record<string, unknown>>> };
  const ops = operationsOf(doc);
  const gen = new Generator(new Rng(options.seed));
  const findings: string[] = [];
  let sent = 0;
  for (let i = 0; i < options.requests; i++) {
    const op = ops[i % ops.length]!;
    let path = op.path;
    for (const name of op.pathParams) {
      const value = gen.chance(0.5) ? options.known.session : gen.nastyString();
      path = path.replace(`{${name}}`, encodeURIComponent(value));
    }
    const query = new URLSearchParams();
    for (const q of op.queryParams) if (gen.chance(0.5)) query.set(q.name, String(gen.fromSchema(q.schema)).slice(0, 5000));
    const headers: Record<string, string> = {};
    if (!gen.chance(0.05)) headers['authorization'] = `Bearer ${gen.chance(0.03) ? 'not-a-key-at-all' : apiKey}`;
    for (const h of op.headers) if (gen.chance(0.3)) headers[h] = gen.pick(['true', 'no', '17', 'zz', options.known.session, 'k'.repeat(300), '1700000000000-0']);
    const init: RequestInit = { method: op.method, headers, signal: AbortSignal.timeout(60_000) };
    if (op.body !== undefined && op.method !== 'GET') init.body = gen.body(op.body) as RequestInit['body'];
    const where = `${op.method} ${op.path} (#${i})`;
    try {
      const res = await fetch(`${url}${path}${query.size ? `?${query}` : ''}`, init);
      // An event stream is read to its end: its own errors come as events, not statuses.
      const finding = res.headers.get('content-type')?.includes('text/event-stream') ? (await res.text(), undefined) : await judge(op, res, where);
      if (finding) findings.push(finding);
    } catch (e) {
      findings.push(`${where}: no answer (${(e as Error).message})`);
    }
    sent++;
  }
  return { requests: sent, operations: ops.length, findings };
}
