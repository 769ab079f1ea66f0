// `npm start`: the local stack in the foreground (stack/serve.ts; `mamba-serve serve` is the same).
import { serveLocalStack } from './serve.ts';

void serveLocalStack().catch((e) => {
  process.stderr.write(`mamba-serve: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
