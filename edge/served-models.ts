// The models this edge serves, and whether a turn for one can be admitted now. Workers
// register their model in Redis when they start (shared/model-registry.ts: fingerprint,
// state layout, heartbeats). With QUEUE_WITHOUT_WORKERS the edge also serves DEFAULT_MODEL
// before any worker has registered it, and queues its turns while no worker is alive: in a
// deployment that scales workers from zero, a queued turn is what starts a worker.
import type { EdgeConfig } from '../shared/config.ts';
import { ApiError } from '../shared/errors.ts';
import type { ModelRegistry } from '../shared/model-registry.ts';

export interface ServedModel {
  readonly id: string;
  /** Epoch seconds of the model's first registration; 0 while no worker has registered it. */
  readonly created: number;
  /** Bytes of one session's state; null while no worker has registered the model. */
  readonly state_bytes: number | null;
  /** Each layer's type ("mamba" or "sliding_attention"); null while no worker has registered the model. */
  readonly layer_types: string[] | null;
  /** A hybrid's attention window W in tokens; null for a pure Mamba model (or an unregistered one). */
  readonly sliding_window: number | null;
  /** Workers with a recent heartbeat. */
  readonly workers: number;
}

export class ServedModels {
  constructor(
    private readonly registry: ModelRegistry,
    private readonly config: Pick<EdgeConfig, 'QUEUE_WITHOUT_WORKERS' | 'DEFAULT_MODEL' | 'RETRY_AFTER_S'>,
  ) {}

  /** Turns for `model` wait in the queue while no worker is alive (something else starts one). */
  queuesWithoutWorkers(model: string): boolean {
    return this.config.QUEUE_WITHOUT_WORKERS && model === this.config.DEFAULT_MODEL;
  }

  /** 503 no_worker, unless a worker is alive for `model` or its turns may wait for one. */
  async assertRunnable(model: string, purpose = 'run the turn'): Promise<void> {
    if (this.queuesWithoutWorkers(model)) return;
    if ((await this.registry.liveWorkers(model)) > 0) return;
    throw new ApiError('no_worker', `no worker is serving model ${model} to ${purpose} right now`, { retryAfterSeconds: this.config.RETRY_AFTER_S });
  }

  /** A worker has registered `model`, or the edge queues its turns until one does. */
  async isServed(model: string): Promise<boolean> {
    return this.queuesWithoutWorkers(model) || (await this.registry.get(model)) !== undefined;
  }

  /** Every served model, with what is known of it (nothing but its id before a worker registers it). */
  async list(): Promise<ServedModel[]> {
    const registered = await this.registry.list();
    const models: Omit<ServedModel, 'workers'>[] = registered.map((m) => ({
      id: m.id,
      created: m.created,
      state_bytes: m.state_bytes,
      layer_types: m.layout.layer_types ?? Array.from({ length: m.layout.num_layers }, () => 'mamba'),
      sliding_window: m.layout.sliding_window ?? null,
    }));
    const queued = this.config.QUEUE_WITHOUT_WORKERS ? this.config.DEFAULT_MODEL : undefined;
    if (queued !== undefined && !registered.some((m) => m.id === queued)) {
      models.push({ id: queued, created: 0, state_bytes: null, layer_types: null, sliding_window: null });
      models.sort((a, b) => a.id.localeCompare(b.id));
    }
    return Promise.all(models.map(async (m) => ({ ...m, workers: await this.registry.liveWorkers(m.id) })));
  }
}
