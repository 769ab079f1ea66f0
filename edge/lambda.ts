// The edge as an AWS Lambda function with response streaming (SSE tokens as they come).
// streamHandle calls the Lambda-only global `awslambda.streamifyResponse` at import, so it
// lives here and nowhere else. API keys come from Secrets Manager (API_KEYS_SECRET_ID) at cold
// start; a Lambda edge always authenticates.
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { streamHandle } from 'hono/aws-lambda';
import { ApiKeyList, ConfigError, EdgeConfigSchema, parseEnv } from '../shared/config.ts';
import { createApp } from './app.ts';
import { createEdgeDeps } from './deps.ts';

async function build() {
  const config = parseEnv(EdgeConfigSchema, process.env);
  let apiKeys = config.API_KEYS;
  if (config.API_KEYS_SECRET_ID) {
    const secrets = new SecretsManagerClient({});
    const out = await secrets.send(new GetSecretValueCommand({ SecretId: config.API_KEYS_SECRET_ID }));
    const parsed = ApiKeyList.safeParse(out.SecretString ?? '');
    if (!parsed.success) throw new ConfigError(`API_KEYS_SECRET_ID: the secret is not key:tenant,key:tenant`);
    apiKeys = parsed.data;
    secrets.destroy();
  }
  if (!apiKeys || apiKeys.size === 0) throw new ConfigError('the Lambda edge needs API keys: set API_KEYS_SECRET_ID (or API_KEYS)');
  return createApp(createEdgeDeps(config, { apiKeys }));
}

// Built once per Lambda instance, reused by its later invocations.
const app = await build();

export const handler = streamHandle(app);
