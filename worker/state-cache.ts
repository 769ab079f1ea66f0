// The worker's hot states: a bytes-bounded LRU of engine state handles, keyed by session
// incarnation and version. A turn takes its starting state out (the handle is then the
// turn's alone, so nothing evicts it mid-turn) and puts the new version's state back after
// the commit. Evicted handles are freed in the engine.
import type { Engine, StateHandle } from './engine/engine.ts';

export function stateCacheKey(tenant: string, session: string, incarnation: string, version: number): string {
  return `${tenant}/${session}/${incarnation}@${version}`;
}

/** A built cartridge's state (copied, never advanced: sessions and chats start from copies). */
export function cartridgeCacheKey(tenant: string, cartridge: string): string {
  return `cartridge:${tenant}/${cartridge}`;
}

/** A stateless chat's prefix state (worker/prefix-states.ts), by transcript hash. */
export function prefixCacheKey(tenant: string, transcriptHash: string): string {
  return `prefix:${tenant}/${transcriptHash}`;
}

export class StateCache {
  /** Map iteration order is insertion order: the first entry is the least recently used. */
  private readonly entries = new Map<string, StateHandle>();

  constructor(
    private readonly engine: Pick<Engine, 'freeState'>,
    readonly maxBytes: number,
    readonly bytesPerState: number,
  ) {}

  get bytes(): number {
    return this.entries.size * this.bytesPerState;
  }

  get size(): number {
    return this.entries.size;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Remove and return the state (ownership passes to the caller). */
  take(key: string): StateHandle | undefined {
    const state = this.entries.get(key);
    if (state) this.entries.delete(key);
    return state;
  }

  /** Keep `state` (ownership passes to the cache); evicts least recently used states to stay within maxBytes. */
  put(key: string, state: StateHandle): void {
    const previous = this.entries.get(key);
    if (previous && previous !== state) this.engine.freeState(previous);
    this.entries.delete(key);
    if (this.bytesPerState > this.maxBytes) {
      this.engine.freeState(state);
      return;
    }
    this.entries.set(key, state);
    while (this.bytes > this.maxBytes) {
      const [oldestKey, oldest] = this.entries.entries().next().value as [string, StateHandle];
      this.entries.delete(oldestKey);
      this.engine.freeState(oldest);
    }
  }

  clear(): void {
    for (const state of this.entries.values()) this.engine.freeState(state);
    this.entries.clear();
  }
}
