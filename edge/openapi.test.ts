// The OpenAPI document against what the server serves: every route the app routes is described
// (method and path), and every curl example in README and docs/ names a described operation
// whose parameters and JSON body validate against the document's schemas (Ajv, JSON Schema
// 2020-12, which OpenAPI 3.1 schemas are).
import { readdirSync, readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { createApp } from './app.ts';
import type { EdgeDeps } from './deps.ts';
import { honoPath } from './openapi.ts';

// The routes and the document need no I/O: the app is built from a stand-in that is never called.
const app = createApp({ config: { MAX_REQUEST_BYTES: 1 << 20, MAX_STATE_UPLOAD_BYTES: 1 << 20 }, apiKeys: undefined, sessions: { objects: {} } } as unknown as EdgeDeps);
const doc = (await (await app.request('/openapi.json')).json()) as OpenApiDoc;

interface Operation {
  parameters?: Array<{ name: string; in: 'path' | 'query' | 'header'; required?: boolean; schema: object }>;
  requestBody?: { required?: boolean; content: Record<string, { schema: object }> };
  responses: Record<string, unknown>;
}
interface OpenApiDoc {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, object> };
}

const METHODS = ['get', 'post', 'put', 'delete', 'patch'];

describe('the OpenAPI document', () => {
  it('is OpenAPI 3.1 with component schemas', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.components.schemas)).toEqual(expect.arrayContaining(['TurnRequest', 'ChatCompletionRequest', 'SessionInfo', 'ErrorResponse']));
  });

  it('describes every route the app serves, and nothing else', () => {
    const served = new Set(app.routes.filter((r) => r.method !== 'ALL').map((r) => `${r.method} ${r.path}`));
    const described = new Set(Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).filter((m) => METHODS.includes(m)).map((m) => `${m.toUpperCase()} ${honoPath(path)}`)));
    expect([...served].sort()).toEqual([...described].sort());
  });

  it('gives every operation an id, a summary and its error answers', () => {
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops) as Array<[string, Operation & { operationId?: string; summary?: string }]>) {
        expect(op.operationId, `${method} ${path}`).toBeTruthy();
        expect(op.summary, `${method} ${path}`).toBeTruthy();
        if (path.startsWith('/v1/')) expect(Object.keys(op.responses), `${method} ${path}`).toContain('401');
      }
    }
  });
});

// ---------------------------------------------------------------------------- documentation examples

interface CurlExample {
  readonly source: string;
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  readonly headers: Record<string, string>;
  readonly body: string | undefined;
  readonly binary: boolean;
}

/** Split a shell command line into words (single and double quotes; no expansions needed here). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  let word = '';
  let quote: string | null = null;
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quote) {
      if (ch === quote) quote = null;
      else word += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      inWord = true;
    } else if (ch === '#' && !inWord) {
      break;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

const EXAMPLE_CARTRIDGE_ID = 'cart_readme00000000000';

/** Every `curl … $U/…` in the ```sh blocks of a Markdown file. */
function curlExamples(file: string): CurlExample[] {
  const text = readFileSync(new URL(`../${file}`, import.meta.url), 'utf8');
  const out: CurlExample[] = [];
  for (const block of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const lines = block[1]!.replace(/\\\n\s*/g, ' ').split('\n');
    for (const line of lines) {
      // Shell variables the examples set ($C: a cartridge id from an earlier command) stand for values of their kind.
      const words = shellWords(line.trim().replace(/\$C\b/g, EXAMPLE_CARTRIDGE_ID));
      if (words[0] !== 'curl') continue;
      const url = words.find((w) => w.startsWith('$U/'));
      if (!url) continue;
      let method: string | undefined;
      let body: string | undefined;
      let binary = false;
      const headers: Record<string, string> = {};
      for (let i = 1; i < words.length; i++) {
        const w = words[i]!;
        if (w === '-X') method = words[++i];
        else if (w === '-d' || w === '--data') body = words[++i];
        else if (w === '--data-binary') {
          body = words[++i];
          binary = true;
        } else if (w === '-H') {
          const h = words[++i]!;
          headers[h.slice(0, h.indexOf(':')).trim().toLowerCase()] = h.slice(h.indexOf(':') + 1).trim();
        }
      }
      const parsed = new URL(url.replace('$U', 'http://x'));
      out.push({ source: `${file}: ${line.trim()}`, method: (method ?? (body !== undefined ? 'POST' : 'GET')).toLowerCase(), path: parsed.pathname, query: parsed.searchParams, headers, body, binary });
    }
  }
  return out;
}

