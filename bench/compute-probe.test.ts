// The compute probe's hand-encoded WebAssembly does the arithmetic it says it does (held to the
// same chains computed in plain JavaScript), and the probe reports a rate.
import { describe, expect, it } from 'vitest';
import { CHAINS, computeModule, measureComputeRate, UNROLL } from './compute-probe.ts';

// Node's WebAssembly global (this project's TypeScript libs declare no DOM types).
type Wasm = { Module: new (bytes: Uint8Array) => unknown; Instance: new (module: unknown) => { exports: { spin(trips: number): number } } };
const wasm = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

/** One chain's 32-bit lane after `steps` steps of acc + dot_i16x8(acc, y), y's 16-bit halves 1 (low) and 3 (high). */
function chainLane(start: number, steps: number): number {
  let acc = start | 0;
  for (let i = 0; i < steps; i++) {
    const lo = (acc << 16) >> 16;
    const hi = acc >> 16;
    acc = (acc + lo * 1 + hi * 3) | 0;
  }
  return acc;
}

describe('the compute probe', () => {
  it('computes its chains as plain integer arithmetic does', () => {
    const { exports } = new wasm.Instance(new wasm.Module(computeModule()));
    for (const trips of [1, 2, 7, 1000]) {
      let want = 0;
      for (let c = 0; c < CHAINS; c++) want ^= chainLane(c + 1, trips * UNROLL);
      expect(exports.spin(trips)).toBe(want);
    }
  });

  it('reports a rate on several threads at once', async () => {
    const r = await measureComputeRate(2, { trips: 20_000, repetitions: 3 });
    expect(r.threads).toBe(2);
    expect(r.dotsPerSecond).toBeGreaterThan(0);
    expect(r.bestDotsPerSecond).toBeGreaterThanOrEqual(r.dotsPerSecond);
    await expect(measureComputeRate(1, { trips: 0 })).rejects.toBeInstanceOf(RangeError);
  });
});
