// How the CPU benchmarks time an engine's decode step and prefill (bench/engine-cpu.ts,
// hybrid-cpu.ts, native-kernels.ts): one definition each, so their figures are comparable.
import type { Engine } from '../worker/engine/engine.ts';
import { median } from './stats.ts';

/**
 * The median time (ms) of a decode step for `batch` sessions that have each read `prompt`
 * first: 3 warm-up steps, then `steps` timed ones, a different token for every session and
 * step. The median, because on a shared machine a neighbour's burst inflates a mean.
 */
export async function medianDecodeStepMs(engine: Engine, batch: number, steps: number, prompt: Int32Array = Int32Array.of(1, 2, 3)): Promise<number> {
  const states = await Promise.all(Array.from({ length: batch }, () => engine.newState()));
  for (const s of states) await engine.prefill(s, prompt);
  // As the scheduler decodes: the logits are read before the next step (reuseOutput).
  const step = (i: number) => engine.decode(states.map((state, b) => ({ state, token: (i * 31 + b * 7) % 50000 })), { reuseOutput: true });
  for (let i = 0; i < 3; i++) await step(i);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const started = performance.now();
    await step(i);
    times.push(performance.now() - started);
  }
  for (const s of states) engine.freeState(s);
  return median(times);
}

/**
 * An engine's prefill rate, tokens a second: a fresh session reads a `length`-token prompt (the
 * logits of its last token), after a 64-token warm-up; the median of `rounds` such reads.
 */
export async function prefillTokensPerSecond(engine: Engine, length: number, rounds = 1): Promise<number> {
  const tokens = Int32Array.from({ length }, (_, i) => (i * 7919) % 50000);
  const warm = await engine.newState();
  await engine.prefill(warm, tokens.subarray(0, 64));
  engine.freeState(warm);
  const rates: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const state = await engine.newState();
    const started = performance.now();
    await engine.prefill(state, tokens);
    rates.push(length / ((performance.now() - started) / 1000));
    engine.freeState(state);
  }
  return median(rates);
}
