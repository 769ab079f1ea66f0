// POST /v1/chat/completions, OpenAI-compatible.
// - Without a session it keeps no session: it starts from the longest stored prefix of its
//   messages and stores its own (the prefix cache, docs/prefix-cache.md), or from a cartridge's
//   state (`cartridge`).
// - With one (`session_id` in the body or the X-Session-Id header; an unknown id is created),
//   `messages` is the whole conversation as OpenAI clients send it: the longest stored version it
//   extends is reused and only the rest is fed; the reused tokens are reported as
//   `usage.prompt_tokens_details.cached_tokens`.
// - With `append` (or X-Session-Append) `messages` are only the new ones, added to whatever the
//   session's head holds: for agents that keep their history server-side and send one a turn.
import { createRoute, OpenAPIHono } from '@hono/zod-openapi';
import { z } from 'zod';
import { CartridgeId, ChatCompletion, ChatCompletionRequest, SessionId, type ChatCompletionChunk, type Message } from '../../../../shared/api-schemas.ts';
import { ApiError } from '../../../../shared/errors.ts';
import type { TurnBase, TurnResult } from '../../../../shared/jobs.ts';
import type { EdgeEnv } from '../../../auth.ts';
import type { EdgeDeps } from '../../../deps.ts';
import { toApiError } from '../../../http-errors.ts';
import { requestFingerprint } from '../../../idempotency.ts';
import { bodyOf, errors, IdempotencyHeader, jsonBody, jsonOrEvents, mount, TURN_ERRORS } from '../../../openapi.ts';
import { validationError } from '../../../request-body.ts';
import type { CartridgeService } from '../../../cartridge-service.ts';
import type { SessionService } from '../../../session-service.ts';
import { sseResponse } from '../../../sse.ts';
import { serverTiming } from '../sessions/turns.ts';
import { checkMaxTokens, DEFAULT_MAX_TOKENS, idempotencyKey, stopList } from '../../../turn-params.ts';
import type { SubmittedTurn, TurnService } from '../../../turn-service.ts';

type ChatMessageIn = ChatCompletionRequest['messages'][number];

/** OpenAI message → the message a session absorbs: text parts joined, `developer` read as `system`. */
function toMessage(m: ChatMessageIn): Message {
  const content = m.content === null ? '' : typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
  return { role: m.role === 'developer' ? 'system' : m.role, content };
}

function usage(r: TurnResult) {
  const prompt = r.usage.cached_tokens + r.usage.input_tokens;
  return {
    prompt_tokens: prompt,
    completion_tokens: r.usage.output_tokens,
    total_tokens: prompt + r.usage.output_tokens,
    prompt_tokens_details: { cached_tokens: r.usage.cached_tokens },
  };
}

const flag = (description: string) => z.enum(['true', 'false', '1', '0', 'yes', 'no']).optional().meta({ description });

const createChatCompletion = createRoute({
  method: 'post',
  path: '/completions',
  operationId: 'createChatCompletion',
  tags: ['Chat'],
  summary: 'OpenAI-compatible chat completion: stateless (with the prefix cache), or on a session',
  request: {
    headers: z.object({
      'x-session-id': SessionId.optional().meta({ description: 'The session (same as the body field session_id); an unknown id is created' }),
      'x-session-fork': flag('Same as the body field fork'),
      'x-session-append': flag('Same as the body field append'),
      'x-cartridge-id': CartridgeId.optional().meta({ description: 'Same as the body field cartridge' }),
      'idempotency-key': IdempotencyHeader,
    }),
    body: jsonBody(ChatCompletionRequest),
  },
  responses: {
    200: jsonOrEvents(ChatCompletion, 'The completion (with session_id and session_version when on a session)', '`chat.completion.chunk` data events, then `data: [DONE]`'),
    ...errors(...TURN_ERRORS),
  },
});

const truthy = (v: string | undefined) => v !== undefined && /^(1|true|yes)$/i.test(v.trim());

