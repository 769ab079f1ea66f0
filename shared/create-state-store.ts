// Builds the state store a process was configured with (STATE_STORE and the S3_* variables).
import type { StateStoreLocation } from './config.ts';
import { DeadlineStateStore } from './state-store-deadline.ts';
import { FsStateStore } from './state-store-fs.ts';
import { S3StateStore } from './state-store-s3.ts';
import type { StateStore } from './state-store.ts';

export interface StateStoreSettings {
  readonly STATE_STORE: StateStoreLocation;
  readonly S3_ENDPOINT?: string | undefined;
  readonly S3_FORCE_PATH_STYLE: boolean;
  readonly S3_REGION?: string | undefined;
  /** Deadline of one store request (STORE_TIMEOUT_MS). */
  readonly STORE_TIMEOUT_MS: number;
}

export function createStateStore(config: StateStoreSettings, log?: (message: string) => void): StateStore {
  const location = config.STATE_STORE;
  if (location.kind === 'file') return new DeadlineStateStore(new FsStateStore(location.path), config.STORE_TIMEOUT_MS);
  return new S3StateStore({
    bucket: location.bucket,
    prefix: location.prefix,
    forcePathStyle: config.S3_FORCE_PATH_STYLE,
    ...(config.S3_ENDPOINT ? { endpoint: config.S3_ENDPOINT } : {}),
    ...(config.S3_REGION ? { region: config.S3_REGION } : {}),
    ...(log ? { log } : {}),
    timeoutMs: config.STORE_TIMEOUT_MS,
  });
}
