import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError, EdgeConfigSchema, parseEnv, WorkerConfigSchema } from './config.ts';

const base = { REDIS_URL: 'redis://127.0.0.1:6379' };

describe('edge config', () => {
  it('answers 503 without workers unless told to queue (the local stack has nothing that would start one)', () => {
    expect(parseEnv(EdgeConfigSchema, base).QUEUE_WITHOUT_WORKERS).toBe(false);
    expect(parseEnv(EdgeConfigSchema, { ...base, QUEUE_WITHOUT_WORKERS: 'true', DEFAULT_MODEL: 'demo' })).toMatchObject({
      QUEUE_WITHOUT_WORKERS: true,
      DEFAULT_MODEL: 'demo',
    });
  });

  it('queues without workers only for a named model', () => {
    expect(() => parseEnv(EdgeConfigSchema, { ...base, QUEUE_WITHOUT_WORKERS: 'true' })).toThrow(ConfigError);
    expect(() => parseEnv(EdgeConfigSchema, { ...base, QUEUE_WITHOUT_WORKERS: 'true' })).toThrow(/QUEUE_WITHOUT_WORKERS: needs DEFAULT_MODEL/);
    expect(() => parseEnv(EdgeConfigSchema, { ...base, QUEUE_WITHOUT_WORKERS: 'maybe', DEFAULT_MODEL: 'demo' })).toThrow(/QUEUE_WITHOUT_WORKERS/);
  });

  it('takes state uploads up to 2 GiB', () => {
    expect(parseEnv(EdgeConfigSchema, { ...base, MAX_STATE_UPLOAD_BYTES: String(2 ** 31) }).MAX_STATE_UPLOAD_BYTES).toBe(2 ** 31);
    expect(() => parseEnv(EdgeConfigSchema, { ...base, MAX_STATE_UPLOAD_BYTES: String(2 ** 31 + 1) })).toThrow(/MAX_STATE_UPLOAD_BYTES/);
  });
});

it('README documents every variable, and only those', () => {
  const table = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
    .split('\n## Configuration')[1]!
    .split('\n## ')[0]!;
  const documented = [...table.matchAll(/^\| `([A-Z0-9_]+)` \|/gm)].map((m) => m[1]!).sort();
  const known = [...new Set([...Object.keys(EdgeConfigSchema.shape), ...Object.keys(WorkerConfigSchema.shape)])].sort();
  expect(documented).toEqual(known);
});

describe('worker config: WEIGHTS_DTYPE', () => {
  it('is exact fp32 unless told otherwise, and quantized weights need the ORT engine', () => {
    expect(parseEnv(WorkerConfigSchema, base).WEIGHTS_DTYPE).toBe('f32');
    expect(parseEnv(WorkerConfigSchema, { ...base, WEIGHTS_DTYPE: 'int4' })).toMatchObject({ WEIGHTS_DTYPE: 'int4', ENGINE: 'auto' });
    expect(parseEnv(WorkerConfigSchema, { ...base, WEIGHTS_DTYPE: 'int8', ENGINE: 'ort' }).WEIGHTS_DTYPE).toBe('int8');
    expect(() => parseEnv(WorkerConfigSchema, { ...base, WEIGHTS_DTYPE: 'int4', ENGINE: 'cuda' })).toThrow(/WEIGHTS_DTYPE: int8 and int4 weights run on the ort engine only/);
    expect(() => parseEnv(WorkerConfigSchema, { ...base, WEIGHTS_DTYPE: 'fp8' })).toThrow(/WEIGHTS_DTYPE/);
  });

  it("leaves ONNX Runtime's threads spinning only briefly unless asked", () => {
    expect(parseEnv(WorkerConfigSchema, base).ORT_INTRA_OP_SPINNING).toBe(false);
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_INTRA_OP_SPINNING: 'true' }).ORT_INTRA_OP_SPINNING).toBe(true);
    expect(parseEnv(WorkerConfigSchema, base).ORT_INTRA_OP_SPIN_US).toBe(100);
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_INTRA_OP_SPIN_US: '0' }).ORT_INTRA_OP_SPIN_US).toBe(0);
    expect(() => parseEnv(WorkerConfigSchema, { ...base, ORT_INTRA_OP_SPIN_US: '-1' })).toThrow(/ORT_INTRA_OP_SPIN_US/);
  });

  it('pre-packs weights unless told not to, and only f32 weights may go unpacked', () => {
    expect(parseEnv(WorkerConfigSchema, base).ORT_PREPACK_WEIGHTS).toBe(true);
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_PREPACK_WEIGHTS: 'false' }).ORT_PREPACK_WEIGHTS).toBe(false);
    expect(() => parseEnv(WorkerConfigSchema, { ...base, ORT_PREPACK_WEIGHTS: 'false', WEIGHTS_DTYPE: 'int4' })).toThrow(/ORT_PREPACK_WEIGHTS: false is for f32 weights only/);
  });

  it('runs quantized weights on the native kernels where it can, unless told otherwise', () => {
    expect(parseEnv(WorkerConfigSchema, base).ORT_NATIVE_KERNELS).toBe('auto');
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_NATIVE_KERNELS: 'on' }).ORT_NATIVE_KERNELS).toBe('on');
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_NATIVE_KERNELS: 'off' }).ORT_NATIVE_KERNELS).toBe('off');
    expect(() => parseEnv(WorkerConfigSchema, { ...base, ORT_NATIVE_KERNELS: 'yes' })).toThrow(/ORT_NATIVE_KERNELS/);
  });

  it('maps packed weights from a file unless told not to', () => {
    expect(parseEnv(WorkerConfigSchema, base).ORT_PACKED_WEIGHTS_FILE).toBe(true);
    expect(parseEnv(WorkerConfigSchema, { ...base, ORT_PACKED_WEIGHTS_FILE: 'false' }).ORT_PACKED_WEIGHTS_FILE).toBe(false);
    expect(() => parseEnv(WorkerConfigSchema, { ...base, ORT_PACKED_WEIGHTS_FILE: 'maybe' })).toThrow(/ORT_PACKED_WEIGHTS_FILE/);
  });
});
