// Continuous batching: every active turn on this worker decodes through one batched
// engine.decode per step, and new work is admitted between steps, so throughput grows with
// load instead of turns queueing one by one. Prefills are cut into chunks and interleaved
// with decode steps, so a long new input delays the running replies by one chunk at a time,
// not by its whole length. One engine call runs at a time: a state handle is never used by
// two calls at once (the Engine contract).
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { Engine, StateHandle } from '../engine/engine.ts';
import type { FinishReason, SequenceDecoder } from '../generate/sequence.ts';

/** A turn's work was abandoned (lease lost, deadline, shutdown): `reason` says which. */
export class WorkAborted extends Error {
  readonly code = 'work_aborted';
  constructor(readonly reason: unknown) {
    super(`aborted: ${reason instanceof Error ? reason.message : String(reason)}`);
    this.name = 'WorkAborted';
  }
}

export interface DecodeOutcome {
  readonly finishReason: FinishReason;
  readonly text: string;
  readonly generatedTokens: number;
  /** Wall time from admission to the last step. */
  readonly seconds: number;
}

interface PrefillTask {
  readonly state: StateHandle;
  readonly tokens: Int32Array;
  offset: number;
  readonly signal: AbortSignal | undefined;
  resolve(logits: Float32Array): void;
  reject(e: unknown): void;
}

interface DecodingSequence {
  readonly state: StateHandle;
  readonly decoder: SequenceDecoder;
  /** The token the state must absorb next; the decode step returns the logits after it. */
  pending: number;
  readonly onText: (text: string) => void;
  readonly signal: AbortSignal | undefined;
  readonly started: number;
  resolve(outcome: DecodeOutcome): void;
  reject(e: unknown): void;
}

export interface SchedulerStats {
  steps: number;
  /** Sum over steps of the batch size (mean batch = batchedTokens / steps). */
  batchedTokens: number;
  prefillChunks: number;
}

export class BatchScheduler {
  private readonly prefills: PrefillTask[] = [];
  private readonly decoding: DecodingSequence[] = [];
  private running = false;
  readonly stats: SchedulerStats = { steps: 0, batchedTokens: 0, prefillChunks: 0 };

  constructor(
    private readonly engine: Engine,
    private readonly prefillChunkTokens: number,
  ) {}

  /** Sequences decoding now. */
  get activeSequences(): number {
    return this.decoding.length;
  }

  /** Absorb `tokens` into `state` (in chunks, between decode steps); the logits after the last token. */
  prefill(state: StateHandle, tokens: Int32Array, signal?: AbortSignal): Promise<Float32Array> {
    if (tokens.length === 0) return Promise.reject(new RangeError('prefill needs at least one token'));
    return new Promise((resolve, reject) => {
      this.prefills.push({ state, tokens, offset: 0, signal, resolve, reject });
      this.kick();
    });
  }

  /**
   * Generate with `decoder` from `logits` (those after the prompt) until it finishes; every
   * token it returns is absorbed into `state` through the shared batched decode.
   */
  decode(state: StateHandle, logits: Float32Array, decoder: SequenceDecoder, onText: (text: string) => void, signal?: AbortSignal): Promise<DecodeOutcome> {
    const started = performance.now();
    const first = decoder.next(logits);
    if (first.text) onText(first.text);
    if (first.done) {
      return Promise.resolve({ finishReason: first.finishReason, text: decoder.text, generatedTokens: decoder.generatedTokens, seconds: (performance.now() - started) / 1000 });
    }
    return new Promise((resolve, reject) => {
      this.decoding.push({ state, decoder, pending: first.token, onText, signal, started, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    void this.loop().finally(() => {
      this.running = false;
      if (this.prefills.length > 0 || this.decoding.length > 0) this.kick();
    });
  }

  private async loop(): Promise<void> {
    while (this.prefills.length > 0 || this.decoding.length > 0) {
      this.dropAborted();
      const task = this.prefills.shift();
      if (task) await this.prefillChunk(task);
      if (this.decoding.length > 0) await this.decodeStep();
      // Engine calls may finish synchronously (the reference engine computes inside an async
      // function): give timers and sockets a turn, or queue lock renewals would starve.
      await yieldToEventLoop();
    }
  }

  private dropAborted(): void {
    for (let i = this.prefills.length - 1; i >= 0; i--) {
      const t = this.prefills[i]!;
      if (t.signal?.aborted) {
        this.prefills.splice(i, 1);
        t.reject(new WorkAborted(t.signal.reason));
      }
    }
    for (let i = this.decoding.length - 1; i >= 0; i--) {
      const s = this.decoding[i]!;
      if (s.signal?.aborted) {
        this.decoding.splice(i, 1);
        s.reject(new WorkAborted(s.signal.reason));
      }
    }
  }

  private async prefillChunk(task: PrefillTask): Promise<void> {
    const chunk = task.tokens.subarray(task.offset, task.offset + this.prefillChunkTokens);
    try {
      const out = await this.engine.prefill(task.state, chunk);
      this.stats.prefillChunks++;
      task.offset += chunk.length;
      if (task.offset >= task.tokens.length) task.resolve(out.data.slice(0, out.vocab));
      else this.prefills.push(task); // round robin with other prefills
    } catch (e) {
      task.reject(e);
    }
  }

  private async decodeStep(): Promise<void> {
    const batch = this.decoding.slice();
    let out;
    try {
      // Every row is sampled below before the next step: the engine may reuse its buffer.
      out = await this.engine.decode(
        batch.map((s) => ({ state: s.state, token: s.pending })),
        { reuseOutput: true },
      );
    } catch (e) {
      for (const s of batch) this.remove(s);
      for (const s of batch) s.reject(e);
      return;
    }
    this.stats.steps++;
    this.stats.batchedTokens += batch.length;
    const V = out.vocab;
    batch.forEach((s, i) => {
      let step;
      try {
        step = s.decoder.next(out.data.subarray(i * V, (i + 1) * V));
      } catch (e) {
        this.remove(s);
        s.reject(e);
        return;
      }
      if (step.text) s.onText(step.text);
      if (step.done) {
        this.remove(s);
        s.resolve({ finishReason: step.finishReason, text: s.decoder.text, generatedTokens: s.decoder.generatedTokens, seconds: (performance.now() - s.started) / 1000 });
      } else {
        s.pending = step.token;
      }
    });
  }

  private remove(s: DecodingSequence): void {
    const i = this.decoding.indexOf(s);
    if (i >= 0) this.decoding.splice(i, 1);
  }
}
