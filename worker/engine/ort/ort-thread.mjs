// The ONNX Runtime side of the ORT engine, on its own thread.
//
// onnxruntime-node's InferenceSession.run is synchronous (it only defers to setImmediate),
// so a run on the main thread would block the worker's event loop for the whole prefill and
// stall BullMQ's lock renewals. This thread owns the session and every session state, like
// a device owns its memory: the main thread holds state ids and exchanges only tokens,
// logits and (on import/export) state bytes with it.
//
// Plain JavaScript on purpose: a worker thread does not inherit the TypeScript loader of
// every runner (tsx, vitest), and this file needs nothing but onnxruntime-node.
//
// A state is one array per layer and kind (conv [K, D], ssm [N, D]), matching the graph's
// per-layer inputs and outputs, in the graph's layout (see mamba-graph.ts).
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const { modelPath, layers, dInner, dConv, dState, sessionOptions, maxPrefillChunk } = workerData;
const convLayer = dConv * dInner;
const ssmLayer = dState * dInner;

/** @typedef {{ conv: Float32Array[], ssm: Float32Array[] }} LayerState */
/** @type {Map<number, LayerState>} */
const states = new Map();

/**
 * The last decode batch: its members' layer arrays are views into the batch's output
 * tensors. Reusing those tensors as the next step's inputs when the batch is unchanged saves
 * a gather copy per step; any other operation first gives every member its own arrays again
 * (detachBatch), so no state keeps a whole batch's buffers alive.
 * @type {{ sids: number[], conv: Float32Array[], ssm: Float32Array[] } | null}
 */
let batch = null;

function detachBatch() {
  if (!batch) return;
  if (batch.sids.length > 1) {
    for (const sid of batch.sids) {
      const s = states.get(sid);
      if (s) states.set(sid, { conv: s.conv.map((a) => a.slice()), ssm: s.ssm.map((a) => a.slice()) });
    }
  }
  batch = null;
}

function state(sid) {
  const s = states.get(sid);
  if (!s) throw new Error(`unknown state id ${sid}`);
  return s;
}

/** Per-layer views of one contiguous [layers, …] array. */
function splitLayers(flat, size) {
  return Array.from({ length: layers }, (_, i) => flat.subarray(i * size, (i + 1) * size));
}

function joinLayers(parts, size) {
  const out = new Float32Array(layers * size);
  parts.forEach((p, i) => out.set(p, i * size));
  return out;
}

function feeds(B, L, tokens, logitsStart, conv, ssm) {
  const f = {
    tokens: new ort.Tensor('int64', tokens, [B, L]),
    logits_start: new ort.Tensor('int64', BigInt64Array.of(BigInt(logitsStart)), [1]),
  };
  for (let i = 0; i < layers; i++) {
    f[`conv_state_${i}`] = new ort.Tensor('float32', conv[i], [B, dConv, dInner]);
    f[`ssm_state_${i}`] = new ort.Tensor('float32', ssm[i], [B, dState, dInner]);
  }
  return f;
}

function outputs(out) {
  return {
    conv: Array.from({ length: layers }, (_, i) => out[`conv_state_out_${i}`].data),
    ssm: Array.from({ length: layers }, (_, i) => out[`ssm_state_out_${i}`].data),
  };
}

let session;

async function prefill({ sid, tokens, allLogits }) {
  detachBatch();
  const s = state(sid);
  const total = tokens.length;
  const rowsOut = [];
  // Long prompts run in chunks carrying the state: activation memory stays bounded.
  for (let start = 0; start < total; start += maxPrefillChunk) {
    const end = Math.min(total, start + maxPrefillChunk);
    const L = end - start;
    const ids = BigInt64Array.from(tokens.subarray(start, end), (t) => BigInt(t));
    const out = await session.run(feeds(1, L, ids, allLogits ? 0 : L - 1, s.conv, s.ssm));
    Object.assign(s, outputs(out));
    // Copies (slice) are ours to transfer; ORT's output buffers are not.
    if (allLogits || end === total) rowsOut.push(out.logits.data.slice());
  }
  const logits = rowsOut.length === 1 ? rowsOut[0] : concat(rowsOut);
  return { result: { logits }, transfer: [logits.buffer] };
}

function concat(parts) {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function gather(sids, kind, size) {
  return Array.from({ length: layers }, (_, i) => {
    const buf = new Float32Array(sids.length * size);
    sids.forEach((sid, b) => buf.set(state(sid)[kind][i], b * size));
    return buf;
  });
}

async function decode({ sids, tokens }) {
  const B = sids.length;
  let conv;
  let ssm;
  if (batch && batch.sids.length === B && batch.sids.every((sid, i) => sid === sids[i])) {
    ({ conv, ssm } = batch);
  } else {
    detachBatch();
    conv = gather(sids, 'conv', convLayer);
    ssm = gather(sids, 'ssm', ssmLayer);
  }
  const ids = BigInt64Array.from(tokens, (t) => BigInt(t));
  const raw = await session.run(feeds(B, 1, ids, 0, conv, ssm));
  const out = outputs(raw);
  sids.forEach((sid, b) => {
    states.set(sid, {
      conv: out.conv.map((a) => a.subarray(b * convLayer, (b + 1) * convLayer)),
      ssm: out.ssm.map((a) => a.subarray(b * ssmLayer, (b + 1) * ssmLayer)),
    });
  });
  batch = { sids: [...sids], conv: out.conv, ssm: out.ssm };
  const logits = raw.logits.data.slice();
  return { result: { logits }, transfer: [logits.buffer] };
}

const handlers = {
  new({ sid }) {
    states.set(sid, { conv: splitLayers(new Float32Array(layers * convLayer), convLayer), ssm: splitLayers(new Float32Array(layers * ssmLayer), ssmLayer) });
    return { result: null };
  },
  /** conv [layers, K, D] and ssm [layers, N, D], contiguous (the engine transposed them from HF layout). */
  set({ sid, conv, ssm }) {
    if (conv.length !== layers * convLayer || ssm.length !== layers * ssmLayer) throw new Error('state arrays have the wrong size');
    states.set(sid, { conv: splitLayers(conv, convLayer), ssm: splitLayers(ssm, ssmLayer) });
    return { result: null };
  },
  get({ sid }) {
    detachBatch();
    const s = state(sid);
    const conv = joinLayers(s.conv, convLayer);
    const ssm = joinLayers(s.ssm, ssmLayer);
    return { result: { conv, ssm }, transfer: [conv.buffer, ssm.buffer] };
  },
  clone({ src, dst }) {
    detachBatch();
    const s = state(src);
    states.set(dst, { conv: s.conv.map((a) => a.slice()), ssm: s.ssm.map((a) => a.slice()) });
    return { result: null };
  },
  free({ sid }) {
    detachBatch();
    states.delete(sid);
    return { result: null };
  },
  prefill,
  decode,
};

// Requests run strictly one after another: a state is never read while a run writes it.
let chain = Promise.resolve();
parentPort.on('message', (msg) => {
  chain = chain.then(async () => {
    try {
      const { result, transfer } = await handlers[msg.op](msg);
      parentPort.postMessage({ id: msg.id, ok: true, result }, transfer ?? []);
    } catch (err) {
      parentPort.postMessage({ id: msg.id, ok: false, error: String(err?.message ?? err) });
    }
  });
});

try {
  session = await ort.InferenceSession.create(modelPath, sessionOptions);
  parentPort.postMessage({ id: 0, ok: true, result: { ready: true } });
} catch (err) {
  parentPort.postMessage({ id: 0, ok: false, error: String(err?.message ?? err) });
}
