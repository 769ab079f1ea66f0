// `mamba-serve`: the command line (bin/mamba-serve.mjs runs main()).
//   serve                 the local stack, as `npm start`
//   chat, sessions        a client of a running server (the local stack or a deployment)
//   generate, logits, info  the model itself, no server (worker/cli.ts)
// Errors are one line, "error [code]: message" (exit 1), or the usage for bad arguments
// (exit 2); --debug (or DEBUG=1) adds the stack trace.
import { parseArgs } from 'node:util';
import { main as modelMain, USAGE as MODEL_USAGE } from '../worker/cli.ts';
import { ApiClient, ApiClientError } from './api-client.ts';
import { chatCommand } from './chat-command.ts';
import { outOf, UsageError } from './cli-io.ts';
import { sessionsCommand } from './sessions-command.ts';

export const USAGE = `usage:
  mamba-serve serve                      the whole system locally (Redis, a worker, the API), as npm start
  mamba-serve chat [SESSION]             talk to a session; replies stream in; /info, /exit
                   [--max-tokens N] [--temperature T]
  mamba-serve sessions ls [--limit N] [--all]
  mamba-serve sessions show SESSION
  mamba-serve sessions versions SESSION  every version as a tree (forks under their parent)
  mamba-serve sessions fork SESSION [--version N] [--to NEW_ID]
  mamba-serve sessions export SESSION [--version N] [-o FILE|-]
  mamba-serve sessions import FILE [--id NEW_ID] [--model MODEL]
  mamba-serve sessions rm SESSION...

  chat and sessions talk to --url (MAMBA_SERVE_URL, default http://127.0.0.1:8787) with --key
  (MAMBA_SERVE_API_KEY) when the server has API keys; --json prints the API's JSON.
  --debug prints the stack trace of an error.

${MODEL_USAGE.replace(/^usage:\n/, '')}`;

const CLIENT_OPTIONS = {
  url: { type: 'string' },
  key: { type: 'string' },
  json: { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  limit: { type: 'string' },
  all: { type: 'boolean' },
  version: { type: 'string' },
  to: { type: 'string' },
  output: { type: 'string', short: 'o' },
  id: { type: 'string' },
  model: { type: 'string' },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
} as const;

export interface MainIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  readonly env: NodeJS.ProcessEnv;
}

const defaultIo = (): MainIo => ({ stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env });

/** Runs the CLI; resolves to the exit code. Never throws. */
export async function main(argv: string[], io: MainIo = defaultIo()): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    (command === undefined ? io.stderr : io.stdout).write(`${USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  if (command === 'generate' || command === 'logits' || command === 'info') return modelMain(argv, io);
  const debug = rest.includes('--debug') || /^(1|true)$/.test(io.env.DEBUG ?? '');
  const out = outOf(io.stdout, io.stderr);
  try {
    if (command === 'serve') {
      if (rest.length > 0) throw new UsageError('serve takes no arguments (configure it with environment variables: README "Configuration")');
      const { serveLocalStack } = await import('../stack/serve.ts');
      await serveLocalStack();
      await new Promise(() => {}); // runs until Ctrl-C (serveLocalStack exits the process)
    }
    if (command !== 'chat' && command !== 'sessions') throw new UsageError(`unknown command "${command}"`);
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: CLIENT_OPTIONS, strict: true, allowPositionals: true });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (parsed.values.help) {
      io.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const url = (parsed.values.url ?? io.env.MAMBA_SERVE_URL ?? 'http://127.0.0.1:8787').replace(/\/+$/, '');
    const api = new ApiClient(url, parsed.values.key ?? (io.env.MAMBA_SERVE_API_KEY || undefined));
    if (command === 'sessions') {
      await sessionsCommand(api, { positionals: parsed.positionals, values: parsed.values }, out);
    } else {
      if (parsed.positionals.length > 1) throw new UsageError('chat takes at most one session id');
      const number = (name: 'max-tokens' | 'temperature', fallback: number) => {
        const raw = parsed.values[name];
        const v = raw === undefined ? fallback : Number(raw);
        if (!Number.isFinite(v)) throw new UsageError(`--${name} must be a number, got "${raw}"`);
        return v;
      };
      await chatCommand(api, { session: parsed.positionals[0], maxTokens: number('max-tokens', 256), temperature: number('temperature', 0.7), input: io.stdin }, out);
    }
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`error: ${error.message}\n\n${USAGE}\n`);
      return 2;
    }
    const code = error instanceof ApiClientError ? error.code : (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    const head = typeof code === 'string' && /^[a-z][a-z0-9_]*$/.test(code) ? `error [${code}]: ${message}` : `error: ${message}`;
    io.stderr.write(`${head}\n${debug && error instanceof Error && error.stack ? `${error.stack}\n` : ''}`);
    return 1;
  }
}
