// The ORT engine's native kernels: for f32, int8 and int4 builds of pure Mamba models, prefill
// and decode run on our own AVX-512 or AVX2 kernels (worker/native-cpu/, `npm run build:cpu`)
// instead of the ONNX graph, and the engine then creates no ONNX Runtime session at all: the
// kernels read the graph build's weights file (mapped, not copied: the int8 and int4 blocks are
// MatMulNBits' bytes, the f32 projections the MatMuls' Wᵀ) and the engine's state arrays in
// place (the graph's [K, D] and [N, D] layouts). Faster, and one copy of the weights in memory
// (docs/cpu-engine.md, "The native kernels"); native-engine.ts runs them. ONNX Runtime's graph
// stays the portable path: hybrid models, other CPUs, the CUDA provider, and wherever the addon
// is not built.
//
// This module decides whether that path can run and describes the weights to it: it reads the
// graph build's initializers (their byte ranges in weights.bin) from model.onnx.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import onnxProto from 'onnx-proto';
import { nativeCpuAddonReady, nativeCpuBuildFor, NATIVE_CPU_BUILDS, type NativeCpuIsa } from '../../native-cpu/support.ts';
import type { MambaConfig } from '../../model/mamba-config.ts';
import { f32LinearNames, nbitsNames } from './linear.ts';
import { ensureF32Strips, type StripSource } from './native-strips.ts';
import { mambaLayerWeightNames, WEIGHT_NAMES } from './mamba-graph.ts';
import type { WeightsDtype } from './quantize.ts';

const { onnx } = onnxProto;

/** `ORT_NATIVE_KERNELS`: auto = where it can run; on = refuse to start where it cannot; off = never. */
export type NativeKernelsSetting = 'auto' | 'on' | 'off';
export const NATIVE_KERNELS_SETTINGS: readonly NativeKernelsSetting[] = ['auto', 'on', 'off'];

/** ORT_NATIVE_KERNELS=on where the native kernels cannot run (the reason says why). */
export class NativeKernelsUnavailableError extends Error {
  readonly code = 'native_kernels_unavailable';
  constructor(message: string) {
    super(message);
    this.name = 'NativeKernelsUnavailableError';
  }
}

/** [offset, length] in bytes within the weights file. */
type Range = [number, number];
/**
 * A matrix's bytes in the weights file: int8 / int4 codes and their scales, f32 values alone;
 * or (f32 in_proj and out_proj) its column strips in the strips file (native-strips.ts).
 */
type MatrixRanges = { data: Range; scales?: Range; bias?: Range } | { strips: Range; bias?: Range };

/** What worker/native-cpu/src/addon.cpp's Decoder takes (see its header). */
export interface NativeDecoderOptions {
  readonly weightsPath: string;
  /** f32: the strips file that in_proj's and out_proj's `strips` ranges lie in. */
  readonly stripsPath?: string;
  readonly bits: 4 | 8 | 32;
  readonly threads: number;
  readonly dims: { d: number; layers: number; D: number; N: number; R: number; K: number; V: number; eps: number };
  readonly embed: MatrixRanges;
  readonly head: MatrixRanges;
  readonly normF: Range;
  readonly layers: {
    norm: Range;
    inProj: MatrixRanges;
    convW: Range;
    convB?: Range;
    xProj: MatrixRanges;
    dtProj: MatrixRanges;
    negAT: Range;
    Dskip: Range;
    outProj: MatrixRanges;
  }[];
}

export interface NativeKernelsPlan {
  readonly addonPath: string;
  /** The instruction set of that build (its kernels' vector width): for the engine's log. */
  readonly isa: NativeCpuIsa | 'given';
  readonly decoder: NativeDecoderOptions;
}

interface ExternalTensor {
  readonly dims: number[];
  readonly location: string;
  readonly range: Range;
}

/** The main graph's initializers stored in external data, by name. */
export async function externalInitializers(modelPath: string): Promise<Map<string, ExternalTensor>> {
  const model = onnx.ModelProto.decode(await readFile(modelPath));
  const out = new Map<string, ExternalTensor>();
  for (const t of model.graph?.initializer ?? []) {
    if (!t.name || !t.externalData?.length) continue;
    const entry = (key: string) => t.externalData!.find((e) => e.key === key)?.value;
    const location = entry('location');
    if (!location) continue;
    out.set(t.name, {
      dims: (t.dims ?? []).map(Number),
      location,
      range: [Number(entry('offset') ?? 0), Number(entry('length') ?? 0)],
    });
  }
  return out;
}

export interface NativeKernelsRequest {
  readonly setting: NativeKernelsSetting;
  readonly modelPath: string;
  readonly config: MambaConfig;
  readonly dtype: WeightsDtype;
  readonly threads: number;
  readonly executionProvider: 'cpu' | 'cuda';
  /** Which build to load (tests may point at one); default the build this CPU runs. */
  readonly addonPath?: string;
}

/** The build to load, or why this engine cannot run on the native kernels (the weights are checked by planNativeKernels). */
function chooseAddon(r: NativeKernelsRequest): { addonPath: string; isa: NativeKernelsPlan['isa'] } | { reason: string } {
  if (r.executionProvider !== 'cpu') return { reason: 'the CUDA execution provider runs on the GPU' };
  if (r.config.hybrid) return { reason: 'hybrid models run on ONNX Runtime (the native kernels have no attention layers)' };
  if (r.config.intermediateSize % 16 !== 0) return { reason: `d_inner ${r.config.intermediateSize} is not a multiple of 16` };
  if (r.addonPath) {
    const cpu = nativeCpuBuildFor();
    if ('reason' in cpu) return cpu;
    if (!existsSync(r.addonPath)) return { reason: `${r.addonPath} does not exist` };
    return { addonPath: r.addonPath, isa: NATIVE_CPU_BUILDS.find((b) => b.addon === r.addonPath)?.isa ?? 'given' };
  }
  const ready = nativeCpuAddonReady();
  if ('reason' in ready) return ready;
  return { addonPath: ready.build.addon, isa: ready.build.isa };
}

