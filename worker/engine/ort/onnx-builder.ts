// A small builder for ONNX graphs, over the protobuf classes of the maintained `onnx-proto`
// package. Graphs are written as code (node by node) rather than exported from a framework:
// we own every op, so the graph uses standard ONNX ops only (onnxruntime-node cannot load
// custom ops) and we can choose the scan formulation that is fast on CPU.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type IAttributeProto = onnxProto.onnx.IAttributeProto;
type IGraphProto = onnxProto.onnx.IGraphProto;
type INodeProto = onnxProto.onnx.INodeProto;
type ITensorProto = onnxProto.onnx.ITensorProto;
type IValueInfoProto = onnxProto.onnx.IValueInfoProto;

export const DataType = onnx.TensorProto.DataType;
export type ElemType = 'float' | 'int64' | 'int32' | 'bool' | 'uint8' | 'int8';

const ELEM: Record<ElemType, number> = {
  float: DataType.FLOAT,
  int64: DataType.INT64,
  int32: DataType.INT32,
  bool: DataType.BOOL,
  uint8: DataType.UINT8,
  int8: DataType.INT8,
};

/** ONNX Runtime's contrib ops (MatMulNBits, GatherBlockQuantized): the quantized kernels live there. */
export const MS_DOMAIN = 'com.microsoft';

/** A dimension: a fixed size or a symbolic name (e.g. "batch"). */
export type Dim = number | string;

export type AttrValue = number | number[] | string | { graph: IGraphProto } | { floats: number[] } | { float: number } | { tensor: ITensorProto };

/** Where an initializer's bytes live when they are kept out of the protobuf (see WeightsFile). */
export interface ExternalRef {
  readonly location: string;
  readonly offset: number;
  readonly length: number;
}

function valueInfo(name: string, elem: ElemType, dims: readonly Dim[] | undefined): IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEM[elem],
        ...(dims === undefined
          ? {}
          : { shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } }),
      },
    },
  };
}

function attribute(name: string, value: AttrValue): IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: use {float: x} for float attributes`);
    return { name, type: T.INT, i: value };
  }
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  if ('graph' in value) return { name, type: T.GRAPH, g: value.graph };
  if ('floats' in value) return { name, type: T.FLOATS, floats: value.floats };
  if ('float' in value) return { name, type: T.FLOAT, f: value.float };
  return { name, type: T.TENSOR, t: value.tensor };
}

export class GraphBuilder {
  private readonly nodes: INodeProto[] = [];
  private readonly inputs: IValueInfoProto[] = [];
  private readonly outputs: IValueInfoProto[] = [];
  private readonly initializers: ITensorProto[] = [];
  private counter = 0;

  constructor(
    readonly name: string,
    /** Prefix of generated value names, so a subgraph's names never collide with its parent's. */
    private readonly scope = '',
  ) {}

  /** A fresh value name. */
  fresh(hint: string): string {
    return `${this.scope}${hint}_${this.counter++}`;
  }

  input(name: string, elem: ElemType, dims?: readonly Dim[]): string {
    this.inputs.push(valueInfo(name, elem, dims));
    return name;
  }

  output(name: string, elem: ElemType, dims?: readonly Dim[]): void {
    this.outputs.push(valueInfo(name, elem, dims));
  }

  /** A node with one output; returns the output's name. */
  op(opType: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}, outName?: string): string {
    const out = outName ?? this.fresh(opType.toLowerCase());
    this.opN(opType, inputs, [out], attrs);
    return out;
  }

  /** A node with several outputs (or named outputs); returns their names. */
  opN(opType: string, inputs: readonly string[], outputs: readonly string[], attrs: Record<string, AttrValue> = {}, domain = ''): string[] {
    this.nodes.push({
      opType,
      domain,
      input: [...inputs],
      output: [...outputs],
      name: this.fresh(`n_${opType}`),
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return [...outputs];
  }

  /** A float tensor stored inline in the protobuf (small constants). */
  constFloat(values: ArrayLike<number>, dims: readonly number[], hint = 'c'): string {
    const name = this.fresh(hint);
    const data = Float32Array.from(values);
    this.initializers.push({ name, dataType: DataType.FLOAT, dims: [...dims], rawData: new Uint8Array(data.buffer) });
    return name;
  }

  constInt64(values: readonly number[], dims: readonly number[] = [values.length], hint = 'i'): string {
    const name = this.fresh(hint);
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.initializers.push({ name, dataType: DataType.INT64, dims: [...dims], rawData: new Uint8Array(data.buffer) });
    return name;
  }

  /** A float initializer whose bytes live in an external weights file. */
  externalFloat(name: string, dims: readonly number[], ref: ExternalRef): string {
    return this.external(name, 'float', dims, ref);
  }

  /** An initializer of any element type whose bytes live in an external weights file. */
  external(name: string, elem: ElemType, dims: readonly number[], ref: ExternalRef): string {
    this.initializers.push({
      name,
      dataType: ELEM[elem],
      dims: [...dims],
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: ref.location },
        { key: 'offset', value: String(ref.offset) },
        { key: 'length', value: String(ref.length) },
      ],
    });
    return name;
  }

  /** A float initializer stored inline. */
  inlineFloat(name: string, dims: readonly number[], data: Float32Array): string {
    this.initializers.push({ name, dataType: DataType.FLOAT, dims: [...dims], rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
    return name;
  }

  /** An initializer of any element type stored inline (raw little-endian bytes). */
  inlineRaw(name: string, elem: ElemType, dims: readonly number[], bytes: Uint8Array): string {
    this.initializers.push({ name, dataType: ELEM[elem], dims: [...dims], rawData: bytes });
    return name;
  }

  build(): IGraphProto {
    return {
      name: this.name,
      node: this.nodes,
      input: this.inputs,
      output: this.outputs,
      initializer: this.initializers,
    };
  }
}

export const OPSET = 17;

/** Serialize a model around `graph`. */
export function encodeModel(graph: IGraphProto, docString = ''): Uint8Array {
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'mamba-serve',
    producerVersion: '1',
    docString,
    graph,
    opsetImport: [
      { domain: '', version: OPSET },
      { domain: MS_DOMAIN, version: 1 },
    ],
  });
  return onnx.ModelProto.encode(model).finish();
}
