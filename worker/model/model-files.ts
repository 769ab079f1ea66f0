// File access shared by the model loaders, so every loader reports a missing or unreadable
// file the same way (ModelError model_not_found, naming the path).
import { open, stat, type FileHandle } from 'node:fs/promises';
import { ModelError } from './errors.ts';

export async function fileExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

export async function openModelFile(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'r');
  } catch (cause) {
    throw new ModelError('model_not_found', `${file}: cannot open (${(cause as Error).message})`, { cause });
  }
}
