// What the checkpoint tests share: editing a written checkpoint's config.json, and the
// ModelError that opening a directory fails with.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint } from '../checkpoint.ts';
import { ModelError } from '../errors.ts';

/** Rewrite `dir`/config.json through `edit`. */
export async function editConfig(dir: string, edit: (c: Record<string, any>) => void): Promise<void> {
  const path = join(dir, 'config.json');
  const c = JSON.parse(await readFile(path, 'utf8')) as Record<string, any>;
  edit(c);
  await writeFile(path, JSON.stringify(c));
}

/** The ModelError that opening `dir` fails with, as "code: message" (throws if it opens). */
export async function openFailure(dir: string): Promise<string> {
  try {
    await openCheckpoint(dir);
  } catch (e) {
    if (!(e instanceof ModelError)) throw e;
    return `${e.code}: ${e.message}`;
  }
  throw new Error(`${dir} opened without error`);
}
