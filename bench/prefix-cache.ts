// The durable prefix cache (docs/prefix-cache.md): time to first token of a stateless chat
// whose history is ~4k tokens, sent the first time (cold: the whole history is prefilled), sent
// again (reused: the worker holds the state hot), as the conversation's next request (the state
// after the reply), and sent again after a restart of the whole stack with an empty Redis (the
// state comes from the store; the index is rebuilt by listing it). Then the bytes the cache
// stored per conversation.
//
//   npx tsx bench/prefix-cache.ts [--conversations 5] [--tokens 4096]     (ENGINE=ort by default)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PrefixCache } from '../shared/prefix-cache.ts';
import { FsStateStore } from '../shared/state-store-fs.ts';
import { benchModel, percentile, startBenchStack, streamedChat, type BenchStack } from './serving-harness.ts';

const { values: args } = parseArgs({ options: { conversations: { type: 'string', default: '5' }, tokens: { type: 'string', default: '4096' } } });
const conversations = Number(args.conversations);
const historyTokens = Number(args.tokens);

const modelDir = await benchModel('serving-medium', { hiddenSize: 384, numLayers: 6, stateSize: 16 });
const storeDir = await mkdtemp(join(tmpdir(), 'ms-bench-prefix-'));
const env = { STATE_STORE: `file:${storeDir}`, TURN_TIMEOUT_MS: '600000' };

/** A ~`tokens`-token history of a byte-level model (about a token a character), distinct per conversation. */
function history(i: number, tokens: number): Array<{ role: 'system' | 'user' | 'assistant'; content: string }> {
  const out: Array<{ role: 'system' | 'user' | 'assistant'; content: string }> = [{ role: 'system', content: `Conversation ${i}. Be brief.` }];
  let length = out[0]!.content.length;
  for (let turn = 0; length < tokens - 200; turn++) {
    const user = `Note ${turn} of conversation ${i}: the shipment ${turn * 7 + i} left the warehouse at ${turn % 24}:00 and should arrive within ${turn % 5 + 1} days.`;
    const assistant = `Noted: shipment ${turn * 7 + i}, ${turn % 5 + 1} days.`;
    out.push({ role: 'user', content: user }, { role: 'assistant', content: assistant });
    length += user.length + assistant.length + 30;
  }
  out.push({ role: 'user', content: 'Which shipment left last?' });
  return out;
}

const ask = (stack: BenchStack, messages: unknown[]) => streamedChat(stack.url, { messages, max_tokens: 8, temperature: 0 });

let stack = await startBenchStack(modelDir, env);
try {
  const worker = stack.serving.workers[0]!;
  const stateBytes = worker.model.engine.model.stateBytes;
  await ask(stack, [{ role: 'user', content: 'warm up' }]);
  const cold: number[] = [];
  const hot: number[] = [];
  const next: number[] = [];
  const fed = { cold: 0, hot: 0, next: 0, restart: 0 };
  const replies: string[] = [];
  for (let i = 0; i < conversations; i++) {
    const h = history(i, historyTokens);
    const a = await ask(stack, h);
    const b = await ask(stack, h);
    if (b.text !== a.text || b.cachedTokens === 0) throw new Error(`conversation ${i}: the reused state answered differently or was not used`);
    const c = await ask(stack, [...h, { role: 'assistant', content: a.text }, { role: 'user', content: 'And the one before?' }]);
    cold.push(a.ttftMs);
    hot.push(b.ttftMs);
    next.push(c.ttftMs);
    fed.cold += a.promptTokens - a.cachedTokens;
    fed.hot += b.promptTokens - b.cachedTokens;
    fed.next += c.promptTokens - c.cachedTokens;
    replies.push(a.text);
    if (i === 0) console.log(`prefix cache: ${a.promptTokens}-token history (${h.length} messages), engine ${worker.model.engine.kind}, model hidden 384 x 6 layers (state ${stateBytes} B), fs store, loopback; ${conversations} conversations`);
  }

  // A restart of everything but the store: a fresh Redis (the index is gone) and a cold worker.
  await stack.stop();
  stack = await startBenchStack(modelDir, env);
  await ask(stack, [{ role: 'user', content: 'warm up' }]);
  const restart: number[] = [];
  for (let i = 0; i < conversations; i++) {
    const r = await ask(stack, history(i, historyTokens));
    if (r.text !== replies[i] || r.cachedTokens === 0) throw new Error(`conversation ${i}: after the restart the stored state was not used`);
    restart.push(r.ttftMs);
    fed.restart += r.promptTokens - r.cachedTokens;
  }

  const objects = (await new FsStateStore(storeDir).listPage(PrefixCache.tenantPrefix('local'), { limit: 10_000 })).objects;
  const stored = objects.reduce((n, o) => n + o.bytes, 0);
  const p50 = (v: number[]) => percentile(v, 50);
  const line = (label: string, v: number[], tokens: number) =>
    console.log(`  ${label.padEnd(46)} p50 ${p50(v).toFixed(1).padStart(8)} ms   max ${Math.max(...v).toFixed(1).padStart(8)} ms   fed ${(tokens / conversations).toFixed(0).padStart(5)} tokens`);
  console.log('time to first token:');
  line('cold (whole history prefilled)', cold, fed.cold);
  line('same history again (reused, hot on the worker)', hot, fed.hot);
  line('next request of the conversation (reused)', next, fed.next);
  line('same history after a restart (from the store)', restart, fed.restart);
  console.log(`  cold / reused: ${(p50(cold) / p50(hot)).toFixed(1)}x   cold / after restart: ${(p50(cold) / p50(restart)).toFixed(1)}x`);
  console.log(
    `stored: ${objects.length} states, ${stored} bytes in all = ${(stored / conversations / 1024).toFixed(1)} KiB per conversation of 2 requests (${(stored / objects.length / 1024).toFixed(1)} KiB a state, whatever the history's length)`,
  );
} finally {
  await stack.stop();
  await rm(storeDir, { recursive: true, force: true });
}
