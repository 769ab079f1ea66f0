// The local stack in the foreground (`npm start`, `mamba-serve serve`). Ctrl-C stops the edge,
// lets the worker finish or release its turns, and stops the private Redis.
import { ConfigError } from '../shared/config.ts';
import { startLocalStack } from './local-stack.ts';
import { RedisServerMissingError } from './redis-server.ts';

const say = (line: string) => process.stdout.write(`${line}\n`);

export async function serveLocalStack(): Promise<void> {
  say('mamba-serve: starting the local stack (Redis, one worker, the edge)…');
  say('  the first start builds the model\'s ONNX graph into .cache/ and takes longer');
  let stack;
  try {
    stack = await startLocalStack({ stdio: 'inherit', redisOwnProcessGroup: true });
  } catch (e) {
    if (e instanceof RedisServerMissingError || e instanceof ConfigError) {
      process.stderr.write(`mamba-serve: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const auth = stack.env['API_KEYS'] ? " -H 'Authorization: Bearer YOUR_KEY'" : '';
  say('');
  if (stack.randomModel) {
    say('  NOTE: models/demo is not in this checkout: serving a RANDOM, UNTRAINED model (its replies are gibberish).');
    say('        Set MODEL_DIR to a Hugging Face Mamba checkpoint directory (or s3:// prefix) to serve a real one.');
  }
  if (!stack.env['API_KEYS']) say('  NOTE: API_KEYS is not set: no authentication, listening on loopback only.');
  say(`mamba-serve is ready at ${stack.url}  (model ${stack.modelId}, engine ${stack.engine}, Redis ${stack.redisUrl}, store ${stack.env['STATE_STORE']})`);
  // Append mode: the line answers on every run and after restarts (the session keeps what it
  // was told before; a plain chat would have to resend the whole history).
  say(`  try: curl -s ${stack.url}/v1/chat/completions -H 'Content-Type: application/json'${auth} \\`);
  say(`         -H 'X-Session-Id: my-first-session' -H 'X-Session-Append: true' \\`);
  say(`         -d '{"messages":[{"role":"user","content":"My locker code is 4812."}],"max_tokens":64,"temperature":0}'`);
  say('  Ctrl-C stops everything.');

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    say(`\nmamba-serve: ${signal}, stopping…`);
    stack.stop().then(
      () => {
        say('mamba-serve: stopped.');
        process.exit(0);
      },
      (e) => {
        process.stderr.write(`mamba-serve: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // If a service dies on its own, say so and take the rest down.
  for (const [name, service] of [['worker', stack.worker], ['edge', stack.edge]] as const) {
    service.child.once('exit', (code, signal) => {
      if (!stopping) {
        process.stderr.write(`mamba-serve: the ${name} exited (${signal ?? code}); stopping\n`);
        stop('exit');
      }
    });
  }
}
