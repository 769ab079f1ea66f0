// How a conversation becomes model input. A session absorbs its conversation turn by turn
// (the state never re-reads history), so a template must be concatenative:
// render(a ++ b) == render(a) + render(b). The assistant's reply is produced between
// `generationPrompt` (fed before generating) and `replySuffix` (fed after the reply ends),
// so those two must bracket an assistant message exactly as the template renders one.
//
// A model's own Jinja `chat_template` (tokenizer_config.json) is used when it satisfies all
// of that, checked at load time on probe conversations; otherwise loading fails with
// chat_template_invalid naming the file (see docs/chat-template.md for why we refuse rather
// than fall back). Without one, the documented default template below is used.
//
// Injection safety: markers are template text (special tokens allowed), message contents are
// user text (never special). encodeMessages keeps them apart; do not encode the string of
// renderMessages with allowSpecial.
import { Template } from '@huggingface/jinja';
import { ModelError } from './errors.ts';
import { readTokenizerConfig, type Tokenizer } from './tokenizer.ts';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface ChatTemplate {
  /** Each message closed, e.g. "<|user|>hi<|end|>\n". Text view: use encodeMessages for ids. */
  renderMessages(messages: readonly ChatMessage[]): string;
  /** Opens the assistant reply, e.g. "<|assistant|>". */
  readonly generationPrompt: string;
  /** Fed after a reply ends so the next turn starts cleanly, e.g. "<|end|>\n". */
  readonly replySuffix: string;
  /** Text that ends a reply when the end marker is plain text. */
  readonly stopStrings: readonly string[];
  /** Ids that end a reply: the end marker when it is a special token (with the tokenizer's eos). */
  readonly stopTokenIds: readonly number[];
  /** Ids of renderMessages(messages): markers may be special tokens, contents never are. */
  encodeMessages(messages: readonly ChatMessage[]): number[];
  readonly generationPromptIds: readonly number[];
  readonly replySuffixIds: readonly number[];
  /** Which template this is: the model's own Jinja template, or the documented default. */
  readonly source: 'default' | 'jinja';
}

/** One rendered message: markup around the content, which is kept apart for safe encoding. */
interface RenderedMessage {
  readonly before: string;
  readonly content: string;
  readonly after: string;
}

export const DEFAULT_END = '<|end|>';

/** The documented default: `<|role|>{content}<|end|>\n` per message, prompt `<|assistant|>`. */
function defaultRender(m: ChatMessage): RenderedMessage {
  return { before: `<|${m.role}|>`, content: m.content, after: `${DEFAULT_END}\n` };
}

const ROLES = new Set(['system', 'user', 'assistant']);

function checkMessages(messages: readonly ChatMessage[]): void {
  messages.forEach((m, i) => {
    if (!m || !ROLES.has(m.role) || typeof m.content !== 'string') {
      throw new TypeError(`message ${i}: role must be system, user or assistant and content a string`);
    }
  });
}

class SegmentTemplate implements ChatTemplate {
  readonly stopStrings: readonly string[];
  readonly stopTokenIds: readonly number[];
  readonly generationPromptIds: readonly number[];
  readonly replySuffixIds: readonly number[];

  constructor(
    readonly source: 'default' | 'jinja',
    private readonly tokenizer: Tokenizer,
    private readonly renderOne: (m: ChatMessage) => RenderedMessage,
    readonly generationPrompt: string,
    readonly replySuffix: string,
  ) {
    this.generationPromptIds = tokenizer.encode(generationPrompt, { allowSpecial: true });
    this.replySuffixIds = tokenizer.encode(replySuffix, { allowSpecial: true });
    // The end marker is the reply suffix without its trailing whitespace ("<|end|>\n" → "<|end|>").
    const marker = replySuffix.trim();
    const markerId = marker === '' ? undefined : tokenizer.tokenId(marker);
    this.stopStrings = marker !== '' && markerId === undefined ? [marker] : [];
    this.stopTokenIds = [...new Set([...tokenizer.stopTokenIds, ...(markerId === undefined ? [] : [markerId])])].sort((a, b) => a - b);
  }

  renderMessages(messages: readonly ChatMessage[]): string {
    checkMessages(messages);
    return messages.map((m) => {
      const r = this.renderOne(m);
      return r.before + r.content + r.after;
    }).join('');
  }

  encodeMessages(messages: readonly ChatMessage[]): number[] {
    checkMessages(messages);
    const ids: number[] = [];
    // Appended one id at a time: spreading a long message's ids as call arguments
    // (ids.push(...encoded)) overflows the call stack past ~100k tokens, before the caller
    // can compare the length with its limit.
    const append = (encoded: readonly number[]) => {
      for (const id of encoded) ids.push(id);
    };
    for (const m of messages) {
      const r = this.renderOne(m);
      append(this.tokenizer.encode(r.before, { allowSpecial: true }));
      append(this.tokenizer.encode(r.content, { allowSpecial: false }));
      append(this.tokenizer.encode(r.after, { allowSpecial: true }));
    }
    return ids;
  }
}

