// The Hub settings of a process (HF_* variables, named as Python's huggingface_hub names them),
// for the worker (validated config) and the CLI (its environment) alike.
import type { WorkerConfig } from '../../shared/config.ts';
import { defaultHubCache, type HubOptions } from './hub-source.ts';

type HubEnv = Partial<Pick<WorkerConfig, 'HF_ENDPOINT' | 'HF_TOKEN' | 'HF_HUB_OFFLINE' | 'HF_HUB_CACHE' | 'HF_HOME'>>;

export function hubOptionsOf(env: HubEnv): HubOptions {
  return {
    endpoint: env.HF_ENDPOINT,
    token: env.HF_TOKEN,
    offline: env.HF_HUB_OFFLINE ?? false,
    cacheDir: defaultHubCache({ ...(env.HF_HUB_CACHE ? { HF_HUB_CACHE: env.HF_HUB_CACHE } : {}), ...(env.HF_HOME ? { HF_HOME: env.HF_HOME } : {}), XDG_CACHE_HOME: process.env.XDG_CACHE_HOME }),
  };
}
