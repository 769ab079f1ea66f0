// A cache directory that is whole or absent, never half-written: filled beside its final place
// (`<dir>.tmp-<pid>-<random>`: engines loading at once in one process each fill their own) and
// renamed into place. A crash leaves only a temporary directory that no later start trusts, and
// two makers of the same directory at once both end with a whole one (the rename of the second
// fails on the first's, which is then checked).
// Graph builds (graph-cache.ts) and packed-weights files (packed-weights.ts) are made this way.
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm } from 'node:fs/promises';

/** Make `dir` by `fill`ing a temporary directory and renaming it; `isWhole` checks another process's when the rename loses a race. */
export async function publishDirectory(dir: string, fill: (tmp: string) => Promise<void>, isWhole: () => Promise<boolean>): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await mkdir(tmp, { recursive: true });
  try {
    await fill(tmp);
    try {
      await rename(tmp, dir);
    } catch (err) {
      if (!(await isWhole())) throw err;
      await rm(tmp, { recursive: true, force: true }); // another process won the race
    }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
