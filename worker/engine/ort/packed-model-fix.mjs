// Repairs what ONNX Runtime 1.30's model serializer writes for a graph with subgraphs.
//
// Saving an optimized model, ORT writes every initializer of an If branch or a Scan body
// twice into that subgraph, and then refuses to load the file ("initializer name is not
// unique"). The two copies are byte-identical; this drops the second of each name. Copies
// that differ would mean the file is not what we think it is: that throws instead.
//
// Plain JavaScript, like ort-thread.mjs: the packing child process (pack-weights.mjs) runs it
// without a TypeScript loader.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

function sameTensor(a, b) {
  return Buffer.compare(Buffer.from(onnx.TensorProto.encode(a).finish()), Buffer.from(onnx.TensorProto.encode(b).finish())) === 0;
}

/** Drop repeated initializers from `graph`'s subgraphs (not the main graph: it has none), in place; returns how many. */
function dedupeSubgraphs(graph, isSubgraph) {
  let dropped = 0;
  if (isSubgraph) {
    const seen = new Map();
    graph.initializer = graph.initializer.filter((t) => {
      const first = seen.get(t.name);
      if (!first) {
        seen.set(t.name, t);
        return true;
      }
      if (!sameTensor(first, t)) throw new Error(`subgraph ${graph.name}: initializer ${t.name} appears twice with different contents`);
      dropped++;
      return false;
    });
  }
  for (const node of graph.node) {
    for (const attr of node.attribute) {
      if (attr.g) dropped += dedupeSubgraphs(attr.g, true);
      for (const g of attr.graphs ?? []) dropped += dedupeSubgraphs(g, true);
    }
  }
  return dropped;
}

/**
 * The model in `bytes` with each subgraph's repeated initializers dropped.
 * @param {Uint8Array} bytes a serialized ModelProto
 * @returns {{ bytes: Uint8Array, dropped: number }}
 */
export function dropRepeatedSubgraphInitializers(bytes) {
  const model = onnx.ModelProto.decode(bytes);
  const dropped = dedupeSubgraphs(model.graph, false);
  return { bytes: dropped ? onnx.ModelProto.encode(model).finish() : bytes, dropped };
}
