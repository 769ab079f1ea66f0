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
// Pure Mamba builds on the native kernels (native-kernels.ts) do not come here: their engine
// (native-engine.ts) calls the kernels on the main thread, one piece of a prompt at a time.
//
// A state is one array per layer and kind (conv [K, D], ssm [N, D] per Mamba layer; a hybrid's
// key and value rings [KV, W, hd] per attention layer), matching the graph's per-layer inputs
// and outputs, in the graph's layout (see mamba-graph.ts, attention-graph.ts). The rings are
// not graph outputs: the graph returns each call's new keys and values, and this thread
// writes them into the rings in place (window-inputs.mjs), so a decode step copies one row
// per attention layer, not a whole window.
import { parentPort, workerData } from 'node:worker_threads';
import { hybridPrefillChunk, ropeInvFreq, ropeTables, windowMask, writeRing } from './window-inputs.mjs';

const { modelPath, layers, dInner, dConv, dState, attention, sessionOptions, maxPrefillChunk } = workerData;
const convLayer = dConv * dInner;
const ssmLayer = dState * dInner;
/** Attention layers (0 for a pure Mamba model) and the floats of one ring. */
const attnLayers = attention ? attention.layers : 0;
const ringWidth = attention ? attention.kvHeads * attention.headDim : 0;
const ringLayer = attention ? attention.window * ringWidth : 0;
const invFreq = attention && attention.ropeTheta !== null ? ropeInvFreq(attention.ropeTheta, attention.headDim) : null;
const prefillChunk = attention ? hybridPrefillChunk(attention.heads, attention.window, maxPrefillChunk) : maxPrefillChunk;

/** @typedef {{ conv: Float32Array[], ssm: Float32Array[], k: Float32Array[], v: Float32Array[] }} LayerState */
/** @type {Map<number, LayerState>} */
const states = new Map();

/**
 * The last decode batch: its members' layer arrays are views into the batch's output
 * tensors (conv, ssm) and into the batch's ring buffers (k, v). Reusing those as the next
 * step's inputs when the batch is unchanged saves a gather copy per step; any other
 * operation first gives every member its own arrays again (detachBatch), so no state keeps
 * a whole batch's buffers alive.
 * @type {{ sids: number[], conv: Float32Array[], ssm: Float32Array[], k: Float32Array[], v: Float32Array[] } | null}
 */
let batch = null;

const copyState = (s) => ({ conv: s.conv.map((a) => a.slice()), ssm: s.ssm.map((a) => a.slice()), k: s.k.map((a) => a.slice()), v: s.v.map((a) => a.slice()) });

function detachBatch() {
  if (!batch) return;
  if (batch.sids.length > 1) {
    for (const sid of batch.sids) {
      const s = states.get(sid);
      if (s) states.set(sid, copyState(s));
    }
  }
  batch = null;
}

function state(sid) {
  const s = states.get(sid);
  if (!s) throw new Error(`unknown state id ${sid}`);
  return s;
}

/** Per-layer views of one contiguous [n, …] array. */
function splitLayers(flat, size, n = layers) {
  return Array.from({ length: n }, (_, i) => flat.subarray(i * size, (i + 1) * size));
}

function joinLayers(parts, size) {
  const out = new Float32Array(parts.length * size);
  parts.forEach((p, i) => out.set(p, i * size));
  return out;
}

