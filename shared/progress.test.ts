// What a person watching long work sees: nothing for quick work, one line every few seconds
// in a log, a bar redrawn in place on a terminal, and always the last figure.
import { describe, expect, it } from 'vitest';
import { startProgress } from './progress.ts';

function sinkOf(isTTY: boolean) {
  const chunks: string[] = [];
  return { chunks, sink: { isTTY, columns: 100, write: (c: string) => chunks.push(c) } };
}

describe('progress', () => {
  it('prints nothing for work that ends within the quiet time', () => {
    let t = 0;
    const { chunks, sink } = sinkOf(false);
    const p = startProgress({ label: 'building', total: 100, sink, now: () => t });
    t = 500;
    p.update(50);
    t = 1500;
    p.update(100);
    p.finish();
    expect(chunks).toEqual([]);
  });

  it('writes a line every few seconds to a log, then the final figure', () => {
    let t = 0;
    const { chunks, sink } = sinkOf(false);
    const p = startProgress({ label: 'downloading model.safetensors', total: 500e6, sink, now: () => t });
    for (t = 0; t <= 12_000; t += 250) p.update((t / 12_000) * 400e6);
    t = 12_000;
    p.finish();
    // first at 2 s, then every 5 s (7 s, 12 s), then the final one
    expect(chunks).toHaveLength(4);
    expect(chunks.every((c) => c.endsWith('\n') && !c.includes('\r'))).toBe(true);
    expect(chunks[0]).toMatch(/^downloading model\.safetensors:\s+\d+% \d+\.\d MB \/ 500\.0 MB \d+\.\d MB\/s \d+ s left\n$/);
    expect(chunks.at(-1)).toMatch(/ 80% 400\.0 MB \/ 500\.0 MB 33\.3 MB\/s/);
  });

  it('redraws a bar in place on a terminal and ends the line when done', () => {
    let t = 0;
    const { chunks, sink } = sinkOf(true);
    const p = startProgress({ label: 'prefill', total: 4000, unit: 'tokens', sink, now: () => t });
    for (t = 0; t <= 3000; t += 50) p.update(t);
    t = 3000;
    p.finish();
    expect(chunks.length).toBeGreaterThan(5);
    expect(chunks.every((c) => c.startsWith('\rprefill ['))).toBe(true);
    expect(chunks.at(-1)).toMatch(/\] +75% 3,000 tokens \/ 4,000 tokens 1,000 tok\/s 1 s left\x1b\[K\n$/);
    expect(chunks.slice(0, -1).some((c) => c.endsWith('\n'))).toBe(false);
  });
});
