// What the engine tests share: comparing logits, deterministic token streams, running tokens
// one decode step at a time, states prefilled with given histories, and a state that has
// counted a given number of tokens.
import type { Engine, Logits, StateHandle } from '../engine.ts';
import { exportHostState, zeroHostState } from '../host-state.ts';

/** The largest absolute difference of two equally long arrays (throws if the lengths differ). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** n token ids below `vocab`, a different stream per seed. */
export function tokensFor(n: number, vocab: number, seed: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % vocab);
}

/** Logits of every token fed one decode step at a time into `state` (a new state by default). */
export async function stepLogits(engine: Engine, tokens: Int32Array, state?: StateHandle): Promise<Float32Array> {
  const s = state ?? (await engine.newState());
  const rows: Logits[] = [];
  for (const t of tokens) rows.push(await engine.decode([{ state: s, token: t }]));
  const V = engine.model.vocabRows;
  const out = new Float32Array(tokens.length * V);
  rows.forEach((r, i) => out.set(r.data, i * V));
  return out;
}

/** A new state per history, each prefilled with it (an empty history leaves its state new). */
export async function prefilledStates(engine: Engine, histories: readonly Int32Array[]): Promise<StateHandle[]> {
  const states: StateHandle[] = [];
  for (const h of histories) {
    const s = await engine.newState();
    if (h.length) await engine.prefill(s, h);
    states.push(s);
  }
  return states;
}

/** A zero state that has counted `position` tokens (a hybrid's ring slots are live zero keys), as .mstate bytes. */
export function zeroStateAt(engine: Engine, position: number): Uint8Array {
  const s = zeroHostState('reference', engine.model);
  s.tokensAbsorbed = position;
  return exportHostState(engine.model, s, { parentVersion: null, transcriptHash: null });
}