/** Graph inputs of a call: B rows of L tokens, the rows' states, and their absolute positions. */
function feeds(B, L, tokens, logitsStart, conv, ssm, k, v, positions) {
  const f = {
    tokens: new ort.Tensor('int64', tokens, [B, L]),
    logits_start: new ort.Tensor('int64', BigInt64Array.of(BigInt(logitsStart)), [1]),
  };
  for (let i = 0; i < layers; i++) {
    f[`conv_state_${i}`] = new ort.Tensor('float32', conv[i], [B, dConv, dInner]);
    f[`ssm_state_${i}`] = new ort.Tensor('float32', ssm[i], [B, dState, dInner]);
  }
  if (attention) {
    const ringShape = [B, attention.kvHeads, attention.window, attention.headDim];
    for (let a = 0; a < attnLayers; a++) {
      f[`attn_k_${a}`] = new ort.Tensor('float32', k[a], ringShape);
      f[`attn_v_${a}`] = new ort.Tensor('float32', v[a], ringShape);
    }
    f.attn_mask = new ort.Tensor('float32', windowMask(attention.window, positions, L), [B, L, attention.window + L]);
    if (invFreq) {
      const { cos, sin } = ropeTables(invFreq, positions, L);
      f.rope_cos = new ort.Tensor('float32', cos, [B, L, attention.headDim]);
      f.rope_sin = new ort.Tensor('float32', sin, [B, L, attention.headDim]);
    }
  }
  return f;
}

function outputs(out) {
  return {
    conv: Array.from({ length: layers }, (_, i) => out[`conv_state_out_${i}`].data),
    ssm: Array.from({ length: layers }, (_, i) => out[`ssm_state_out_${i}`].data),
  };
}

/** Write row b's new keys and values of a call (L rows from `start`) into that row's rings. */
function writeRings(out, b, L, rings, start) {
  for (let a = 0; a < attnLayers; a++) {
    const rows = L * ringWidth;
    writeRing(rings.k[a], out[`attn_k_new_${a}`].data.subarray(b * rows, (b + 1) * rows), attention.window, attention.kvHeads, attention.headDim, start);
    writeRing(rings.v[a], out[`attn_v_new_${a}`].data.subarray(b * rows, (b + 1) * rows), attention.window, attention.kvHeads, attention.headDim, start);
  }
}

/** onnxruntime-node and the session. */
let ort;
let session;

/**
 * The engine's buffer for decode's logits with reuseOutput (ort-engine.ts, logits-slots.ts):
 * the latest one it sent, kept here for the decodes after it.
 * @type {SharedArrayBuffer | null}
 */
let sharedLogits = null;

/**
 * Where a decode writes its `n` logits: the shared buffer's slot the request names (nothing
 * to transfer back), or a new array of its own (transferred).
 */
function logitsOut({ into }, n) {
  if (!into) return new Float32Array(n);
  if (!sharedLogits) throw new Error('decode into a shared buffer the engine never sent');
  return new Float32Array(sharedLogits, into.offset * 4, n);
}

/** A decode's reply: the logits themselves, or none when they were written into the shared buffer. */
const decodeResult = (logits, msg) => (msg.into ? { result: { logits: null } } : { result: { logits }, transfer: [logits.buffer] });

