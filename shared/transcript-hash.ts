// The transcript hash: a chained hash over the messages a state has absorbed, stored with
// every version, so a chat request (which resends the whole conversation, as OpenAI clients
// do) can be matched to the longest stored version it extends and only the rest is fed.
//
//   H_0 = the session's root      H_{i+1} = sha256(H_i ‖ 0x00 ‖ role ‖ 0x00 ‖ content)
//
// It hashes (role, content) rather than the template-rendered text: the edge has no model
// and no chat template, and a session is bound to one model, whose template renders the same
// messages to the same text, so the two identify the same transcripts.
import { createHash } from 'node:crypto';
import type { Message } from './api-schemas.ts';

/** Root of every session that starts from the empty state. */
export const EMPTY_TRANSCRIPT_ROOT = createHash('sha256').update('mamba-serve transcript v1').digest('hex');

/**
 * Root of a session that starts from a state whose transcript we do not know (an imported
 * `.mstate` without one): chat requests on it then extend that state with all their messages.
 */
export function opaqueTranscriptRoot(stateChecksum: string): string {
  return createHash('sha256').update(`mamba-serve opaque state ${stateChecksum}`).digest('hex');
}

export function extendTranscript(previous: string, message: Pick<Message, 'role' | 'content'>): string {
  return createHash('sha256').update(previous).update('\0').update(message.role).update('\0').update(message.content).digest('hex');
}

/** [H_0 … H_n] for `messages` of length n. */
export function transcriptPrefixHashes(root: string, messages: readonly Pick<Message, 'role' | 'content'>[]): string[] {
  const out = [root];
  for (const m of messages) out.push(extendTranscript(out[out.length - 1]!, m));
  return out;
}
