#!/usr/bin/env bash
# The cuda engine's GPU runbook: build, check, sanitize, benchmark, golden fixture, on a lent
# GPU machine (no Node, no network). docs/cuda-engine.md explains each step and what to do
# with the results. One step per device call keeps each call well inside its 10 minutes:
#
#   here, once:   npx tsx tools/gpu/pack-carry.ts          (fills .device-carry/, ~52 MiB)
#   there:        bash tools/gpu/runbook.sh STEP            (device run, carry [".device-carry"])
#
# STEP: setup | build | kernels | test | test-hybrid | sanitize | bench | bench-f32 | golden | all
# Results go to $OUT (the device tool brings back up to 8 files): build.log, scan_bench.txt,
# test-gpu.txt, sanitizer-*.txt, bench.txt/bench-*.json, hf-golden-*.json.
# The attention hybrid is in every step: scan_bench checks its kernels against float64,
# test:gpu holds hybrid engines to the reference (test-hybrid runs only those, the quickest
# first look), and the benchmark runs the pure model and the two hybrids (W 512, 2048) together.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/mamba-gpu-out}"
mkdir -p "$OUT"
CARRY=.device-carry
export PATH="$PWD/$CARRY/bin:$PATH"
JOBS="${JOBS:-16}"

setup() {
  # Idempotent: a warm machine keeps what an earlier call unpacked.
  if [ ! -x "$CARRY/bin/node" ]; then
    [ -f "$CARRY/node.xz" ] || { echo "missing $CARRY/node.xz: run tools/gpu/pack-carry.ts here and carry .device-carry" >&2; exit 1; }
    mkdir -p "$CARRY/bin"
    xz -dc "$CARRY/node.xz" > "$CARRY/bin/node"
    chmod +x "$CARRY/bin/node"
  fi
  if [ ! -d node_modules/vitest ]; then
    tar -xJf "$CARRY/node_modules.tar.xz"
  fi
  node --version
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
  nvcc --version | tail -2
}

tsx() { node node_modules/tsx/dist/cli.mjs "$@"; }
vitest() { node node_modules/vitest/vitest.mjs "$@"; }

build() {
  setup
  # sm_90 only there (the full four-arch build is what CI-less machines check; see docs).
  tsx worker/native/build.ts --archs 90 --jobs "$JOBS" 2>&1 | tail -20
  cp worker/native/build/build.log "$OUT/build.log"
  ls -la worker/native/build/Release/mamba_native.node worker/native/build/scan_bench
}

kernels() {
  [ -x worker/native/build/scan_bench ] || build
  worker/native/build/scan_bench 2>&1 | tee "$OUT/scan_bench.txt"
}

test_gpu() {
  [ -f worker/native/build/Release/mamba_native.node ] || build
  set -o pipefail
  vitest run --config tools/gpu/vitest.gpu.config.ts --reporter=verbose 2>&1 | tee "$OUT/test-gpu.txt"
}

test_hybrid() {
  [ -f worker/native/build/Release/mamba_native.node ] || build
  set -o pipefail
  vitest run --config tools/gpu/vitest.gpu.config.ts --reporter=verbose -t hybrid 2>&1 | tee "$OUT/test-gpu-hybrid.txt"
}

sanitize() {
  [ -f worker/native/build/Release/mamba_native.node ] || build
  # Kernels alone first (small shapes), each tool: bad accesses, shared-memory races (the scan's
  # block scan and carry), barrier misuse, reads of never-written memory.
  for tool in memcheck racecheck synccheck initcheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 worker/native/build/scan_bench --quick --iters 2 \
      > "$OUT/sanitizer-$tool.txt" 2>&1 && echo "$tool: clean" || echo "$tool: FAILED (see $OUT/sanitizer-$tool.txt)"
  done
  # Then the whole engine under memcheck through the GPU tests, without graphs too.
  compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 \
    node node_modules/vitest/vitest.mjs run --config tools/gpu/vitest.gpu.config.ts > "$OUT/sanitizer-tests.txt" 2>&1 \
    && echo "test:gpu under memcheck: clean" || echo "test:gpu under memcheck: FAILED (see $OUT/sanitizer-tests.txt)"
  tail -5 "$OUT/sanitizer-tests.txt"
}

# One dtype per call: three models (pure, hybrid W 512, hybrid W 2048) each load and time
# batch 1/8/64 decode and two prefills, which with checkpoint generation on a fresh machine
# approaches the 10 minutes a call may take.
bench_dtype() {
  [ -f worker/native/build/Release/mamba_native.node ] || build
  [ -f "$OUT/scan_bench.txt" ] || kernels > /dev/null
  copy=$(sed -n 's/^device-to-device copy: \([0-9.]*\) GB\/s.*/\1/p' "$OUT/scan_bench.txt")
  tsx bench/cuda-engine.ts --dtype "$1" --models pure,hybrid-w512,hybrid-w2048 ${copy:+--copy-gbs "$copy"} \
    --json "$OUT/bench-$1.json" 2>&1 | tee -a "$OUT/bench.txt"
}
bench() { bench_dtype BF16; }
bench_f32() { bench_dtype F32; }

golden() {
  # HF transformers' MambaForCausalLM on the committed golden checkpoints (no Node needed).
  # HF has no model of the attention hybrid (a mamba-serve extension; hf-golden.test.ts skips
  # those cases too): checkpoints whose config names layer_types are left out.
  for case in worker/engine/testing/golden/*/; do
    name=$(basename "$case")
    if grep -q '"layer_types"' "$case/config.json"; then echo "golden: $name is a hybrid, no HF model: skipped"; continue; fi
    PYTHONUNBUFFERED=1 python3 tools/gpu/hf_golden.py --model-dir "$case" --tokens-from "$case/golden.json" \
      --out "$OUT/hf-golden-$name.json"
  done
}

case "${1:-}" in
  setup) setup ;;
  build) build ;;
  kernels) kernels ;;
  test) test_gpu ;;
  test-hybrid) test_hybrid ;;
  sanitize) sanitize ;;
  bench) bench ;;
  bench-f32) bench_f32 ;;
  golden) golden ;;
  all) build; kernels; test_gpu; sanitize; bench; bench_f32; golden ;;
  *) echo "usage: $0 setup|build|kernels|test|test-hybrid|sanitize|bench|bench-f32|golden|all" >&2; exit 2 ;;
esac
