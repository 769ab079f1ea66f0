// `mamba-serve chat [SESSION]`: talk to a session from a terminal. Each line is a turn; the
// reply streams in as the worker produces it; the session (and its memory) is on the server,
// so quitting and coming back later continues where it was. Without SESSION a new session is
// made; a SESSION that does not exist yet is created under that id. Lines starting with `/`
// are commands: /info, /exit.
import { createInterface } from 'node:readline';
import { SessionCreated, SessionInfo, TurnResponse } from '../shared/api-schemas.ts';
import { ApiClientError, type ApiClient } from './api-client.ts';
import { UsageError, type Out } from './cli-io.ts';

export interface ChatOptions {
  readonly session: string | undefined;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly input: NodeJS.ReadableStream & { isTTY?: boolean };
}

async function openSession(api: ApiClient, id: string | undefined, out: Out): Promise<string> {
  if (id === undefined) {
    const made = await api.json('POST', '/v1/sessions', SessionCreated, {});
    out.note(`session ${made.id} (new; \`mamba-serve chat ${made.id}\` continues it later)`);
    return made.id;
  }
  try {
    const s = await api.json('GET', `/v1/sessions/${encodeURIComponent(id)}`, SessionInfo);
    out.note(`session ${s.id}: version ${s.version}, ${s.tokens_absorbed.toLocaleString('en-US')} tokens remembered`);
    return s.id;
  } catch (e) {
    if (!(e instanceof ApiClientError && e.code === 'session_not_found')) throw e;
    const made = await api.json('POST', '/v1/sessions', SessionCreated, { id });
    out.note(`session ${made.id} (new)`);
    return made.id;
  }
}

/** One turn, streamed: the reply's text as it arrives, then the turn's result. */
async function turn(api: ApiClient, session: string, input: string, options: ChatOptions, out: Out): Promise<TurnResponse> {
  let result: TurnResponse | undefined;
  for await (const ev of api.events(`/v1/sessions/${encodeURIComponent(session)}/turns`, {
    input,
    stream: true,
    max_tokens: options.maxTokens,
    temperature: options.temperature,
    on_busy: 'queue',
  })) {
    if (ev.event === 'token') out.text((JSON.parse(ev.data) as { text: string }).text);
    else if (ev.event === 'done') result = TurnResponse.parse(JSON.parse(ev.data));
    else if (ev.event === 'error') {
      const { error } = JSON.parse(ev.data) as { error: { code: string; message: string } };
      throw new ApiClientError(error.code, error.message);
    }
  }
  if (!result) throw new ApiClientError('stream_ended', 'the reply stream ended before the turn was done');
  return result;
}

export async function chatCommand(api: ApiClient, options: ChatOptions, out: Out): Promise<void> {
  if (!Number.isInteger(options.maxTokens) || options.maxTokens < 1) throw new UsageError('--max-tokens must be a positive whole number');
  const session = await openSession(api, options.session, out);
  const tty = options.input.isTTY === true;
  if (tty) out.note('type a message and Enter; /info shows the session, /exit or Ctrl-D quits');
  const lines = createInterface({ input: options.input, terminal: false });
  const prompt = () => {
    if (tty) out.text('you> ');
  };
  prompt();
  for await (const raw of lines) {
    const line = raw.trim();
    if (line === '') {
      prompt();
      continue;
    }
    if (line === '/exit' || line === '/quit') break;
    if (line === '/info') {
      const s = await api.json('GET', `/v1/sessions/${encodeURIComponent(session)}`, SessionInfo);
      out.note(`${s.id}: version ${s.version}, ${s.versions} versions, ${s.tokens_absorbed.toLocaleString('en-US')} tokens, state ${s.state_bytes.toLocaleString('en-US')} bytes`);
      prompt();
      continue;
    }
    if (tty) out.text('bot> ');
    const r = await turn(api, session, line, options, out);
    out.line('');
    out.note(`  [v${r.version} · ${r.usage.output_tokens} tokens · ${r.usage.tokens_absorbed.toLocaleString('en-US')} remembered]`);
    prompt();
  }
  lines.close();
}
