// Types of window-inputs.mjs (plain JavaScript so the ORT thread can import it).
export function ropeInvFreq(theta: number, hd: number): Float64Array;
export function ropeAngle(t: number, f: number): number;
export function ropeTables(invFreq: Float64Array, starts: readonly number[], L: number): { cos: Float32Array; sin: Float32Array };
export function windowMask(W: number, starts: readonly number[], L: number): Float32Array;
export function writeRing(ring: Float32Array, fresh: Float32Array, W: number, kvHeads: number, hd: number, start: number): void;
export function swapRingAxes(data: Float32Array, layers: number, a: number, b: number, hd: number): Float32Array;
export function hybridPrefillChunk(H: number, W: number, maxChunk: number): number;