async function prefill({ sid, tokens, allLogits, position }) {
  detachBatch();
  const s = state(sid);
  const total = tokens.length;
  const rowsOut = [];
  // Long prompts run in chunks carrying the state: activation memory stays bounded (for a
  // hybrid, the chunk also bounds the attention scores: hybridPrefillChunk).
  for (let start = 0; start < total; start += prefillChunk) {
    const end = Math.min(total, start + prefillChunk);
    const L = end - start;
    const ids = BigInt64Array.from(tokens.subarray(start, end), (t) => BigInt(t));
    const out = await session.run(feeds(1, L, ids, allLogits ? 0 : L - 1, s.conv, s.ssm, s.k, s.v, [position + start]));
    Object.assign(s, outputs(out));
    writeRings(out, 0, L, s, position + start);
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

function gather(sids, kind, size, n = layers) {
  return Array.from({ length: n }, (_, i) => {
    const buf = new Float32Array(sids.length * size);
    sids.forEach((sid, b) => buf.set(state(sid)[kind][i], b * size));
    return buf;
  });
}

async function decode(msg) {
  // Kept before anything can fail: the engine sends a buffer once.
  if (msg.shared) sharedLogits = msg.shared;
  const { sids, tokens, positions } = msg;
  const B = sids.length;
  let conv;
  let ssm;
  let k;
  let v;
  if (batch && batch.sids.length === B && batch.sids.every((sid, i) => sid === sids[i])) {
    ({ conv, ssm, k, v } = batch);
  } else {
    detachBatch();
    conv = gather(sids, 'conv', convLayer);
    ssm = gather(sids, 'ssm', ssmLayer);
    k = gather(sids, 'k', ringLayer, attnLayers);
    v = gather(sids, 'v', ringLayer, attnLayers);
  }
  const ids = BigInt64Array.from(tokens, (t) => BigInt(t));
  const raw = await session.run(feeds(B, 1, ids, 0, conv, ssm, k, v, positions));
  const out = outputs(raw);
  sids.forEach((sid, b) => {
    const member = {
      conv: out.conv.map((a) => a.subarray(b * convLayer, (b + 1) * convLayer)),
      ssm: out.ssm.map((a) => a.subarray(b * ssmLayer, (b + 1) * ssmLayer)),
      // Views into the batch's ring buffers: the row written here is the next step's input too.
      k: k.map((a) => a.subarray(b * ringLayer, (b + 1) * ringLayer)),
      v: v.map((a) => a.subarray(b * ringLayer, (b + 1) * ringLayer)),
    };
    writeRings(raw, b, 1, member, positions[b]);
    states.set(sid, member);
  });
  batch = { sids: [...sids], conv: out.conv, ssm: out.ssm, k, v };
  // Copies (into a new array or the shared slot) are ours; ORT's output buffers are not.
  const logits = logitsOut(msg, raw.logits.data.length);
  logits.set(raw.logits.data);
  return decodeResult(logits, msg);
}

const handlers = {
  new({ sid }) {
    states.set(sid, {
      conv: splitLayers(new Float32Array(layers * convLayer), convLayer),
      ssm: splitLayers(new Float32Array(layers * ssmLayer), ssmLayer),
      k: splitLayers(new Float32Array(attnLayers * ringLayer), ringLayer, attnLayers),
      v: splitLayers(new Float32Array(attnLayers * ringLayer), ringLayer, attnLayers),
    });
    return { result: null };
  },
  /** conv [layers, K, D] and ssm [layers, N, D] (the engine transposed them from HF layout); k, v [attention layers, KV, W, hd]. */
  set({ sid, conv, ssm, k, v }) {
    if (conv.length !== layers * convLayer || ssm.length !== layers * ssmLayer) throw new Error('state arrays have the wrong size');
    if (k.length !== attnLayers * ringLayer || v.length !== attnLayers * ringLayer) throw new Error('attention rings have the wrong size');
    states.set(sid, {
      conv: splitLayers(conv, convLayer),
      ssm: splitLayers(ssm, ssmLayer),
      k: splitLayers(k, ringLayer, attnLayers),
      v: splitLayers(v, ringLayer, attnLayers),
    });
    return { result: null };
  },
  get({ sid }) {
    detachBatch();
    const s = state(sid);
    const conv = joinLayers(s.conv, convLayer);
    const ssm = joinLayers(s.ssm, ssmLayer);
    const k = joinLayers(s.k, ringLayer);
    const v = joinLayers(s.v, ringLayer);
    return { result: { conv, ssm, k, v }, transfer: [conv.buffer, ssm.buffer, k.buffer, v.buffer] };
  },
  clone({ src, dst }) {
    detachBatch();
    states.set(dst, copyState(state(src)));
    return { result: null };
  },
  free({ sid }) {
    detachBatch();
    states.delete(sid);
    return { result: null };
  },
  prefill,
  decode,
  /** Let go of the session and every state before the engine terminates this thread. */
  async close() {
    batch = null;
    states.clear();
    await session?.release();
    session = undefined;
    return { result: null };
  },
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
  ort = await import('onnxruntime-node');
  session = await ort.InferenceSession.create(modelPath, sessionOptions);
  parentPort.postMessage({ id: 0, ok: true, result: { ready: true } });
} catch (err) {
  parentPort.postMessage({ id: 0, ok: false, error: String(err?.message ?? err) });
}
