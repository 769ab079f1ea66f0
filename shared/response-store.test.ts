// Items and response records on the filesystem store, through the session store directly:
// items are committed with their version, a version's parent chain and a turn's version are
// found across manifest pages, item and response ids round-trip and stay inside their tenant.
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildItemsFile, parseItemId, replyItemId } from './conversation-items.ts';
import { completeRecord, newResponseId, parseResponseId, type ResponseSpec } from './response-record.ts';
import { ResponseStore } from './response-store.ts';
import { SessionStore } from './session-store.ts';
import { FsStateStore } from './state-store-fs.ts';
import { EMPTY_TRANSCRIPT_ROOT } from './transcript-hash.ts';

const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
let root: string;
let objects: FsStateStore;
let sessions: SessionStore;

beforeAll(async () => {
  root = await mkdtemp(join(base, 'ms-response-store-'));
  objects = new FsStateStore(root);
  sessions = new SessionStore(objects, { recentVersions: 16 });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('ids', () => {
  it('item and response ids round-trip and refuse anything else', () => {
    const id = replyItemId('conv_abc-1', 't_xyz', 3);
    expect(id).toMatch(/^msg_[A-Za-z0-9_-]+$/);
    expect(parseItemId(id)).toEqual({ session: 'conv_abc-1', turnId: 't_xyz', index: 3 });
    expect(parseItemId('msg_' + Buffer.from('../x/t/1').toString('base64url'))).toBeUndefined();
    expect(parseItemId('msg_abc')).toBeUndefined();
    const rid = newResponseId('s_session');
    expect(parseResponseId(rid)).toMatchObject({ session: 's_session' });
    expect(parseResponseId(newResponseId(null))).toBeUndefined(); // store: false names no session
    expect(parseResponseId('resp_' + Buffer.from('a/b/c').toString('base64url'))).toBeUndefined();
  });
});

describe('items with versions, and response records', () => {
  it('walks a long parent chain across pages, finds a turn, and keeps records inside their tenant', async () => {
    await sessions.create({ tenant: 't', session: 's_long', model: 'm', metadata: {}, transcriptRoot: EMPTY_TRANSCRIPT_ROOT });
    for (let i = 1; i <= 100; i++) {
      // Version 50 branches from 10: the head's chain skips 11-49.
      const parent = i === 50 ? 10 : i - 1;
      await sessions.commitVersion({
        tenant: 't',
        session: 's_long',
        fence: 1,
        state: new TextEncoder().encode(`state ${i}`),
        version: { parent, tokens_absorbed: i, transcript_hash: 'a'.repeat(64), origin: 'turn', turn_id: `turn-${i}` },
        items: buildItemsFile({ session: 's_long', turnId: `turn-${i}`, messages: [{ role: 'user', content: `q${i}` }], instructions: null, reply: { text: `a${i}`, complete: true } }),
      });
    }
    const { manifest } = (await sessions.read('t', 's_long'))!;
    expect(manifest.paged_below).toBeGreaterThan(0);
    const reader = sessions.versionReader('t', 's_long', manifest);
    const chain: number[] = [];
    for await (const v of reader.ancestry(manifest.head)) chain.push(v.version);
    expect(chain).toEqual([...Array.from({ length: 51 }, (_, k) => 100 - k), ...Array.from({ length: 11 }, (_, k) => 10 - k)]);
    expect((await reader.byTurn('turn-7'))?.version).toBe(7);
    expect(await reader.byTurn('no-such-turn')).toBeUndefined();
    const items = await sessions.readItems('t', 's_long', 7);
    expect(items?.input.map((i) => i.type === 'message' && i.content[0]!.text)).toEqual(['q7']);
    expect(items?.output[0]).toMatchObject({ id: replyItemId('s_long', 'turn-7', 1), role: 'assistant', status: 'completed' });

    const records = new ResponseStore(objects);
    const spec: ResponseSpec = {
      id: newResponseId('s_long'),
      created_at: 1,
      model: 'm',
      instructions: null,
      previous_response_id: null,
      conversation: null,
      metadata: {},
      store: true,
      temperature: 1,
      top_p: 1,
      max_output_tokens: null,
      truncation: 'disabled',
      parallel_tool_calls: true,
      tool_choice: 'auto',
      input_items: 1,
    };
    const result = {
      turn_id: 'turn-100',
      session: 's_long',
      version: 100,
      base_version: 99,
      output: 'a100',
      finish_reason: 'stop' as const,
      usage: { input_tokens: 3, output_tokens: 2, cached_tokens: 99, tokens_absorbed: 100 },
    };
    await records.write(completeRecord('t', spec, result));
    await records.write({ ...completeRecord('t', spec, result), output_text: 'a retry writes nothing new' });
    expect(await records.read('t', spec.id)).toMatchObject({ version: 100, output_text: 'a100', status: 'completed' });
    expect(await records.read('other-tenant', spec.id)).toBeNull();
    // Deleting the session takes its responses with it.
    await sessions.delete('t', 's_long');
    expect(await records.read('t', spec.id)).toBeNull();
  });
});