export function chatCompletionRoutes(deps: EdgeDeps, sessions: SessionService, turns: TurnService, cartridges: CartridgeService): OpenAPIHono<EdgeEnv> {
  const app = new OpenAPIHono<EdgeEnv>();

  mount(app, createChatCompletion, async (c) => {
    const tenant = c.get('tenant');
    const body = await bodyOf(c, createChatCompletion);
    const header = c.req.header('x-session-id');
    if (header !== undefined) {
      const parsed = SessionId.safeParse(header);
      if (!parsed.success) throw validationError(new z.ZodError(parsed.error.issues.map((i) => ({ ...i, path: ['X-Session-Id'] }))), 'header');
      if (body.session_id !== undefined && body.session_id !== header) {
        throw new ApiError('invalid_request', 'session_id and the X-Session-Id header name different sessions');
      }
    }
    const sessionId = body.session_id ?? header;
    const cartridgeHeader = c.req.header('x-cartridge-id');
    if (cartridgeHeader !== undefined) {
      const parsed = CartridgeId.safeParse(cartridgeHeader);
      if (!parsed.success) throw validationError(new z.ZodError(parsed.error.issues.map((i) => ({ ...i, path: ['X-Cartridge-Id'] }))), 'header');
      if (body.cartridge !== undefined && body.cartridge !== cartridgeHeader) throw new ApiError('invalid_request', 'cartridge and the X-Cartridge-Id header name different cartridges');
    }
    const cartridge = body.cartridge ?? cartridgeHeader;
    const fork = body.fork ?? truthy(c.req.header('x-session-fork'));
    const append = body.append ?? truthy(c.req.header('x-session-append'));
    if (append && fork) throw new ApiError('invalid_request', 'append and fork exclude each other: append adds the messages to the head, fork continues from an older version');
    if (append && sessionId === undefined) throw new ApiError('invalid_request', 'append needs a session: send session_id or the X-Session-Id header');
    const maxTokens = checkMaxTokens(
      body.max_completion_tokens ?? body.max_tokens ?? Math.min(DEFAULT_MAX_TOKENS, deps.config.MAX_TOKENS_PER_TURN),
      deps.config,
      body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
    );
    const messages = body.messages.map(toMessage);
    const key = idempotencyKey(c);
    const requestHash = requestFingerprint('chat', body, { session: sessionId ?? null, fork, append, cartridge: cartridge ?? null });

    let model: string;
    let base: TurnBase = { kind: 'head', if_version: null };
    let toFeed: Message[] = messages;
    let replayed: SubmittedTurn | undefined;
    let statelessBase: { id: string; transcript_hash: string } | undefined;
    let incarnation: string | undefined;
    if (sessionId === undefined) {
      if (cartridge !== undefined) {
        // A stateless chat on a copy of the cartridge's state (the worker loads it once and keeps it hot).
        const record = await cartridges.ready(tenant, cartridge, body.model ?? undefined);
        model = record.model;
        statelessBase = { id: record.id, transcript_hash: record.transcript_hash! };
      } else {
        model = await sessions.resolveModel(body.model);
      }
      replayed = await turns.replay({ tenant, session: null, model, idempotencyKey: key, requestHash });
    } else {
      const requested = body.model ?? undefined;
      const existing = await deps.sessions.read(tenant, sessionId);
      // A retried request whose turn already ran is answered from it: matched against the head
      // it moved, its messages would no longer extend it.
      replayed = existing ? await turns.replay({ tenant, session: sessionId, model: existing.manifest.model, idempotencyKey: key, requestHash }) : undefined;
      let found = existing;
      if (!found && cartridge !== undefined) {
        const { record, bytes } = await cartridges.readyState(tenant, cartridge, requested);
        await deps.served.assertRunnable(record.model);
        found = await sessions.fromCartridge({ tenant, target: sessionId, cartridge: record, bytes, metadata: {} }).catch(async (e: unknown) => {
          // Created by a concurrent request meanwhile: use it (its cartridge is checked below).
          if (e instanceof ApiError && e.code === 'session_exists') return sessions.get(tenant, sessionId);
          throw e;
        });
      } else if (!found) {
        const newModel = await sessions.resolveModel(requested);
        // Refuse before creating anything when no worker could run the turn.
        await deps.served.assertRunnable(newModel);
        found = (await sessions.getOrCreate(tenant, sessionId, newModel)).found;
      }
      const m = found.manifest;
      if (cartridge !== undefined && m.cartridge !== cartridge) {
        throw new ApiError('cartridge_mismatch', `session ${sessionId} exists and ${m.cartridge ? `started from cartridge ${m.cartridge}` : 'did not start from a cartridge'}, not ${cartridge}`);
      }
      if (requested !== undefined && requested !== m.model) {
        throw new ApiError('model_mismatch', `session ${sessionId} belongs to model ${m.model}, not ${requested}`);
      }
      model = m.model;
      incarnation = m.incarnation;
      if (!replayed && !append) {
        const match = sessions.matchConversation(m, messages);
        if (!match || (!match.isHead && !fork)) {
          throw new ApiError(
            'conversation_diverged',
            `messages do not extend session ${sessionId}'s head (version ${m.head})` +
              (match ? `; they extend version ${match.version.version} (its first ${match.absorbed} messages)` : '') +
              '. Send the whole conversation the session has seen, send only new messages with "append": true (or X-Session-Append: true), or ask to fork ("fork": true or X-Session-Fork: true) to continue from the longest stored prefix.',
            { details: { head: m.head, ...(match ? { matched_version: match.version.version, matched_messages: match.absorbed } : {}) } },
          );
        }
        base = { kind: 'version', version: match.version.version, must_be_head: match.isHead };
        toFeed = messages.slice(match.absorbed);
      }
      // With append every message is new: the turn runs on the head as the worker finds it.
    }

    const turn =
      replayed ??
      (await turns.submit({
        tenant,
        session: sessionId ?? null,
        model,
        kind: 'turn',
        base,
        messages: toFeed,
        maxTokens,
        sampling: { temperature: body.temperature ?? 1, top_p: body.top_p ?? 1, top_k: body.top_k ?? 0, seed: body.seed ?? undefined },
        stop: stopList(body.stop),
        onBusy: body.on_busy ?? 'reject',
        incarnation,
        idempotencyKey: key,
        requestHash,
        prefixCache: body.prefix_cache ?? true,
        ...(statelessBase ? { cartridge: statelessBase } : {}),
      }));
    const id = `chatcmpl-${turn.turnId}`;
    const created = Math.floor(Date.now() / 1000);
    c.header('X-Turn-Id', turn.turnId);
    if (sessionId !== undefined) c.header('X-Session-Id', sessionId);
    const sessionFields = (r: TurnResult) =>
      r.session !== null && r.version !== null ? { session_id: r.session, session_version: r.version } : {};

    if (!body.stream) {
      const r = await turns.result(turn, c.req.raw.signal);
      if (r.version !== null) c.header('X-Session-Version', String(r.version));
      const timing = serverTiming(r);
      if (timing) c.header('Server-Timing', timing);
      const answer: z.output<typeof ChatCompletion> = {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message: { role: 'assistant', content: r.output }, finish_reason: r.finish_reason, logprobs: null }],
        usage: usage(r),
        ...sessionFields(r),
      };
      return c.json(answer);
    }

    const chunk = (delta: ChatCompletionChunk['choices'][number]['delta'], finish: ChatCompletionChunk['choices'][number]['finish_reason']): ChatCompletionChunk => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    });
    return sseResponse(
      c,
      async (sse) => {
        await sse.send(chunk({ role: 'assistant', content: '' }, null));
        for await (const out of turns.follow(turn, { signal: sse.signal })) {
          if (out.type === 'text') {
            await sse.send(chunk({ content: out.text }, null));
            continue;
          }
          const r = out.result;
          await sse.send({ ...chunk({}, r.finish_reason), ...sessionFields(r) });
          if (body.stream_options?.include_usage) {
            await sse.send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage(r), ...sessionFields(r) });
          }
          await sse.sendRaw('[DONE]');
        }
      },
      async (sse, error) => {
        // OpenAI streams an error as a data event with an `error` object; its clients raise it.
        await sse.send(toApiError(error, deps.log).toBody());
      },
      { keepAliveMs: deps.config.SSE_KEEPALIVE_MS },
    );
  });

  return app;
}
