// The one interface every engine implements (the plain reference, ONNX Runtime, CUDA).
// States are opaque handles owned by the engine that made them, so a GPU engine can keep
// them in device memory and only copy at import/export; the caller never touches floats of
// a state except through `.mstate` bytes.
import type { StateLayout } from '../../shared/mstate.ts';
import type { MambaConfig } from '../model/mamba-config.ts';

export type EngineKind = 'reference' | 'ort' | 'cuda';

export interface ModelInfo {
  readonly config: MambaConfig;
  /** sha256 of the checkpoint; a state carries it and refuses other models. */
  readonly fingerprint: string;
  /** Rows of the logits: the vocabulary padded like the embedding matrix. */
  readonly vocabRows: number;
  readonly layout: StateLayout;
  /** Bytes of one session's state in fp32 (what a checkpoint of it costs). */
  readonly stateBytes: number;
}

/** One session's recurrent state, living wherever its engine keeps it. */
export interface StateHandle {
  readonly engine: EngineKind;
  /** Tokens absorbed since the state was zero; engines advance it on prefill/decode. */
  readonly tokensAbsorbed: number;
}

/** Logits of `rows` positions, row-major [rows, vocab]. */
export interface Logits {
  readonly rows: number;
  readonly vocab: number;
  readonly data: Float32Array;
}

export interface PrefillOptions {
  /** Return the logits of every input position instead of only the last. */
  readonly allLogits?: boolean;
}

export interface DecodeOptions {
  /**
   * The caller reads the logits before it asks this engine for another decode with this
   * option (as the scheduler does, sampling every row at once): the engine may then hand back
   * logits in memory of its own that it writes again later, instead of a new array each step.
   * A result stays intact until the decode after the next one with this option, so a step
   * never writes the rows its caller may still be reading. Engines without such memory ignore
   * it. (On a 2-vCPU VM a new 200 KB array a step cost the ORT engine 0.2–0.4 ms of an int4
   * step: its allocation, and the page faults of writing it fresh; docs/cpu-engine.md.)
   */
  readonly reuseOutput?: boolean;
}

export interface DecodeStep {
  readonly state: StateHandle;
  /** The token to absorb; the result row is the logits after it. */
  readonly token: number;
}

export interface ExportMeta {
  readonly parentVersion: number | null;
  readonly transcriptHash: string | null;
  /** Lossy storage encodings only by explicit choice (see DESIGN.md for their error). */
  readonly dtype?: 'F32' | 'F16' | 'BF16';
}

export interface ImportedState {
  readonly state: StateHandle;
  readonly parentVersion: number | null;
  readonly transcriptHash: string | null;
}

/**
 * Contract: every method is asynchronous and must not block the event loop for long (queue
 * lock renewals run on it). A handle is used by one call at a time; the caller serializes.
 * prefill/decode advance the handles they are given in place.
 */
export interface Engine {
  readonly kind: EngineKind;
  readonly model: ModelInfo;

  /** A zero state (a session that has read nothing). */
  newState(): Promise<StateHandle>;
  cloneState(state: StateHandle): Promise<StateHandle>;
  /** Release the state's memory; the handle must not be used again. */
  freeState(state: StateHandle): void;

  /** Parse, verify (checksum, model fingerprint, layout) and load a `.mstate`. */
  importState(bytes: Uint8Array): Promise<ImportedState>;
  exportState(state: StateHandle, meta: ExportMeta): Promise<Uint8Array>;

  /** Absorb `tokens` into `state`; logits of the last position (or all with allLogits). */
  prefill(state: StateHandle, tokens: Int32Array, options?: PrefillOptions): Promise<Logits>;
  /** One token for each of several sessions at once; row i of the result belongs to steps[i]. */
  decode(steps: readonly DecodeStep[], options?: DecodeOptions): Promise<Logits>;

  close(): Promise<void>;
}

export class EngineError extends Error {
  readonly code: 'token_out_of_range' | 'state_foreign' | 'state_freed' | 'engine_closed' | 'capacity';
  constructor(code: EngineError['code'], message: string) {
    super(message);
    this.name = 'EngineError';
    this.code = code;
  }
}

export function checkTokens(tokens: ArrayLike<number>, vocabRows: number): void {
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!Number.isInteger(t) || t < 0 || t >= vocabRows) {
      throw new EngineError('token_out_of_range', `token id ${t} at position ${i} is outside the vocabulary [0, ${vocabRows})`);
    }
  }
}
