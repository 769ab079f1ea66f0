// Decode's logits with reuseOutput (engine.ts, DecodeOptions): one buffer of two slots that
// steps take in turn, so a step writes into memory written before (no new array, no page
// faults) and a result stays intact through the next step. Both ORT engines keep one: the
// thread's (ort-engine.ts) in a SharedArrayBuffer its thread writes, the native kernels'
// (native-engine.ts) in plain memory.

export interface LogitsSlot<B extends ArrayBufferLike> {
  readonly buffer: B;
  /** Where the slot starts, in floats. */
  readonly offset: number;
  /** The slot as `floats` logits. */
  readonly view: Float32Array;
  /** The buffer is new since the last slot (the thread must be sent it). */
  readonly fresh: boolean;
}

export class LogitsSlots<B extends ArrayBufferLike> {
  private current: { buffer: B; slotFloats: number; next: number } | undefined;

  /** `allocate(bytes)` makes a buffer; `rowFloats` is one row of logits (the vocabulary rows). */
  constructor(
    private readonly rowFloats: number,
    private readonly allocate: (bytes: number) => B,
  ) {}

  /** The next slot for `floats` logits: a larger buffer when they do not fit (rows rounded up to a power of two). */
  next(floats: number): LogitsSlot<B> {
    let fresh = false;
    if (!this.current || this.current.slotFloats < floats) {
      const slotFloats = 2 ** Math.ceil(Math.log2(Math.max(1, floats / this.rowFloats))) * this.rowFloats;
      this.current = { buffer: this.allocate(2 * slotFloats * 4), slotFloats, next: 0 };
      fresh = true;
    }
    const c = this.current;
    const offset = c.next * c.slotFloats;
    c.next ^= 1;
    return { buffer: c.buffer, offset, view: new Float32Array(c.buffer, offset * 4, floats), fresh };
  }
}
