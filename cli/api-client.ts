// The CLI's client of a running mamba-serve (the local stack or a deployment): JSON calls
// parsed with the same zod schemas the server answers through, `.mstate` bytes both ways, and
// a turn's server-sent events. Every failure is an ApiClientError with the server's error code
// (or `unreachable` when nothing answers), so the CLI can print one clear line.
import { ErrorResponse } from '../shared/api-schemas.ts';
import { sseEvents } from '../shared/sse-events.ts';

export class ApiClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'ApiClientError';
  }
}

interface Schema<T> {
  parse(value: unknown): T;
}

export interface SseEvent {
  readonly event: string;
  readonly data: string;
  readonly id?: string;
}

export class ApiClient {
  constructor(
    readonly url: string,
    private readonly key: string | undefined,
  ) {}

  private async send(method: string, path: string, init: { body?: BodyInit; contentType?: string; accept?: string } = {}): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.key) headers.authorization = `Bearer ${this.key}`;
    if (init.contentType) headers['content-type'] = init.contentType;
    if (init.accept) headers.accept = init.accept;
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, { method, headers, ...(init.body !== undefined ? { body: init.body } : {}) });
    } catch (cause) {
      // undici wraps the socket error (sometimes in an AggregateError, one per address tried).
      const inner = (cause as { cause?: { code?: string; errors?: { code?: string }[] } }).cause;
      const why = inner?.code ?? inner?.errors?.find((e) => e.code)?.code ?? (cause as Error).message;
      throw new ApiClientError('unreachable', `cannot reach ${this.url} (${why}); is \`mamba-serve serve\` (or npm start) running? --url or MAMBA_SERVE_URL names another server`);
    }
    if (!res.ok) {
      const text = await res.text();
      let parsed: ReturnType<typeof ErrorResponse.safeParse> | undefined;
      try {
        parsed = ErrorResponse.safeParse(JSON.parse(text));
      } catch {
        parsed = undefined;
      }
      if (parsed?.success) throw new ApiClientError(parsed.data.error.code, parsed.data.error.message, res.status);
      throw new ApiClientError('http_error', `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}`, res.status);
    }
    return res;
  }

  async json<T>(method: string, path: string, schema: Schema<T>, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body === undefined ? {} : { body: JSON.stringify(body), contentType: 'application/json' });
    return schema.parse(await res.json());
  }

  async bytes(path: string): Promise<{ data: Uint8Array; headers: Headers }> {
    const res = await this.send('GET', path);
    return { data: new Uint8Array(await res.arrayBuffer()), headers: res.headers };
  }

  async putBytes<T>(path: string, data: Uint8Array, schema: Schema<T>): Promise<T> {
    const res = await this.send('PUT', path, { body: data, contentType: 'application/octet-stream' });
    return schema.parse(await res.json());
  }

  /** POST a JSON body and read the answer as server-sent events. */
  async *events(path: string, body: unknown): AsyncGenerator<SseEvent> {
    const res = await this.send('POST', path, { body: JSON.stringify(body), contentType: 'application/json', accept: 'text/event-stream' });
    for await (const e of sseEvents(res.body!)) yield { event: e.event ?? 'message', data: e.data, ...(e.id ? { id: e.id } : {}) };
  }
}
