// publishDirectory: a cache directory appears whole or not at all, also when several makers in
// one process fill it at the same moment (engines loading side by side).
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { publishDirectory } from './publish-directory.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-publish-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

it('eight makers in one process at once: every one succeeds, one whole directory stays, no temporary one', async () => {
  const dir = join(root, 'build');
  const isWhole = async () => (await readFile(join(dir, 'meta.json'), 'utf8').catch(() => '')) === '{"whole":true}';
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      publishDirectory(
        dir,
        async (tmp) => {
          await writeFile(join(tmp, 'weights.bin'), Buffer.alloc(1024));
          // Each takes its own time, so some are still writing when the first is in place.
          await new Promise((r) => setTimeout(r, 5 + 4 * i));
          await writeFile(join(tmp, 'meta.json'), '{"whole":true}');
        },
        isWhole,
      ),
    ),
  );
  expect(await isWhole()).toBe(true);
  expect((await readdir(root)).sort()).toEqual(['build']);
});

it('a fill that fails leaves nothing behind and says why', async () => {
  const dir = join(root, 'failed');
  await expect(publishDirectory(dir, async () => Promise.reject(new Error('disk full')), async () => false)).rejects.toThrow('disk full');
  expect((await readdir(root)).filter((n) => n.startsWith('failed'))).toEqual([]);
});
