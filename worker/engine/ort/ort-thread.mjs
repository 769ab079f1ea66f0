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
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const { modelPath, convSize, ssmSize, layers, dInner, dConv, dState, sessionOptions, maxPrefillChunk } = workerData;

/** @type {Map<number, {conv: Float32Array, ssm: Float32Array}>} */
const states = new Map();

/**
 * The last decode batch: its states are views into the batch's output buffers. Reusing them
 * as the next step's input when the batch is unchanged saves a gather copy per step; any
 * other operation first gives every member its own buffer again (detachBatch), so no state
 * keeps a whole batch's buffer alive.
 * @type {{ sids: number[], conv: Float32Array, ssm: Float32Array } | null}
 */
let batch = null;

function detachBatch() {
  if (!batch) return;
  if (batch.sids.length > 1) {
    for (const sid of batch.sids) {
      const s = states.get(sid);
      if (s) states.set(sid, { conv: s.conv.slice(), ssm: s.ssm.slice() });
    }
  }
  batch = null;
}

function state(sid) {
  const s = states.get(sid);
  if (!s) throw new Error(`unknown state id ${sid}`);
  return s;
}

function tensorsFor(B, L, tokens, logitsStart, conv, ssm) {
  return {
    tokens: new ort.Tensor('int64', tokens, [B, L]),
    logits_start: new ort.Tensor('int64', BigInt64Array.of(BigInt(logitsStart)), [1]),
    conv_state: new ort.Tensor('float32', conv, [B, layers, dConv, dInner]),
    ssm_state: new ort.Tensor('float32', ssm, [B, layers, dState, dInner]),
  };
}

let session;

async function prefill({ sid, tokens, allLogits }) {
  detachBatch();
  const s = state(sid);
  const total = tokens.length;
  const rowsOut = [];
  // Long prompts run in chunks carrying the state: memory stays bounded by the chunk size.
  for (let start = 0; start < total; start += maxPrefillChunk) {
    const end = Math.min(total, start + maxPrefillChunk);
    const L = end - start;
    const ids = BigInt64Array.from(tokens.subarray(start, end), (t) => BigInt(t));
    const isLast = end === total;
    const out = await session.run(tensorsFor(1, L, ids, allLogits ? 0 : L - 1, s.conv, s.ssm));
    s.conv = out.conv_state_out.data;
    s.ssm = out.ssm_state_out.data;
    if (allLogits || isLast) rowsOut.push(out.logits.data.slice());
  }
  // Copies (slice) are ours to transfer; ORT's output buffers are not.
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

async function decode({ sids, tokens }) {
  const B = sids.length;
  let conv;
  let ssm;
  if (batch && batch.sids.length === B && batch.sids.every((sid, i) => sid === sids[i])) {
    ({ conv, ssm } = batch);
  } else {
    detachBatch();
    conv = new Float32Array(B * convSize);
    ssm = new Float32Array(B * ssmSize);
    sids.forEach((sid, b) => {
      const s = state(sid);
      conv.set(s.conv, b * convSize);
      ssm.set(s.ssm, b * ssmSize);
    });
  }
  const ids = BigInt64Array.from(tokens, (t) => BigInt(t));
  const out = await session.run(tensorsFor(B, 1, ids, 0, conv, ssm));
  const convOut = out.conv_state_out.data;
  const ssmOut = out.ssm_state_out.data;
  sids.forEach((sid, b) => {
    states.set(sid, {
      conv: convOut.subarray(b * convSize, (b + 1) * convSize),
      ssm: ssmOut.subarray(b * ssmSize, (b + 1) * ssmSize),
    });
  });
  batch = { sids: [...sids], conv: convOut, ssm: ssmOut };
  const logits = out.logits.data.slice();
  return { result: { logits }, transfer: [logits.buffer] };
}

const handlers = {
  new({ sid }) {
    states.set(sid, { conv: new Float32Array(convSize), ssm: new Float32Array(ssmSize) });
    return { result: null };
  },
  set({ sid, conv, ssm }) {
    if (conv.length !== convSize || ssm.length !== ssmSize) throw new Error('state arrays have the wrong size');
    states.set(sid, { conv, ssm });
    return { result: null };
  },
  get({ sid }) {
    detachBatch();
    const s = state(sid);
    const conv = s.conv.slice();
    const ssm = s.ssm.slice();
    return { result: { conv, ssm }, transfer: [conv.buffer, ssm.buffer] };
  },
  clone({ src, dst }) {
    detachBatch();
    const s = state(src);
    states.set(dst, { conv: s.conv.slice(), ssm: s.ssm.slice() });
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
