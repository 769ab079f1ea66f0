// Where a stateless chat starts, and what it leaves for the next one (shared/prefix-cache.ts):
// the longest prefix of its messages whose state this worker holds hot or the store holds, and,
// as the turn goes, the states at its two message boundaries worth finding again: after the
// request's messages (the same history sent again, or a regenerated reply) and after the reply
// (the next request of the conversation, which resends it). A state that has absorbed fewer
// than PREFIX_CACHE_MIN_TOKENS tokens is cheaper to recompute than to store and is not kept.
import type { Message } from '../shared/api-schemas.ts';
import type { Logger } from '../shared/logger.ts';
import type { PrefixCache } from '../shared/prefix-cache.ts';
import { transcriptPrefixHashes } from '../shared/transcript-hash.ts';
import type { Engine, StateHandle } from './engine/engine.ts';
import { prefixCacheKey, type StateCache } from './state-cache.ts';

export interface PrefixStart {
  readonly state: StateHandle;
  /** How many of the messages the state has absorbed already. */
  readonly messages: number;
  readonly source: 'cache' | 'store' | 'empty';
  /** Transcript hashes after 0..n messages. */
  readonly hashes: readonly string[];
}

export class PrefixStates {
  constructor(
    private readonly deps: {
      readonly engine: Engine;
      readonly cache: StateCache;
      readonly store: PrefixCache;
      readonly minTokens: number;
      readonly log: Logger;
    },
  ) {}

  /**
   * The starting state (owned by the caller) for `messages` on top of the state `base` gives
   * (whose transcript hash is `root`: the empty state, or a cartridge's), and how many of the
   * messages it has absorbed.
   */
  async start(
    tenant: string,
    root: string,
    messages: readonly Message[],
    base: () => Promise<{ state: StateHandle; source: PrefixStart['source'] }>,
  ): Promise<PrefixStart> {
    const { engine, cache, store } = this.deps;
    const hashes = transcriptPrefixHashes(root, messages);
    let hot = 0;
    for (let k = messages.length; k >= 1; k--) {
      if (cache.has(prefixCacheKey(tenant, hashes[k]!))) {
        hot = k;
        break;
      }
    }
    const stored = await store.lookup(tenant, engine.model.fingerprint, hashes, { longerThan: hot }).catch((e: unknown) => {
      // A cache: an unreachable index or store costs this turn its reuse, never the turn.
      this.deps.log.warn('prefix cache lookup failed', { error: String(e) });
      return undefined;
    });
    if (stored) {
      const imported = await engine.importState(stored.bytes).catch(() => undefined);
      if (imported) return { state: imported.state, messages: stored.messages, source: 'store', hashes };
    }
    if (hot > 0) {
      const state = cache.take(prefixCacheKey(tenant, hashes[hot]!));
      if (state) return { state, messages: hot, source: 'cache', hashes };
    }
    return { ...(await base()), messages: 0, hashes };
  }

  /** Whether a state that has absorbed `tokens` is worth storing. */
  worthKeeping(tokens: number): boolean {
    return this.deps.store.enabled && tokens >= this.deps.minTokens;
  }

  /**
   * Store `state` under `transcriptHash` (exported now, so the caller may go on advancing the
   * handle; written when the returned promise settles, which never rejects).
   */
  async save(tenant: string, transcriptHash: string, state: StateHandle): Promise<() => Promise<void>> {
    const bytes = await this.deps.engine.exportState(state, { parentVersion: null, transcriptHash });
    const written = this.deps.store.store(tenant, this.deps.engine.model.fingerprint, transcriptHash, bytes).catch((e: unknown) => {
      this.deps.log.warn('prefix cache write failed', { error: String(e) });
    });
    return () => written;
  }

  /** Keep `state` hot under `transcriptHash` (ownership passes to the cache). */
  keepHot(tenant: string, transcriptHash: string, state: StateHandle): void {
    this.deps.cache.put(prefixCacheKey(tenant, transcriptHash), state);
  }
}
