// Responses API input → what a session absorbs: items become messages (role and text) plus the
// shape each is listed with as a conversation item. Only what a Mamba model can read is taken:
// text parts, messages of the four roles, function call outputs, and references to items this
// server issued; anything else is a 400 naming the item. Also the request-level checks of the
// parameters a Mamba model cannot honour.
import type { Message } from '../shared/api-schemas.ts';
import { itemText, parseItemId, type ItemShape } from '../shared/conversation-items.ts';
import { ApiError } from '../shared/errors.ts';
import type { CreateResponseRequest, InputItemIn } from '../shared/responses-api.ts';
import type { SessionStore } from '../shared/session-store.ts';

export interface AbsorbedInput {
  readonly messages: Message[];
  readonly shapes: ItemShape[];
}

const TEXT_PARTS = new Set(['input_text', 'output_text', 'text']);
const ROLES = new Set(['user', 'assistant', 'system', 'developer']);

function bad(code: 'invalid_request' | 'unsupported_content', path: string, message: string): ApiError {
  return new ApiError(code, `${path}: ${message}`, { details: [{ path, message }] });
}

function textOf(content: InputItemIn['content'], path: string): string {
  if (content === undefined) throw bad('invalid_request', path, 'is required');
  if (typeof content === 'string') return content;
  return content
    .map((part, j) => {
      if (!TEXT_PARTS.has(part.type)) {
        throw bad('unsupported_content', `${path}.${j}`, `content of type "${part.type}" is not supported: a Mamba language model reads text parts only`);
      }
      if (typeof part.text !== 'string') throw bad('invalid_request', `${path}.${j}.text`, 'is required');
      return part.text;
    })
    .join('');
}

/** Items → messages. `item_reference`s are looked up in the tenant's sessions (ids from parseItemId). */
export async function absorbInput(input: CreateResponseRequest['input'], tenant: string, sessions: SessionStore, where = 'input'): Promise<AbsorbedInput> {
  if (typeof input === 'string') return { messages: [{ role: 'user', content: input }], shapes: [{ type: 'message', role: 'user' }] };
  const messages: Message[] = [];
  const shapes: ItemShape[] = [];
  for (const [i, item] of input.entries()) {
    const path = `${where}.${i}`;
    const type = item.type ?? (item.role !== undefined ? 'message' : undefined);
    if (type === 'message') {
      if (item.role === undefined || !ROLES.has(item.role)) throw bad('invalid_request', `${path}.role`, 'must be one of user, assistant, system, developer');
      const role = item.role as 'user' | 'assistant' | 'system' | 'developer';
      messages.push({ role: role === 'developer' ? 'system' : role, content: textOf(item.content, `${path}.content`) });
      shapes.push({ type: 'message', role });
    } else if (type === 'function_call_output') {
      if (item.call_id === undefined) throw bad('invalid_request', `${path}.call_id`, 'is required');
      // A tool's output is read as a user message by the chat template (docs/chat-template.md).
      messages.push({ role: 'tool', content: textOf(item.output, `${path}.output`) });
      shapes.push({ type: 'function_call_output', call_id: item.call_id });
    } else if (type === 'item_reference') {
      const found = item.id === undefined ? undefined : await resolveItem(tenant, item.id, sessions);
      if (!found) throw new ApiError('item_not_found', `${path}: no item ${item.id ?? '(no id)'} here`, { details: [{ path: `${path}.id`, message: 'not found' }] });
      messages.push(found.message);
      shapes.push(found.shape);
    } else {
      throw bad('unsupported_content', path, `items of type "${type ?? '(none)'}" are not supported (messages, function_call_output and item_reference are)`);
    }
  }
  return { messages, shapes };
}

/** The message an issued item id names, read from the items file of the version its turn committed. */
async function resolveItem(tenant: string, id: string, sessions: SessionStore): Promise<{ message: Message; shape: ItemShape } | undefined> {
  const ref = parseItemId(id);
  if (!ref) return undefined;
  const found = await sessions.read(tenant, ref.session);
  if (!found) return undefined;
  const entry = await sessions.versionReader(tenant, ref.session, found.manifest).byTurn(ref.turnId);
  if (!entry?.items) return undefined;
  const file = await sessions.readItems(tenant, ref.session, entry.version);
  const item = file && [...file.input, ...file.output].find((it) => it.id === id);
  if (!item) return undefined;
  if (item.type === 'function_call_output') return { message: { role: 'tool', content: item.output }, shape: { type: 'function_call_output', call_id: item.call_id } };
  return { message: { role: item.role === 'developer' ? 'system' : item.role, content: itemText(item) }, shape: { type: 'message', role: item.role } };
}

/** Refuse what a Mamba model cannot do, before anything is queued. */
export function checkResponseParameters(body: CreateResponseRequest): void {
  const unsupported = (path: string, message: string) => new ApiError('unsupported_parameter', `${path}: ${message}`, { details: [{ path, message }] });
  if (body.tools && body.tools.length > 0) {
    throw new ApiError(
      'tools_unsupported',
      "tools: this model's chat template cannot render tool definitions, so it cannot call tools (send no tools, or an empty list)",
      { details: [{ path: 'tools', message: 'not supported by the chat template' }] },
    );
  }
  const choice = body.tool_choice;
  if (choice != null && choice !== 'none' && choice !== 'auto') {
    throw new ApiError('tools_unsupported', 'tool_choice: no tools can be called here (only "auto" and "none" are accepted)', {
      details: [{ path: 'tool_choice', message: 'only auto or none' }],
    });
  }
  const format = body.text?.format?.type;
  if (format !== undefined && format !== 'text') throw unsupported('text.format', `"${format}" output is not supported: the reply is plain text (type "text")`);
  if (body.background) throw unsupported('background', 'background responses are not supported: stream, or wait for the answer');
  if (body.prompt != null) throw unsupported('prompt', 'stored prompt templates are not supported: send instructions and input');
  if (body.conversation != null && body.previous_response_id != null) {
    throw new ApiError('invalid_request', 'conversation and previous_response_id cannot be used together', {
      details: [{ path: 'conversation', message: 'mutually exclusive with previous_response_id' }],
    });
  }
  if (body.cartridge !== undefined && (body.conversation != null || body.previous_response_id != null)) {
    throw new ApiError('invalid_request', 'cartridge starts a new chain: it cannot be used with conversation or previous_response_id (a conversation takes its cartridge when it is created)', {
      details: [{ path: 'cartridge', message: 'only for a new chain of responses' }],
    });
  }
}