/** The described operation a concrete path and method name, with its path parameters. */
function operationFor(method: string, path: string): { op: Operation; params: Record<string, string> } | undefined {
  for (const [template, ops] of Object.entries(doc.paths)) {
    const names: string[] = [];
    const pattern = new RegExp(`^${template.replace(/\{([^}]+)\}/g, (_, n: string) => (names.push(n), '([^/]+)'))}$`);
    const m = pattern.exec(path);
    if (m && ops[method]) return { op: ops[method]!, params: Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1]!)])) };
  }
  return undefined;
}

const ajv = new Ajv2020({ strict: false, allErrors: true });
/** Validate against a schema of the document ($refs point into its components). */
function validate(schema: object, value: unknown): string[] {
  const check = ajv.compile({ ...schema, components: doc.components });
  return check(value) ? [] : (check.errors ?? []).map((e) => `${e.instancePath || '(root)'} ${e.message}`);
}

const documents = ['README.md', ...readdirSync(new URL('../docs', import.meta.url)).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
const examples = documents.flatMap(curlExamples);

describe('documentation examples validate against the document', () => {
  it('finds the examples, and the check is not vacuous', () => {
    expect(examples.length).toBeGreaterThan(20);
    const turn = operationFor('post', '/v1/sessions/alice/turns')!.op.requestBody!.content['application/json']!.schema;
    expect(validate(turn, { input: 'hi', max_tokens: 4 })).toEqual([]);
    expect(validate(turn, { input: 42 })).not.toEqual([]);
    expect(validate(turn, { input: 'hi', surprise: true })).not.toEqual([]);
  });

  it.each(examples.map((e) => [e.source, e] as const))('%s', (_, e) => {
    const found = operationFor(e.method, e.path);
    expect(found, `${e.method.toUpperCase()} ${e.path} is not described`).toBeDefined();
    const { op, params } = found!;
    const declared = op.parameters ?? [];
    for (const [name, value] of Object.entries(params)) {
      const p = declared.find((d) => d.in === 'path' && d.name === name);
      expect(p, `path parameter ${name}`).toBeDefined();
      expect(validate(p!.schema, value), `path parameter ${name}`).toEqual([]);
    }
    for (const [name, value] of e.query) {
      const p = declared.find((d) => d.in === 'query' && d.name === name);
      expect(p, `query parameter ${name}`).toBeDefined();
      expect(validate(p!.schema, value), `query parameter ${name}`).toEqual([]);
    }
    for (const [name, value] of Object.entries(e.headers)) {
      if (name === 'authorization' || name === 'content-type') continue;
      const p = declared.find((d) => d.in === 'header' && d.name.toLowerCase() === name);
      expect(p, `header ${name}`).toBeDefined();
      expect(validate(p!.schema, value), `header ${name}`).toEqual([]);
    }
    if (e.body === undefined) {
      expect(op.requestBody?.required ?? false, 'the operation needs a body').toBe(false);
      return;
    }
    const content = op.requestBody?.content ?? {};
    if (e.binary) {
      expect(Object.keys(content).some((t) => t !== 'application/json'), 'a binary body').toBe(true);
      return;
    }
    const schema = content['application/json']?.schema;
    expect(schema, 'a JSON body').toBeDefined();
    expect(validate(schema!, JSON.parse(e.body)), 'the body').toEqual([]);
  });
});
