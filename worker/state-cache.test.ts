import { describe, expect, it } from 'vitest';
import type { StateHandle } from './engine/engine.ts';
import { StateCache, stateCacheKey } from './state-cache.ts';

const handle = (n: number): StateHandle => ({ engine: 'reference', tokensAbsorbed: n });

describe('StateCache', () => {
  it('keeps at most maxBytes of states, evicting (and freeing) the least recently used', () => {
    const freed: StateHandle[] = [];
    const cache = new StateCache({ freeState: (s) => void freed.push(s) }, 300, 100);
    const [a, b, c, d] = [1, 2, 3, 4].map(handle);
    cache.put('a', a!);
    cache.put('b', b!);
    cache.put('c', c!);
    expect(cache.bytes).toBe(300);
    // Taking hands the state over: it is no longer cached and never freed by the cache.
    expect(cache.take('a')).toBe(a);
    expect(cache.take('a')).toBeUndefined();
    cache.put('a', a!); // now the most recent
    cache.put('d', d!);
    expect(freed).toEqual([b]);
    expect(cache.size).toBe(3);
    cache.clear();
    expect(freed).toEqual([b, c, a, d]);
  });

  it('a state larger than the budget is freed at once', () => {
    const freed: StateHandle[] = [];
    const cache = new StateCache({ freeState: (s) => void freed.push(s) }, 50, 100);
    const s = handle(1);
    cache.put('k', s);
    expect(cache.size).toBe(0);
    expect(freed).toEqual([s]);
  });

  it('keys tell incarnations of a session apart', () => {
    expect(stateCacheKey('t', 's', 'aaaa', 1)).not.toBe(stateCacheKey('t', 's', 'bbbb', 1));
  });
});
