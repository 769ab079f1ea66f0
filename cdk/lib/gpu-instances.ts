// What each supported GPU instance size offers. The stack needs it to place one worker
// per GPU (`gpuCount: 1`), to size a worker's memory reservation and to turn "max workers"
// into "max instances". Only families with NVIDIA GPUs that the ECS GPU-optimized AMI
// drives are listed; an unknown size is a config error rather than a silent misfit.

export interface GpuInstanceShape {
  readonly gpus: number;
  readonly vcpus: number;
  readonly memoryGiB: number;
  /** GPU memory per GPU, GiB (for the docs and sanity checks on model size). */
  readonly gpuMemoryGiB: number;
  /** CUDA compute capability without the dot (75 = sm_75): the worker image compiles for it. */
  readonly cudaArch: string;
}

type SizeTable = Readonly<Record<string, readonly [gpus: number, vcpus: number, memoryGiB: number]>>;

// g4dn: NVIDIA T4 16 GiB. g5: A10G 24 GiB. g6: L4 24 GiB. g6e: L40S 48 GiB.
const G4DN: SizeTable = {
  xlarge: [1, 4, 16], '2xlarge': [1, 8, 32], '4xlarge': [1, 16, 64], '8xlarge': [1, 32, 128],
  '16xlarge': [1, 64, 256], '12xlarge': [4, 48, 192],
};
const G5_G6: SizeTable = {
  xlarge: [1, 4, 16], '2xlarge': [1, 8, 32], '4xlarge': [1, 16, 64], '8xlarge': [1, 32, 128],
  '16xlarge': [1, 64, 256], '12xlarge': [4, 48, 192], '24xlarge': [4, 96, 384], '48xlarge': [8, 192, 768],
};
const G6E: SizeTable = {
  xlarge: [1, 4, 32], '2xlarge': [1, 8, 64], '4xlarge': [1, 16, 128], '8xlarge': [1, 32, 256],
  '16xlarge': [1, 64, 512], '12xlarge': [4, 48, 384], '24xlarge': [4, 96, 768], '48xlarge': [8, 192, 1536],
};

const FAMILIES: Readonly<Record<string, { sizes: SizeTable; gpuMemoryGiB: number; cudaArch: string }>> = {
  g4dn: { sizes: G4DN, gpuMemoryGiB: 16, cudaArch: '75' },
  g5: { sizes: G5_G6, gpuMemoryGiB: 24, cudaArch: '86' },
  g6: { sizes: G5_G6, gpuMemoryGiB: 24, cudaArch: '89' },
  g6e: { sizes: G6E, gpuMemoryGiB: 48, cudaArch: '89' },
};

export const SUPPORTED_GPU_FAMILIES = Object.keys(FAMILIES);

/** The shape of `instanceType` (e.g. "g5.xlarge"), or undefined when it is not a supported GPU size. */
export function gpuInstanceShape(instanceType: string): GpuInstanceShape | undefined {
  const [family, size] = instanceType.split('.');
  const entry = family === undefined ? undefined : FAMILIES[family];
  const row = entry === undefined || size === undefined ? undefined : entry.sizes[size];
  if (entry === undefined || row === undefined) return undefined;
  const [gpus, vcpus, memoryGiB] = row;
  return { gpus, vcpus, memoryGiB, gpuMemoryGiB: entry.gpuMemoryGiB, cudaArch: entry.cudaArch };
}