/**
 * The native kernels' plan for this engine, or the reason it runs on ONNX Runtime
 * (setting auto or off). With setting on, a reason is a NativeKernelsUnavailableError.
 */
export async function planNativeKernels(r: NativeKernelsRequest): Promise<{ plan: NativeKernelsPlan } | { reason: string }> {
  if (r.setting === 'off') return { reason: 'ORT_NATIVE_KERNELS=off' };
  const refuse = (reason: string) => {
    if (r.setting === 'on') throw new NativeKernelsUnavailableError(`ORT_NATIVE_KERNELS=on, but ${reason}`);
    return { reason };
  };
  const chosen = chooseAddon(r);
  if ('reason' in chosen) return refuse(chosen.reason);
  const bits = r.dtype === 'int8' ? 8 : r.dtype === 'int4' ? 4 : 32;
  const tensors = await externalInitializers(r.modelPath);
  const missing: string[] = [];
  const range = (name: string): Range => {
    const t = tensors.get(name);
    if (!t) {
      missing.push(name);
      return [0, 0];
    }
    return t.range;
  };
  const optional = (name: string): Range | undefined => tensors.get(name)?.range;
  // The names registerLinear (linear.ts) gives a projection's initializers.
  const matrix = (name: string): MatrixRanges => {
    if (bits === 32) {
      const bias = optional(f32LinearNames(name).bias);
      return { data: range(f32LinearNames(name).wT), ...(bias ? { bias } : {}) };
    }
    const named = nbitsNames(name, bits);
    const bias = optional(named.bias);
    return { data: range(named.data), scales: range(named.scales), ...(bias ? { bias } : {}) };
  };
  const c = r.config;
  const layers = Array.from({ length: c.numLayers }, (_, i): NativeDecoderOptions['layers'][number] => {
    const n = mambaLayerWeightNames(i);
    const convB = optional(n.convBias);
    return {
      norm: range(n.norm),
      inProj: matrix(n.inProj),
      convW: range(n.convWKD),
      ...(convB ? { convB } : {}),
      xProj: matrix(n.xProj),
      dtProj: matrix(n.dtProj),
      negAT: range(n.negExpAT),
      Dskip: range(n.Dskip),
      outProj: matrix(n.outProj),
    };
  });
  // f32: the table and the head's rows [V, d] as they are (a tied head: the same bytes).
  const head = bits === 32 ? { data: range(WEIGHT_NAMES.head) } : matrix(WEIGHT_NAMES.head);
  const embedData = bits === 32 ? WEIGHT_NAMES.embeddings : nbitsNames(WEIGHT_NAMES.embeddings, bits).data;
  const embed = bits === 32 ? { data: range(embedData) } : { data: range(embedData), scales: range(nbitsNames(WEIGHT_NAMES.embeddings, bits).scales) };
  const normF = range(WEIGHT_NAMES.normF);
  if (missing.length > 0) return refuse(`the graph build lacks ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}`);
  const locations = new Set([...tensors.values()].map((t) => t.location));
  if (locations.size !== 1) return refuse('the graph build keeps its weights in more than one file');
  const headRows = tensors.get(bits === 32 ? WEIGHT_NAMES.head : nbitsNames(WEIGHT_NAMES.head, bits).data)!.dims[0]!;
  if (tensors.get(embedData)!.dims[0] !== headRows) return refuse('the embedding and the LM head have different numbers of rows');
  const weightsPath = join(dirname(r.modelPath), [...locations][0]!);
  // f32: in_proj and out_proj from their column strips, made once beside the build.
  let stripsPath: string | undefined;
  if (bits === 32) {
    const sources: StripSource[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const n = mambaLayerWeightNames(i);
      for (const [name, inputs, outputs] of [
        [n.inProj, c.hiddenSize, 2 * c.intermediateSize],
        [n.outProj, c.intermediateSize, c.hiddenSize],
      ] as const) {
        sources.push({ name, range: tensors.get(f32LinearNames(name).wT)!.range, inputs, outputs });
      }
    }
    try {
      const strips = await ensureF32Strips(dirname(r.modelPath), weightsPath, sources);
      stripsPath = strips.path;
      // The projection's bias stays where the build has it.
      const fromStrips = (m: MatrixRanges, name: string): MatrixRanges => ({ strips: strips.ranges.get(name)!, ...(m.bias ? { bias: m.bias } : {}) });
      layers.forEach((l, i) => {
        const n = mambaLayerWeightNames(i);
        l.inProj = fromStrips(l.inProj, n.inProj);
        l.outProj = fromStrips(l.outProj, n.outProj);
      });
    } catch (err) {
      return refuse(`the f32 strips file could not be made (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  return {
    plan: {
      addonPath: chosen.addonPath,
      isa: chosen.isa,
      decoder: {
        weightsPath,
        ...(stripsPath ? { stripsPath } : {}),
        bits,
        threads: r.threads,
        dims: { d: c.hiddenSize, layers: c.numLayers, D: c.intermediateSize, N: c.stateSize, R: c.timeStepRank, K: c.convKernel, V: headRows, eps: c.layerNormEpsilon },
        embed,
        head,
        normF,
        layers,
      },
    },
  };
}