export function defaultChatTemplate(tokenizer: Tokenizer): ChatTemplate {
  return new SegmentTemplate('default', tokenizer, defaultRender, '<|assistant|>', `${DEFAULT_END}\n`);
}

// Private-use characters no real message contains; they mark where the content goes.
const SENTINEL = '\uE000mamba-serve-content\uE001';

/** Conversations the template is probed with at load time (contents with edge whitespace too). */
const PROBES: ChatMessage[][] = [
  [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi there' },
    { role: 'assistant', content: 'Hello.' },
    { role: 'user', content: ' two\nlines ' },
    { role: 'assistant', content: 'OK' },
  ],
  [
    { role: 'user', content: 'a' },
    { role: 'assistant', content: 'b' },
    { role: 'user', content: 'c' },
  ],
];

/** A model's Jinja chat_template, as a ChatTemplate, or chat_template_invalid naming `file`. */
export function jinjaChatTemplate(source: string, tokenizer: Tokenizer, specialTokens: Record<string, string>, file: string): ChatTemplate {
  const fail = (why: string, cause?: unknown): never => {
    throw new ModelError(
      'chat_template_invalid',
      `${file}: chat_template ${why}; sessions absorb a conversation turn by turn, so the template must render each message on its own (remove chat_template to use the default template, docs/chat-template.md)`,
      cause === undefined ? undefined : { cause },
    );
  };
  let template: Template;
  try {
    template = new Template(source);
  } catch (cause) {
    return fail(`does not parse (${(cause as Error).message})`, cause);
  }
  const render = (messages: readonly ChatMessage[], addGenerationPrompt: boolean): string => {
    try {
      return template.render({ ...specialTokens, messages, add_generation_prompt: addGenerationPrompt });
    } catch (cause) {
      const roles = messages.map((m) => m.role).join(', ') || 'no messages';
      return fail(`fails to render [${roles}] (${(cause as Error).message})`, cause);
    }
  };
  const split = (m: ChatMessage): RenderedMessage => {
    const marked = render([{ role: m.role, content: SENTINEL }], false);
    const parts = marked.split(SENTINEL);
    if (parts.length !== 2) fail(`renders a ${m.role} message's content ${parts.length - 1} times, not once`);
    const [before, after] = parts as [string, string];
    const real = render([m], false);
    // The content as the template rendered it (it may e.g. trim it); the markup must not
    // depend on the content, or it could not be told apart from it.
    if (!real.startsWith(before) || !real.endsWith(after) || real.length < before.length + after.length) {
      fail(`renders ${m.role} markup that depends on the message content`);
    }
    return { before, content: real.slice(before.length, real.length - after.length), after };
  };

  // Concatenative: render(a ++ b) == render(a) + render(b) on every probe.
  for (const probe of PROBES) {
    const whole = render(probe, false);
    const pieces = probe.map((m) => render([m], false)).join('');
    if (whole !== pieces) {
      fail(`is not concatenative: rendering ${probe.length} messages at once gives ${JSON.stringify(whole.slice(0, 200))}, one at a time ${JSON.stringify(pieces.slice(0, 200))}`);
    }
    for (const m of probe) split(m);
  }
  // The generation prompt is what add_generation_prompt appends, the same after any history.
  const prompts = new Set([...PROBES, []].map((p) => {
    const without = render(p, false);
    const withPrompt = render(p, true);
    if (!withPrompt.startsWith(without)) fail('with add_generation_prompt does not extend the rendering without it');
    return withPrompt.slice(without.length);
  }));
  if (prompts.size !== 1) fail('has a generation prompt that depends on the history');
  const generationPrompt = [...prompts][0]!;
  if (generationPrompt === '') fail('adds no generation prompt (add_generation_prompt renders nothing)');
  const assistant = split({ role: 'assistant', content: 'x' });
  if (assistant.before !== generationPrompt) {
    fail(`opens assistant messages with ${JSON.stringify(assistant.before)} but its generation prompt is ${JSON.stringify(generationPrompt)}`);
  }
  return new SegmentTemplate('jinja', tokenizer, split, generationPrompt, assistant.after);
}

/**
 * The chat template of a local model directory: its tokenizer_config.json's Jinja
 * chat_template when it has one (checked as above), else the default template.
 */
export async function loadChatTemplate(modelDir: string, tokenizer: Tokenizer): Promise<ChatTemplate> {
  const { config, file } = await readTokenizerConfig(modelDir);
  let source = config.chat_template;
  if (Array.isArray(source)) {
    // Newer configs list named templates; "default" is the chat one.
    source = source.find((t) => t.name === 'default')?.template ?? null;
  }
  if (typeof source !== 'string' || source.trim() === '') return defaultChatTemplate(tokenizer);
  const specialTokens: Record<string, string> = {};
  for (const name of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
    const raw = (config as Record<string, unknown>)[name];
    const value = typeof raw === 'string' ? raw : typeof raw === 'object' && raw !== null ? (raw as { content?: unknown }).content : undefined;
    if (typeof value === 'string') specialTokens[name] = value;
  }
  return jinjaChatTemplate(source, tokenizer, specialTokens, file!);
}
