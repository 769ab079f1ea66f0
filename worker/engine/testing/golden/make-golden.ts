// Regenerates the golden fixtures: small random checkpoints (committed) and the logits the
// independent PyTorch reference (tools/reference/mamba_ref.py, float64) computes for them.
// The engines' tests compare against these numbers, so no engine is only checked against
// itself.
//
//   npx tsx worker/engine/testing/golden/make-golden.ts      (needs Debian's python3-torch: /usr/bin/python3)
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeRandomCheckpoint } from '../../../model/testing/random-checkpoint.ts';
import { GOLDEN_CASES, goldenTokens } from './cases.ts';

const here = dirname(fileURLToPath(import.meta.url));
const python = process.env.PYTHON ?? '/usr/bin/python3';

for (const c of GOLDEN_CASES) {
  const dir = join(here, c.name);
  await writeRandomCheckpoint(dir, c.options);
  const tokens = goldenTokens(c);
  const run = (mode: 'full' | 'step') =>
    JSON.parse(
      execFileSync(python, ['tools/reference/mamba_ref.py', '--model', dir, '--tokens', tokens.join(','), '--mode', mode, '--position', String(c.position ?? 0)], {
        encoding: 'utf8',
        maxBuffer: 64 * 1024 * 1024,
      }),
    ) as { logits: number[][] };
  const full = run('full');
  const step = run('step');
  await writeFile(
    join(dir, 'golden.json'),
    JSON.stringify({ reference: 'tools/reference/mamba_ref.py (PyTorch, float64)', tokens, position: c.position ?? 0, full: full.logits, step: step.logits }),
  );
  console.log(`${c.name}: ${tokens.length} tokens, ${full.logits[0]!.length} logits per row`);
}
