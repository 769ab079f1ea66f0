// A Mamba-1 decode step and prefill on the CPU, over block-quantized weights, with SIMD kernels
// (AVX-512 VNNI, or AVX2 when compiled with -DMAMBA_CPU_AVX2) and OpenMP threads: the native
// kernels of the ORT engine (worker/native-cpu/src/addon.cpp, docs/cpu-engine.md) and of
// bench/native-kernels/kernels.cpp.
//
// Weights are the ORT build's bytes as they are (quantize.ts): a matrix W [N, K] is N rows of
// ceil(K / 128) blocks, each block 128 codes q (int8: one byte each; int4: byte j holds element
// 2j in its low nibble and 2j + 1 in its high one) and one fp32 scale, W ≈ (q − 2^(bits−1)) ·
// scale. Activations are quantized per block of 128 to int8 with one fp32 scale (what
// MatMulNBits' accuracy_level 4 does), and products are integer (vpdpbusd: the weights'
// unsigned codes times the activations' signed ones; the zero point comes off once a block
// through the activations' code sum; AVX2's variant below). For int4 the activation codes of a
// block are stored evens first, then odds, per vector of weight bytes, so the low and high
// nibbles of a load meet their activations with no shuffle of the weights.
//
// f32 builds (bits 32) are read as the graph build stores them too: a projection's weights
// transposed, Wᵀ [K, N] (what ONNX MatMul takes; `colsMajor`), and the embedding and the LM
// head as rows [V, d]; in_proj and out_proj, the big ones, from a copy of Wᵀ in column strips
// (`strips`: [ceil(N / 48), K, 48], each strip contiguous down the rows, made once beside the
// build by native-strips.ts). Their activations are not quantized: the matmuls multiply
// floats (f32ColsTile, f32RowsRow below).
//
// States use the ORT graph's layouts: conv [K, D] (the last K inputs of the conv, newest last)
// and ssm [N, D] per layer, so a vector holds a run of channels everywhere.
#pragma once

#include <immintrin.h>
#include <linux/futex.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#ifndef MAMBA_CPU_BARRIER_SPINS
#define MAMBA_CPU_BARRIER_SPINS 1024
#endif

namespace mamba_cpu {

constexpr int kBlock = 128;
/** Sequences one step computes at once; a larger batch runs in groups of this many. */
constexpr int kMaxBatch = 8;
/** Columns of an f32 strip (QMatrix::strips): 3 AVX-512 vectors, 6 AVX2 ones. */
constexpr int kStrip = 48;

/**
 * A matrix W [rows, cols] (rows: outputs, cols: inputs), y = W x + bias. bits 8 or 4: blocks of
 * quantized codes, row by row; bits 32: floats, as rows [rows, cols] or, `colsMajor`, as Wᵀ
 * [cols, rows] (the f32 graph's MatMul layout).
 */
struct QMatrix {
  int rows = 0, cols = 0, bits = 8, blocks = 0, blockBytes = 0;
  bool colsMajor = false;
  bool strips = false;             // f32 Wᵀ in column strips [ceil(rows / kStrip), cols, kStrip] (colsMajor too)
  const uint8_t* data = nullptr;   // [rows, blocks, blockBytes]; f32: [rows, cols], [cols, rows] or strips
  const float* scales = nullptr;   // [rows * blocks]; f32: none
  const float* bias = nullptr;     // [rows] or null

  static QMatrix of(int rows, int cols, int bits, const uint8_t* data, const float* scales, const float* bias) {
    QMatrix m;
    m.rows = rows;
    m.cols = cols;
    m.bits = bits;
    m.blocks = (cols + kBlock - 1) / kBlock;
    m.blockBytes = kBlock * bits / 8;
    m.data = data;
    m.scales = scales;
    m.bias = bias;
    return m;
  }
  static QMatrix f32(int rows, int cols, bool colsMajor, const float* data, const float* bias) {
    QMatrix m = of(rows, cols, 32, reinterpret_cast<const uint8_t*>(data), nullptr, bias);
    m.colsMajor = colsMajor;
    return m;
  }
  /** f32 Wᵀ as column strips: strip j holds columns [48 j, 48 j + 48) of every row k, row after row (zero past `rows`). */
  static QMatrix f32Strips(int rows, int cols, const float* data, const float* bias) {
    QMatrix m = f32(rows, cols, true, data, bias);
    m.strips = true;
    return m;
  }
  const float* floats() const { return reinterpret_cast<const float*>(data); }
  size_t dataBytes() const {
    if (strips) return size_t((rows + kStrip - 1) / kStrip) * kStrip * cols * 4;
    return bits == 32 ? size_t(rows) * cols * 4 : size_t(rows) * blocks * blockBytes;
  }
  size_t scaleCount() const { return bits == 32 ? 0 : size_t(rows) * blocks; }
  /** The stored code of element (r, c) (bits 8 and 4). */
  int code(int r, int c) const {
    const uint8_t* blk = data + (size_t(r) * blocks + c / kBlock) * blockBytes;
    const int j = c % kBlock;
    if (bits == 8) return blk[j];
    return (j & 1) ? (blk[j >> 1] >> 4) : (blk[j >> 1] & 15);
  }
  float value(int r, int c) const {
    if (strips) return floats()[(size_t(r / kStrip) * cols + c) * kStrip + r % kStrip];
    if (bits == 32) return colsMajor ? floats()[size_t(c) * rows + r] : floats()[size_t(r) * cols + c];
    return float(code(r, c) - (1 << (bits - 1))) * scales[size_t(r) * blocks + c / kBlock];
  }
};

struct Dims {
  int d = 0;       // hidden size
  int layers = 0;  // Mamba layers
  int D = 0;       // d_inner (a multiple of 16)
  int N = 0;       // d_state
  int R = 0;       // dt rank
  int K = 0;       // conv kernel
  int V = 0;       // logit rows (the head's rows)
  float eps = 1e-5f;
};

/**
 * A quantized dt_proj ([D, R]: one short row a channel, R = 48 columns of one 128-value block
 * for mamba-130m) by columns, for dtProjChannels: codes [ceil(R / 4)][D][4], each channel's
 * codes of 4 consecutive columns side by side (a vector of them is W channels' worth, as
 * VNNI's 4-byte dot products take them), as stored (0..15 or 0..255); scales [blocks][D].
 * Made once from the build's matrix (an owned copy: 74 KB a layer for mamba-130m). Empty for
 * f32 weights, which keep the row kernel.
 */
struct DtColumns {
  std::shared_ptr<uint8_t> codes;
  std::shared_ptr<float> scales;
  explicit operator bool() const { return bool(codes); }
};

struct Layer {
  const float* norm = nullptr;    // [d]
  QMatrix inProj;                 // [2D, d]
  const float* convW = nullptr;   // [K, D]
  const float* convB = nullptr;   // [D] or null
  QMatrix xProj;                  // [R + 2N, D]
  QMatrix dtProj;                 // [D, R], its bias the dt bias
  DtColumns dtCols;               // dtProj by columns (quantized weights; prepareModel)
  const float* negAT = nullptr;   // [N, D] = −exp(A_log)ᵀ
  const float* Dskip = nullptr;   // [D]
  QMatrix outProj;                // [d, D]
};

struct Model {
  Dims dims;
  std::vector<Layer> layers;
  const float* normF = nullptr;  // [d]
  QMatrix embed;                 // [V, d]: rows dequantized at the step's start (tied: the head)
  QMatrix head;                  // [V, d]
  int prefetchBytes = 8192;      // how far ahead the matmuls ask for weights
};

template <typename T>
T* alignedArray(size_t n) {
  const size_t bytes = std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return static_cast<T*>(p);
}

/** Blocks of dt_proj's columns dtProjChannels takes (R up to 1024; the row kernel beyond). */
constexpr int kDtMaxBlocks = 8;

/** dt_proj by columns (DtColumns), from its quantized rows; empty for f32 or a wider dt rank. */
inline DtColumns makeDtColumns(const QMatrix& w) {
  DtColumns t;
  if (w.bits == 32 || w.blocks > kDtMaxBlocks) return t;
  const int D = w.rows, quads = (w.cols + 3) / 4;
  t.codes = std::shared_ptr<uint8_t>(alignedArray<uint8_t>(size_t(quads) * D * 4), std::free);
  t.scales = std::shared_ptr<float>(alignedArray<float>(size_t(w.blocks) * D), std::free);
  uint8_t* codes = t.codes.get();
  float* scales = t.scales.get();
  for (int c = 0; c < D; c++) {
    for (int j = 0; j < w.cols; j++) codes[(size_t(j / 4) * D + c) * 4 + j % 4] = uint8_t(w.code(c, j));
    for (int k = 0; k < w.blocks; k++) scales[size_t(k) * D + c] = w.scales[size_t(c) * w.blocks + k];
  }
  return t;
}

/** What the kernels make once from a loaded model's weights: dt_proj by columns. */
inline void prepareModel(Model& m) {
  for (Layer& L : m.layers) L.dtCols = makeDtColumns(L.dtProj);
}


// ---- the instruction set: one of two, chosen when the file is compiled ----------------------
//
// Avx512 (the default): AVX-512 F/BW/VL/DQ and VNNI; Avx2 (-DMAMBA_CPU_AVX2): AVX2 and FMA,
// for x86-64 CPUs without AVX-512. The kernels below are written once against this interface.
// Both compute the same products: AVX2's vpmaddubsw cannot take int8 weights' unsigned codes
// (a pair of 255 · 127 products overflows its 16 bits), so on AVX2 they are centred first
// (q − 128) and multiplied sign-adjusted (Avx2::dotCentred), and no zero point is taken off.

#if !defined(MAMBA_CPU_AVX2)  // its 512-bit types need AVX-512 enabled to compile
struct Avx512 {
  static constexpr int W = 16;          // floats a vector
  static constexpr int kBytes = 64;     // bytes a vector
  static constexpr int kAccRegs = 24;   // accumulators an f32 tile keeps in registers (of 32)
  static constexpr bool kInt8Centred = false;
  using F = __m512;
  using I = __m512i;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  /** The first n < W floats at p, the other lanes 0 (nothing past them is read). */
  static F loadFirst(const float* p, int n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F abs(F v) { return _mm512_abs_ps(v); }
  static F roundNearest(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  /** p · 2^n for integral n in [−126, 127]. */
  static F scale2(F p, F n) { return _mm512_scalef_ps(p, n); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }
  static float maxOf(F v) { return _mm512_reduce_max_ps(v); }
  /** One bit a lane (lane 0 lowest): where v is NaN; where a equals b (−0 equals +0). */
  static unsigned nanMask(F v) { return unsigned(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)); }
  static unsigned eqMask(F a, F b) { return unsigned(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)); }
  static I loadBytes(const void* p) { return _mm512_loadu_si512(p); }
  static I zeroI() { return _mm512_setzero_si512(); }
  static I set1I(int32_t v) { return _mm512_set1_epi32(v); }
  static I subI(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I low4(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0f)); }
  static I high4(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f)); }
  /** acc + Σ over each 4 bytes of w (unsigned) · x (signed). */
  static I dot(I acc, I w, I x) { return _mm512_dpbusd_epi32(acc, w, x); }
  /** acc + the products of n vectors of int4 codes w[v] and the activation codes at x, vector by vector. */
  template <int n>
  static I dotInt4(I acc, const I* w, const int8_t* x) {
    for (int v = 0; v < n; v++) acc = dot(acc, w[v], loadBytes(x + v * kBytes));
    return acc;
  }
  static F toFloat(I v) { return _mm512_cvtepi32_ps(v); }
  static I toInt(F v) { return _mm512_cvtps_epi32(v); }  // rounding to nearest even
  static I addI(I a, I b) { return _mm512_add_epi32(a, b); }
  static I xorI(I a, I b) { return _mm512_xor_si512(a, b); }
  static int64_t low64(I v) { return _mm_cvtsi128_si64(_mm512_castsi512_si128(v)); }
  static int32_t sumI(I v) { return _mm512_reduce_add_epi32(v); }
  /** The W lanes' int32 values (all within ±127) as W bytes. */
  static void storeCodes(int8_t* q, I v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(v)); }
};
#endif

struct Avx2 {
  static constexpr int W = 8;
  static constexpr int kBytes = 32;
  static constexpr int kAccRegs = 12;  // of 16 registers
  static constexpr bool kInt8Centred = true;
  using F = __m256;
  using I = __m256i;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  /** The first n < W floats at p, the other lanes 0 (nothing past them is read). */
  static F loadFirst(const float* p, int n) {
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F abs(F v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }
  static F roundNearest(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F scale2(F p, F n) {
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
  static float sum(F v) {
    const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
  }
  static float maxOf(F v) {
    const __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 b = _mm_max_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_max_ss(b, _mm_movehdup_ps(b)));
  }
  static unsigned nanMask(F v) { return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))); }
  static unsigned eqMask(F a, F b) { return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ))); }
  static I loadBytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I zeroI() { return _mm256_setzero_si256(); }
  static I set1I(int32_t v) { return _mm256_set1_epi32(v); }
  static I subI(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I low4(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
  static I high4(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }
  /** acc + Σ over each 4 bytes of w (unsigned, < 128: int4 codes) · x (signed). */
  static I dot(I acc, I w, I x) { return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))); }
  /**
   * acc + the products of n vectors of int4 codes w[v] and the activation codes at x. A pair of
   * products is at most 2 · 15 · 127 = 3810, so n <= 8 vpmaddubsw results add exactly in 16 bits
   * before one vpmaddwd widens them: the same sums as n calls of dot, in 2n + 1 instructions
   * instead of 3n.
   */
  template <int n>
  static I dotInt4(I acc, const I* w, const int8_t* x) {
    static_assert(n >= 1 && n <= 8, "16-bit sums of at most 8 products");
    __m256i s = _mm256_maddubs_epi16(w[0], loadBytes(x));
    for (int v = 1; v < n; v++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[v], loadBytes(x + v * kBytes)));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
  }
  /**
   * acc + Σ over each 4 bytes of (w − 128) · x, for int8 codes w: centred (wc = w − 128, in
   * [−128, 127]), then |wc| · (x with wc's sign). Not |x| · (wc with x's sign): negating
   * wc = −128 overflows, where |−128| read unsigned is 128, and x (|x| <= 127) takes any sign.
   */
  static I dotCentred(I acc, I w, I x) {
    const __m256i wc = _mm256_xor_si256(w, _mm256_set1_epi8(char(0x80)));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wc), _mm256_sign_epi8(x, wc)), _mm256_set1_epi16(1)));
  }
  static F toFloat(I v) { return _mm256_cvtepi32_ps(v); }
  static I toInt(F v) { return _mm256_cvtps_epi32(v); }
  static I addI(I a, I b) { return _mm256_add_epi32(a, b); }
  static I xorI(I a, I b) { return _mm256_xor_si256(a, b); }
  static int64_t low64(I v) { return _mm_cvtsi128_si64(_mm256_castsi256_si128(v)); }
  static int32_t sumI(I v) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
    int32_t t = 0;
    for (int32_t x : lanes) t += x;
    return t;
  }
  static void storeCodes(int8_t* q, I v) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
    for (int i = 0; i < 8; i++) q[i] = int8_t(lanes[i]);
  }
};

#if defined(MAMBA_CPU_AVX2)
using V = Avx2;
#else
using V = Avx512;
#endif

/** Whether `Bits`-bit weight codes are centred before the products (int8 on AVX2: V::dotCentred). */
template <int Bits>
constexpr bool kCodesCentred = Bits == 8 && V::kInt8Centred;
/** The zero point taken off the products of `Bits`-bit codes (none when they are centred). */
template <int Bits>
constexpr int kZeroPoint = kCodesCentred<Bits> ? 0 : 1 << (Bits - 1);

/** One step of a block's integer dot product: centred int8 codes (AVX2) or zero-point ones. */
template <class Isa, bool Centred>
inline typename Isa::I dotStep(typename Isa::I acc, typename Isa::I w, typename Isa::I x) {
  if constexpr (Centred) return Isa::dotCentred(acc, w, x);
  else return Isa::dot(acc, w, x);
}

/**
 * A matmul's activations, per row: quantized per block (int8 codes, one scale, and the scale
 * times the codes' sum for the weights' zero point) for quantized weights, or, for f32 weights
 * (`floats`), the values as they are.
 */
struct QActs {
  int rows = 0, blocks = 0;
  int8_t* q = nullptr;     // [rows, blocks * 128]
  float* scale = nullptr;  // [rows, blocks]
  float* scaledSum = nullptr;  // [rows, blocks]: scale · Σ codes
  float* f = nullptr;      // [rows, blocks * 128], f32 weights' (zero past the columns)
  QActs(int maxCols, int rows_, bool floats = false) : rows(rows_), blocks((maxCols + kBlock - 1) / kBlock) {
    if (floats) {
      f = alignedArray<float>(size_t(rows) * blocks * kBlock);
      return;
    }
    q = alignedArray<int8_t>(size_t(rows) * blocks * kBlock);
    scale = alignedArray<float>(size_t(rows) * blocks);
    scaledSum = alignedArray<float>(size_t(rows) * blocks);
  }
  QActs(const QActs&) = delete;
  QActs& operator=(const QActs&) = delete;
  ~QActs() {
    std::free(q);
    std::free(scale);
    std::free(scaledSum);
    std::free(f);
  }
};

/** Rows of a QActs from one row on: what a matmul reads. */
struct ActsView {
  int blocks;
  const int8_t* q;
  const float* scale;
  const float* scaledSum;
  const float* f;
  ActsView(const QActs& a, int row = 0) : blocks(a.blocks), q(a.q), scale(a.scale), scaledSum(a.scaledSum), f(a.f) { *this = from(row); }
  /** Floats from one row to the next (f). */
  size_t stride() const { return size_t(blocks) * kBlock; }
  ActsView from(int row) const {
    ActsView v = *this;
    // Only the arrays this kind of activations has (pointer arithmetic on null is undefined).
    if (q) {
      v.q += size_t(row) * blocks * kBlock;
      v.scale += size_t(row) * blocks;
      v.scaledSum += size_t(row) * blocks;
    }
    if (f) v.f += size_t(row) * stride();
    return v;
  }
};

/**
 * The codes of one block of `n` <= 128 values (the rest 0), rounded to nearest even. For int4
 * weights (`nibbleOrder`) each vector's worth of codes is stored as the weights' nibbles meet
 * them: a load of V::kBytes weight bytes holds elements 2j (low nibbles) and 2j + 1 (high) of
 * 2 · V::kBytes elements, so those go evens first, then odds.
 */
inline void quantizeBlock(const float* x, int n, int8_t* q, float& scale, float& scaledSum, bool nibbleOrder) {
  alignas(64) int8_t codes[kBlock];
  float amax = 0.f;
  if (n == kBlock) {
    V::F m = V::zero();
    for (int i = 0; i < kBlock; i += V::W) m = V::max(m, V::abs(V::load(x + i)));
    amax = V::maxOf(m);
  } else {
    for (int i = 0; i < n; i++) amax = std::max(amax, std::fabs(x[i]));
  }
  const float s = amax / 127.f;
  const float inv = s > 0.f ? 1.f / s : 0.f;
  int32_t total = 0;
  if (n == kBlock) {
    const V::F vinv = V::set1(inv);
    V::I vsum = V::zeroI();
    for (int i = 0; i < kBlock; i += V::W) {
      const V::I v = V::toInt(V::mul(V::load(x + i), vinv));
      V::storeCodes(codes + i, v);
      vsum = V::addI(vsum, v);
    }
    total = V::sumI(vsum);
  } else {
    for (int i = 0; i < kBlock; i++) {
      const int v = i < n ? int(std::nearbyint(x[i] * inv)) : 0;
      codes[i] = int8_t(v);
      total += v;
    }
  }
  if (nibbleOrder) {
    constexpr int G = V::kBytes;  // pairs of elements a weight load holds
    for (int g = 0; g < kBlock; g += 2 * G)
      for (int j = 0; j < G; j++) {
        q[g + j] = codes[g + 2 * j];
        q[g + G + j] = codes[g + 2 * j + 1];
      }
  } else {
    std::memcpy(q, codes, kBlock);
  }
  scale = s;
  scaledSum = s * float(total);
}

/**
 * Blocks [k0, k1) of rows [r0, r1) of x (rows `stride` apart, `cols` used) into the same rows and
 * blocks of `a`: as they are (`floats`, for f32 weights), or quantized, the codes in their own
 * order or (`nibbleOrder`) as int4 weight loads meet them.
 */
inline void quantizeRangeAs(const float* x, int stride, int r0, int r1, int cols, int k0, int k1, QActs& a, bool floats, bool nibbleOrder) {
  for (int b = r0; b < r1; b++)
    for (int k = k0; k < k1; k++) {
      const int start = k * kBlock, n = std::min(cols, start + kBlock) - start;
      const size_t at = size_t(b) * a.blocks + k;
      if (floats) {
        std::memcpy(a.f + at * kBlock, x + size_t(b) * stride + start, size_t(n) * 4);
        std::memset(a.f + at * kBlock + n, 0, size_t(kBlock - n) * 4);
        continue;
      }
      quantizeBlock(x + size_t(b) * stride + start, n, a.q + at * kBlock, a.scale[at], a.scaledSum[at], nibbleOrder);
    }
}

/** Blocks [k0, k1) of rows [r0, r1) of x into `a`, in the form `w`'s kernel reads them. */
inline void quantizeRange(const float* x, int stride, int r0, int r1, int cols, int k0, int k1, QActs& a, const QMatrix& w) {
  quantizeRangeAs(x, stride, r0, r1, cols, k0, k1, a, w.bits == 32, w.bits == 4);
}

/** Rows [r0, r1) of x, every block. */
inline void quantizeRows(const float* x, int stride, int r0, int r1, int cols, QActs& a, const QMatrix& w) { quantizeRange(x, stride, r0, r1, cols, 0, w.blocks, a, w); }

inline void quantizeActs(const float* x, int stride, int batch, int cols, QActs& a, const QMatrix& w) { quantizeRows(x, stride, 0, batch, cols, a, w); }

/**
 * One weight row against B rows of activations: y[b][r] for b < B. A row at a time: one row
 * read at 57 GB/s where 4 rows at a time (with a float zero-point correction in every block)
 * read at 35–43 (batch 1, bench/native-kernels' program, three runs; batch 2: 3.2 against 4.3
 * ms a step with 2 rows at a time). A block costs what the weights' unpacking, its integer dot
 * product, and one conversion and multiply-add cost; the zero point comes off once a row (below).
 */
template <int B, int Bits, bool Padded = false>
inline void matmulRow(const QMatrix& w, const ActsView& a, float* y, int yStride, int r, int prefetchBytes) {
  constexpr bool kCentred = kCodesCentred<Bits>;
  constexpr int kZero = kZeroPoint<Bits>;
  constexpr int kVecs = kBlock / V::kBytes;  // activation vectors a block
  // A block's bytes as a constant (w.blockBytes): the prefetch below is then one or two
  // instructions, not a loop of its own in every block.
  constexpr int kBlockBytes = kBlock * Bits / 8;
  // Padded: the row's last block ends in zero padding (a dt rank or a width that is not a
  // multiple of 128, as the tests' small models have), where the
  // activation codes are 0, so the vectors wholly past the columns are left out: the same
  // integer sums with fewer products (int8, and int4 on AVX2; AVX-512 loads a whole int4 block
  // at once). A weight load of int4 holds 2 · kBytes columns, of int8 kBytes.
  constexpr int kColsPerLoad = Bits == 4 ? 2 * V::kBytes : V::kBytes;
  const int lastLoads = Padded ? (w.cols - (w.blocks - 1) * kBlock + kColsPerLoad - 1) / kColsPerLoad : 0;
  V::F acc[B];
  for (int b = 0; b < B; b++) acc[b] = V::zero();
  const uint8_t* row = w.data + size_t(r) * w.blocks * kBlockBytes;
  const float* scales = w.scales + size_t(r) * w.blocks;
  for (int k = 0; k < w.blocks; k++) {
    const uint8_t* blk = row + size_t(k) * kBlockBytes;
    // The hardware prefetcher alone left the loads waiting (perf: most samples on the
    // instructions behind them): 4 KB ahead took 7-10 % off a step, 8 KB a little more with a
    // row at a time (a step's weights stream through in row order, so ahead is the next rows).
    for (int line = 0; line < kBlockBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + prefetchBytes + line), _MM_HINT_T0);
    V::I wv[kVecs];  // weight codes, in the order of the activation vectors
    // Activation vectors this block takes: all, but in a padded row's last block those with columns.
    const int vecs = Padded && k == w.blocks - 1 ? (Bits == 4 ? 2 * lastLoads : lastLoads) : kVecs;
    if (Bits == 8) {
      for (int v = 0; v < kVecs; v++)
        if (!Padded || v < vecs) wv[v] = V::loadBytes(blk + v * V::kBytes);
    } else {
      for (int v = 0; v < kVecs; v += 2) {
        if (Padded && v >= vecs) break;
        const V::I packed = V::loadBytes(blk + (v / 2) * V::kBytes);
        wv[v] = V::low4(packed);
        wv[v + 1] = V::high4(packed);
      }
    }
    const float ws = scales[k];
    for (int b = 0; b < B; b++) {
      const size_t at = size_t(b) * a.blocks + k;
      const int8_t* xq = a.q + at * kBlock;
      V::I dot = V::zeroI();
      if constexpr (Bits == 4) {
        // int4 blocks are 2 AVX-512 vectors or 4 AVX2 ones: a padded one takes 2 or all.
        static_assert(kVecs == 2 || kVecs == 4, "int4: 2 or 4 activation vectors a block");
        if (kVecs == 2 || vecs == kVecs) dot = V::dotInt4<kVecs>(dot, wv, xq);
        else dot = V::dotInt4<2>(dot, wv, xq);
      } else {
        for (int v = 0; v < kVecs; v++)
          if (!Padded || v < vecs) dot = dotStep<V, kCentred>(dot, wv[v], V::loadBytes(xq + v * V::kBytes));
      }
      // The two scales multiply as scalars: one vector multiply a block fewer, which int4 at
      // batch 1 on AVX2 notices (it computes about as fast as memory streams its weights:
      // host E, alternating steps in one process, 0.2–3.6 % off a step).
      acc[b] = V::fmadd(V::toFloat(dot), V::set1(a.scale[at] * ws), acc[b]);
    }
  }
  if constexpr (kZero != 0) {
    // The zero point comes off once a row: Σ_k ws_k · xs_k · (Σ w·x − zero · Σ x) is the sums
    // above less zero · Σ_k ws_k · (xs_k · Σ x), a vector dot product of the row's scales with
    // the activations' scaled sums. Taken off in each block's integers instead (−zero · Σ x
    // moved into a vector as the sum's start), it cost 5 instructions a block, a GPR-to-vector
    // move among them. With that and the constant block size above, an int4 block at batch 1
    // went from 1.55 to 1.30 ns (in_proj's rows), 1.38 to 1.07 (out_proj's) and 1.65 to 1.41
    // (the head's), on host F with the rows in L2 (a scratch program, alternating builds); the
    // kernels program's int4 step, 4–20 % faster in 6 alternating pairs (AVX2 build 8–12 %).
    // Both integer sums are exact in float (< 2^24), so the results differ by float rounding
    // of the products (the float64 check: 2.8e-7 of the largest output, as before).
    for (int b = 0; b < B; b++) {
      const float* zs = a.scaledSum + size_t(b) * a.blocks;
      V::F corr = V::zero();
      int k = 0;
      for (; k + V::W <= w.blocks; k += V::W) corr = V::fmadd(V::load(scales + k), V::load(zs + k), corr);
      if (k < w.blocks) corr = V::fmadd(V::loadFirst(scales + k, w.blocks - k), V::loadFirst(zs + k, w.blocks - k), corr);
      acc[b] = V::fmadd(V::set1(-float(kZero)), corr, acc[b]);
    }
  }
  const float bias = w.bias ? w.bias[r] : 0.f;
  for (int b = 0; b < B; b++) y[size_t(b) * yStride + r] = V::sum(acc[b]) + bias;
}

/**
 * One row of f32 weights stored as rows (the LM head) against B rows of activations: the same
 * row at a time, one vector of products a batch row at a time, summed across the vector at the end.
 */
template <int B>
inline void f32RowsRow(const QMatrix& w, const ActsView& a, float* y, int yStride, int r, int prefetchBytes) {
  const float* row = w.floats() + size_t(r) * w.cols;
  const size_t xs = a.stride();
  V::F acc[B];
  for (int b = 0; b < B; b++) acc[b] = V::zero();
  int c = 0;
  for (; c + V::W <= w.cols; c += V::W) {
    if (prefetchBytes && (c * 4) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(row + c) + prefetchBytes, _MM_HINT_T0);
    const V::F wv = V::load(row + c);
    for (int b = 0; b < B; b++) acc[b] = V::fmadd(wv, V::load(a.f + b * xs + c), acc[b]);
  }
  const float bias = w.bias ? w.bias[r] : 0.f;
  for (int b = 0; b < B; b++) {
    float total = V::sum(acc[b]);
    for (int k = c; k < w.cols; k++) total = std::fma(row[k], a.f[b * xs + k], total);
    y[size_t(b) * yStride + r] = total + bias;
  }
}

template <int B, int Bits>
inline void matmulRows(const QMatrix& w, const ActsView& a, float* y, int yStride, int r0, int r1, int prefetchBytes) {
  if constexpr (Bits == 32) {
    for (int r = r0; r < r1; r++) f32RowsRow<B>(w, a, y, yStride, r, prefetchBytes);
  } else if (w.cols % kBlock != 0) {
    for (int r = r0; r < r1; r++) matmulRow<B, Bits, true>(w, a, y, yStride, r, prefetchBytes);
  } else {
    for (int r = r0; r < r1; r++) matmulRow<B, Bits>(w, a, y, yStride, r, prefetchBytes);
  }
}

template <int Bits>
inline void matmulRowsAnyBatch(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int r0, int r1, int pf) {
  switch (batch) {
    case 1: return matmulRows<1, Bits>(w, a, y, yStride, r0, r1, pf);
    case 2: return matmulRows<2, Bits>(w, a, y, yStride, r0, r1, pf);
    case 3: return matmulRows<3, Bits>(w, a, y, yStride, r0, r1, pf);
    case 4: return matmulRows<4, Bits>(w, a, y, yStride, r0, r1, pf);
    case 5: return matmulRows<5, Bits>(w, a, y, yStride, r0, r1, pf);
    case 6: return matmulRows<6, Bits>(w, a, y, yStride, r0, r1, pf);
    case 7: return matmulRows<7, Bits>(w, a, y, yStride, r0, r1, pf);
    default: return matmulRows<8, Bits>(w, a, y, yStride, r0, r1, pf);
  }
}

/** This thread's share [first, second) of n items, split evenly over the team. */
inline std::pair<int, int> share(int n) {
  const int team = omp_get_num_threads(), me = omp_get_thread_num();
  return {int(int64_t(n) * me / team), int(int64_t(n) * (me + 1) / team)};
}

/** Column vectors an f32 tile of B activation rows keeps in registers: B · NV accumulators. */
constexpr int colsTileVecs(int B) { return std::max(1, std::min(8, V::kAccRegs / B)); }

/** Rows of Wᵀ a decode step's f32 matmul takes at a time (f32Cols; -D to experiment). */
#ifndef MAMBA_CPU_F32_KBLOCK
#define MAMBA_CPU_F32_KBLOCK 8
#endif
constexpr int kF32KBlock = MAMBA_CPU_F32_KBLOCK;
/** Rows of Wᵀ a prefill's f32 matmul packs at a time: a panel's slice that stays in L1 (f32Cols). */
#ifndef MAMBA_CPU_F32_PACK_ROWS
#define MAMBA_CPU_F32_PACK_ROWS 128
#endif
constexpr int kF32PackRows = MAMBA_CPU_F32_PACK_ROWS;

/**
 * A tile of y = W x + bias for f32 W stored transposed (Wᵀ [cols, rows], the f32 graph's
 * MatMul layout): NV vectors of columns for B rows of activations, over rows [k0, k1) of Wᵀ. `w0`
 * is row k0 at the tile's first column, rows `ld` floats apart; `y` the tile's first column of
 * activation row 0. Each row of Wᵀ's slice is loaded once and multiplied by each activation
 * row's x[k], the B · NV sums in registers, taken from y when k0 > 0 (a float stored and loaded
 * is the same float); `bias` (the tile's, or null) is added at the end. So every output is Σ_k
 * in order of k, one fused multiply-add at a time, whatever the tile, the blocks of k and where
 * the slice is read from: decode and prefill compute each value alike. `pfRows`: how many rows
 * ahead to prefetch the slice (0: none).
 */
template <int B, int NV>
inline void f32ColsTile(const float* w0, size_t ld, const float* bias, const ActsView& a, int k0, int k1, float* y, int yStride, int pfRows) {
  const size_t xs = a.stride();
  constexpr int kLineFloats = 16;
  V::F acc[B][NV];
  for (int b = 0; b < B; b++)
    for (int v = 0; v < NV; v++) acc[b][v] = k0 == 0 ? V::zero() : V::load(y + size_t(b) * yStride + v * V::W);
  for (int k = k0; k < k1; k++) {
    const float* wk = w0 + size_t(k - k0) * ld;
    if (pfRows)
      for (int f = 0; f < NV * V::W; f += kLineFloats) _mm_prefetch(reinterpret_cast<const char*>(wk + size_t(pfRows) * ld + f), _MM_HINT_T0);
    V::F wv[NV];
    for (int v = 0; v < NV; v++) wv[v] = V::load(wk + v * V::W);
    for (int b = 0; b < B; b++) {
      const V::F xb = V::set1(a.f[b * xs + k]);
      for (int v = 0; v < NV; v++) acc[b][v] = V::fmadd(xb, wv[v], acc[b][v]);
    }
  }
  for (int b = 0; b < B; b++)
    for (int v = 0; v < NV; v++) V::store(y + size_t(b) * yStride + v * V::W, bias ? V::add(acc[b][v], V::load(bias + v * V::W)) : acc[b][v]);
}

/** Columns [c0, c1) over rows [k0, k1) of Wᵀ for B rows of activations (f32ColsTile); a rest of under a vector one column at a time. */
template <int B>
inline void f32ColsTiles(const QMatrix& w, const ActsView& a, float* y, int yStride, int c0, int c1, int k0, int k1, int pfRows) {
  constexpr int NV = colsTileVecs(B);
  const size_t ld = size_t(w.rows);
  const float* row0 = w.floats() + size_t(k0) * ld;
  const float* bias = k1 == w.cols ? w.bias : nullptr;
  int n = c0;
  for (; n + NV * V::W <= c1; n += NV * V::W) f32ColsTile<B, NV>(row0 + n, ld, bias ? bias + n : nullptr, a, k0, k1, y + n, yStride, pfRows);
  for (; n + V::W <= c1; n += V::W) f32ColsTile<B, 1>(row0 + n, ld, bias ? bias + n : nullptr, a, k0, k1, y + n, yStride, pfRows);
  const size_t xs = a.stride();
  for (; n < c1; n++)
    for (int b = 0; b < B; b++) {
      float& out = y[size_t(b) * yStride + n];
      float total = k0 == 0 ? 0.f : out;
      for (int k = k0; k < k1; k++) total = std::fma(a.f[b * xs + k], row0[size_t(k - k0) * ld + n], total);
      out = bias ? total + bias[n] : total;
    }
}

inline void f32ColsAnyBatch(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int c0, int c1, int k0, int k1, int pfRows) {
  switch (batch) {
    case 1: return f32ColsTiles<1>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 2: return f32ColsTiles<2>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 3: return f32ColsTiles<3>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 4: return f32ColsTiles<4>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 5: return f32ColsTiles<5>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 6: return f32ColsTiles<6>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    case 7: return f32ColsTiles<7>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
    default: return f32ColsTiles<8>(w, a, y, yStride, c0, c1, k0, k1, pfRows);
  }
}

/** Groups of activation rows a prefill's f32 tile takes, with three vectors of columns (its accumulators). */
constexpr int kF32Group = V::kAccRegs / 3;

/** One strip's tiles for B activation rows: as many vectors of its columns a tile as B leaves registers for. */
template <int B>
inline void f32StripTiles(const float* w0, const float* bias, const ActsView& a, int k0, int k1, float* y, int yStride, int pfRows) {
  constexpr int S = kStrip / V::W, NV = std::min(S, colsTileVecs(B)), R = S % NV;
  int v = 0;
  for (; v + NV <= S; v += NV) f32ColsTile<B, NV>(w0 + v * V::W, kStrip, bias ? bias + v * V::W : nullptr, a, k0, k1, y + v * V::W, yStride, pfRows);
  if constexpr (R > 0) f32ColsTile<B, R>(w0 + v * V::W, kStrip, bias ? bias + v * V::W : nullptr, a, k0, k1, y + v * V::W, yStride, pfRows);
}

inline void f32StripTilesAnyBatch(int batch, const float* w0, const float* bias, const ActsView& a, int k0, int k1, float* y, int yStride, int pfRows) {
  switch (batch) {
    case 1: return f32StripTiles<1>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 2: return f32StripTiles<2>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 3: return f32StripTiles<3>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 4: return f32StripTiles<4>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 5: return f32StripTiles<5>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 6: return f32StripTiles<6>(w0, bias, a, k0, k1, y, yStride, pfRows);
    case 7: return f32StripTiles<7>(w0, bias, a, k0, k1, y, yStride, pfRows);
    default: return f32StripTiles<8>(w0, bias, a, k0, k1, y, yStride, pfRows);
  }
}

/**
 * Rows [k0, k1) of one kStrip-wide slice of Wᵀ laid out as a strip (`w0`: its row k0, rows
 * kStrip floats apart; a strip of the strips file, or a slice copied into a buffer) for every
 * group of kF32Group of the `batch` activation rows; `y` at the slice's first column.
 */
inline void f32StripGroups(int batch, const float* w0, const float* bias, const ActsView& a, int k0, int k1, float* y, int yStride, int pfRows) {
  for (int g = 0; g < batch; g += kF32Group)
    f32StripTilesAnyBatch(std::min(kF32Group, batch - g), w0, bias, a.from(g), k0, k1, y + size_t(g) * yStride, yStride, g == 0 ? pfRows : 0);
}

/**
 * Columns [c0, c1) of y for any number of activation rows, Wᵀ stored as the build stores it
 * (the engine's x_proj and dt_proj; in_proj and out_proj come in strips, f32Strips below).
 *
 * A decode step's batch (up to kMaxBatch rows) goes through Wᵀ in blocks of kF32KBlock rows,
 * every group of rows and every column of the range in each block, so that each row of Wᵀ is
 * read from one end of the range to the other while the next block's are prefetched.
 *
 * A prompt goes by panels of kStrip columns: each panel's slice of kF32PackRows rows of Wᵀ is
 * copied into a buffer laid out as a strip (in L1), which every group of kF32Group prompt rows
 * then reads as it reads the strips file (compute-bound, where a decode step is bound by
 * reading Wᵀ). Read in place, the slice's rows lie a multiple of 4 KB apart (in_proj's rows
 * are 12 KB) and evict each other from L1.
 */
inline void f32Cols(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int c0, int c1, int prefetchBytes) {
  if (batch <= kMaxBatch) {
    for (int k0 = 0; k0 < w.cols; k0 += kF32KBlock) {
      const int k1 = std::min(w.cols, k0 + kF32KBlock);
      for (int g = 0; g < batch; g += kF32Group)
        f32ColsAnyBatch(std::min(kF32Group, batch - g), w, a.from(g), y + size_t(g) * yStride, yStride, c0, c1, k0, k1, g == 0 && prefetchBytes ? kF32KBlock : 0);
    }
    return;
  }
  alignas(64) float pack[kF32PackRows * kStrip];
  const size_t ld = size_t(w.rows);
  for (int p = c0; p < c1; p += kStrip) {
    const int p1 = std::min(c1, p + kStrip);
    if (p1 - p < kStrip) {  // a last, narrower panel: read in place
      for (int g = 0; g < batch; g += kF32Group) f32ColsAnyBatch(std::min(kF32Group, batch - g), w, a.from(g), y + size_t(g) * yStride, yStride, p, p1, 0, w.cols, 0);
      continue;
    }
    for (int k0 = 0; k0 < w.cols; k0 += kF32PackRows) {
      const int k1 = std::min(w.cols, k0 + kF32PackRows);
      for (int k = k0; k < k1; k++) std::memcpy(pack + size_t(k - k0) * kStrip, w.floats() + size_t(k) * ld + p, sizeof(float) * kStrip);
      f32StripGroups(batch, pack, k1 == w.cols && w.bias ? w.bias + p : nullptr, a, k0, k1, y + p, yStride, 0);
    }
  }
}

/**
 * Columns [c0, c1) of y for f32 Wᵀ stored as column strips (c0 a strip's first column), any
 * number of activation rows in groups of kF32Group. A strip is contiguous down all its rows, so
 * a decode step reads one stream a thread, strip after strip, the sums of a strip in registers
 * down all rows: read in place instead (f32Cols), a row of Wᵀ is 3–12 KB, and a block of them
 * read a slice at a time streamed in_proj at 13–16 GB/s and out_proj at 11–13 where strips
 * stream both at 19–21 (a plain read: 18–19; host D). A prompt takes a strip 128 rows at a time
 * (24 KB, in L1) for every group of its rows: no copy, the strip is already contiguous. A last
 * strip that the matrix ends inside goes through a buffer (the file pads it with zeros).
 */
inline void f32Strips(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int c0, int c1, int prefetchBytes) {
  const bool decode = batch <= kMaxBatch;
  const int pfRows = decode && prefetchBytes ? std::max(1, prefetchBytes / (kStrip * 4)) : 0;
  // Down all rows at once where one tile holds the strip for every row (the sums in registers
  // throughout); else 128 rows at a time, which the tiles and groups then find in L1.
  const bool oneTile = batch <= kF32Group && colsTileVecs(batch) >= kStrip / V::W;
  const int kc = oneTile ? w.cols : kF32PackRows;
  alignas(64) float rest[kF32Group * kStrip];
  for (int n = c0; n < c1; n += kStrip) {
    const float* strip = w.floats() + size_t(n / kStrip) * w.cols * kStrip;
    const int valid = std::min(kStrip, w.rows - n);
    if (valid < kStrip) {  // down all rows into the buffer, a group at a time, then the valid columns and their bias
      for (int g = 0; g < batch; g += kF32Group) {
        const int rows = std::min(kF32Group, batch - g);
        f32StripTilesAnyBatch(rows, strip, nullptr, a.from(g), 0, w.cols, rest, kStrip, g == 0 ? pfRows : 0);
        float* out = y + size_t(g) * yStride + n;
        for (int b = 0; b < rows; b++)
          for (int j = 0; j < valid; j++) out[size_t(b) * yStride + j] = w.bias ? rest[b * kStrip + j] + w.bias[n + j] : rest[b * kStrip + j];
      }
      continue;
    }
    for (int k0 = 0; k0 < w.cols; k0 += kc) {
      const int k1 = std::min(w.cols, k0 + kc);
      f32StripGroups(batch, strip + size_t(k0) * kStrip, k1 == w.cols && w.bias ? w.bias + n : nullptr, a, k0, k1, y + n, yStride, pfRows);
    }
  }
}

/** Rows [r0, r1) of y = W x for `batch` rows of activations (for Wᵀ: its columns), on this thread alone. */
inline void matmulRange(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int r0, int r1, int prefetchBytes) {
  if (w.bits == 8) matmulRowsAnyBatch<8>(batch, w, a, y, yStride, r0, r1, prefetchBytes);
  else if (w.bits == 4) matmulRowsAnyBatch<4>(batch, w, a, y, yStride, r0, r1, prefetchBytes);
  else if (w.strips) f32Strips(batch, w, a, y, yStride, r0, r1, prefetchBytes);
  else if (w.colsMajor) f32Cols(batch, w, a, y, yStride, r0, r1, prefetchBytes);
  else matmulRowsAnyBatch<32>(batch, w, a, y, yStride, r0, r1, prefetchBytes);
}

/**
 * Rows [r0, r1) of x (`cols` used) quantized per block as quantizeRows does, the codes in
 * their own order (what dtProjChannels reads; quantizeRows orders them for int4 weight loads).
 */
inline void quantizeRowsInOrder(const float* x, int stride, int r0, int r1, int cols, QActs& a) {
  quantizeRangeAs(x, stride, r0, r1, cols, 0, (cols + kBlock - 1) / kBlock, a, false, false);
}

/**
 * dt before softplus for the channels [c0, c1) of one token (one row of `a`, quantized by
 * quantizeRowsInOrder): dt_proj by columns (DtColumns), W channels at a time. As a row kernel
 * (matmulRow) each channel was one short row of one block: a horizontal sum, the zero point
 * and a store a channel, 3.6 ns a channel on host F with the weights in L2, the phase 0.09 ms
 * of an int4 step. Here a vector holds W channels' sums: one 4-byte dot product a 4 columns
 * (the activation codes broadcast), the zero point off in integers once a block, one
 * conversion and multiply-add a block. The same integer products as the row kernel, so the
 * floats differ by their rounding; decode and prefill both take this path, so a prompt still
 * equals its steps.
 */
template <int Bits>
inline void dtProjChannels(const QMatrix& w, const DtColumns& t, const ActsView& a, int c0, int c1, float* dt) {
  constexpr bool kCentred = kCodesCentred<Bits>;
  constexpr int kZero = kZeroPoint<Bits>;
  const int D = w.rows, quads = (w.cols + 3) / 4;
  // zero · Σ codes, a block.
  int32_t zeroSums[kDtMaxBlocks];
  for (int k = 0; k < w.blocks; k++) {
    int32_t sum = 0;
    for (int j = 0; j < std::min(kBlock, w.cols - k * kBlock); j++) sum += a.q[size_t(k) * kBlock + j];
    zeroSums[k] = kZero * sum;
  }
  for (int c = c0; c < c1; c += V::W) {
    V::F out = w.bias ? V::load(w.bias + c) : V::zero();
    for (int k = 0; k < w.blocks; k++) {
      V::I dot = V::zeroI();
      for (int p = k * (kBlock / 4); p < std::min(quads, (k + 1) * (kBlock / 4)); p++) {
        int32_t four;
        std::memcpy(&four, a.q + size_t(p) * 4, 4);
        dot = dotStep<V, kCentred>(dot, V::loadBytes(t.codes.get() + (size_t(p) * D + c) * 4), V::set1I(four));
      }
      if (kZero) dot = V::subI(dot, V::set1I(zeroSums[k]));
      out = V::fmadd(V::toFloat(dot), V::mul(V::load(t.scales.get() + size_t(k) * D + c), V::set1(a.scale[k])), out);
    }
    V::store(dt + c, out);
  }
}

inline void dtProjChannelsAny(const QMatrix& w, const DtColumns& t, const ActsView& a, int c0, int c1, float* dt) {
  if (w.bits == 8) dtProjChannels<8>(w, t, a, c0, c1, dt);
  else dtProjChannels<4>(w, t, a, c0, c1, dt);
}

/** Rows [r0, r1) of the dt-rank values x (R of them) into `a`, as layer L's dt_proj kernel reads them. */
inline void quantizeForDtProj(const Layer& L, const float* x, int stride, int r0, int r1, int R, QActs& a) {
  if (L.dtCols) quantizeRowsInOrder(x, stride, r0, r1, R, a);
  else quantizeRows(x, stride, r0, r1, R, a, L.dtProj);
}

/** Weight rows a prefill matmul takes at a time: all its token groups read them from L1/L2 (-D to experiment). */
#ifndef MAMBA_CPU_PANEL_ROWS
#define MAMBA_CPU_PANEL_ROWS 16
#endif
constexpr int kPanelRows = MAMBA_CPU_PANEL_ROWS;

/**
 * y[b][r] = Σ_c W[r][c] x[b][c] (+ bias) for `batch` rows of activations, inside a parallel
 * region: this thread's share of the weight rows, in runs of 16 so that no two threads write
 * one cache line of y. (OpenMP's dynamic schedule, chunks of 64 rows, was 8-10 % slower.) Up
 * to kMaxBatch rows (decode) stream the weights once; more (prefill) go panel by panel, each
 * panel of kPanelRows weight rows meeting every group of kMaxBatch activation rows while it is
 * in cache. The caller's barrier follows.
 */
inline void matmul(int batch, const QMatrix& w, const ActsView& a, float* y, int yStride, int prefetchBytes) {
  const int unit = w.strips ? kStrip : 16;  // a thread takes whole strips
  const auto [c0, c1] = share((w.rows + unit - 1) / unit);
  const int r0 = c0 * unit, r1 = std::min(w.rows, c1 * unit);
  if (r0 >= r1) return;
  // f32 Wᵀ goes by panels at any batch (f32Cols).
  if (batch <= kMaxBatch || (w.bits == 32 && w.colsMajor)) return matmulRange(batch, w, a, y, yStride, r0, r1, prefetchBytes);
  for (int p = r0; p < r1; p += kPanelRows) {
    const int p1 = std::min(r1, p + kPanelRows);
    // The first group streams the panel in (prefetching ahead as decode does); the rest find it cached.
    for (int g = 0; g < batch; g += kMaxBatch)
      matmulRange(std::min(kMaxBatch, batch - g), w, a.from(g), y + size_t(g) * yStride, yStride, p, p1, g == 0 ? prefetchBytes : 0);
  }
}

// exp, a vector: 2^(x log2 e), a degree-6 polynomial for 2^f on [−0.5, 0.5], relative error
// ~2e-7; the argument clamped to [−87, 88].
inline V::F expV(V::F x) {
  x = V::min(V::max(x, V::set1(-87.f)), V::set1(88.f));
  const V::F t = V::mul(x, V::set1(1.44269504089f));
  const V::F n = V::roundNearest(t);
  const V::F f = V::sub(t, n);
  V::F p = V::set1(1.5353362e-4f);
  for (float c : {1.3398874e-3f, 9.6180250e-3f, 5.5503406e-2f, 2.4022652e-1f, 6.9314718e-1f, 1.f}) p = V::fmadd(p, f, V::set1(c));
  return V::scale2(p, n);
}

inline V::F siluV(V::F v) { return V::div(v, V::add(V::set1(1.f), expV(V::sub(V::zero(), v)))); }

// softplus(v) = max(v, 0) + log(1 + e), e = exp(−|v|) in (0, 1]; log(1 + e) = 2 atanh(z) with
// z = e / (2 + e) <= 1/3, its odd series to z^13 (the next term is below 2e-8 of the sum).
inline V::F softplusV(V::F v) {
  const V::F e = expV(V::sub(V::zero(), V::abs(v)));
  const V::F z = V::div(e, V::add(V::set1(2.f), e));
  const V::F z2 = V::mul(z, z);
  V::F p = V::set1(1.f / 13);
  for (float c : {1.f / 11, 1.f / 9, 1.f / 7, 1.f / 5, 1.f / 3, 1.f}) p = V::fmadd(p, z2, V::set1(c));
  return V::add(V::max(v, V::zero()), V::mul(V::set1(2.f), V::mul(z, p)));
}

/** A prefill's working memory for chunks of up to `rows` tokens (kPrefillChunk). */
struct PrefillScratch {
  int rows;
  float *resid, *h, *xz, *xc, *xdbl, *dt, *y;
  QActs actsD, actsd, actsR;
  /** `f32`: for f32 weights (activations as floats). */
  PrefillScratch(const Dims& s, int rows_, bool f32 = false)
      : rows(rows_),
        resid(alignedArray<float>(size_t(rows) * s.d)),
        h(alignedArray<float>(size_t(rows) * s.d)),
        xz(alignedArray<float>(size_t(rows) * 2 * s.D)),
        xc(alignedArray<float>(size_t(rows) * s.D)),
        xdbl(alignedArray<float>(size_t(rows) * (s.R + 2 * s.N))),
        dt(alignedArray<float>(size_t(rows) * s.D)),
        y(alignedArray<float>(size_t(rows) * s.D)),
        actsD(s.D, rows, f32),
        actsd(s.d, rows, f32),
        actsR(s.R, rows, f32) {}
  PrefillScratch(const PrefillScratch&) = delete;
  PrefillScratch& operator=(const PrefillScratch&) = delete;
  ~PrefillScratch() {
    for (float* p : {resid, h, xz, xc, xdbl, dt, y}) std::free(p);
  }
};

/** Where sequence b's layer li keeps its state: conv[b * layers + li] [K, D], ssm[…] [N, D]. */
struct StateRefs {
  float* const* conv;
  float* const* ssm;
};

inline void rmsnorm(const float* x, const float* w, float* out, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += double(x[i]) * x[i];
  const float inv = 1.f / std::sqrt(float(ss / n) + eps);
  for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/**
 * The residual stream between layers, rows [r0, r1): add the last layer's output h to resid
 * (when `add`: not before the first layer), normalize it into `normed` with `weight` (`normed`
 * may be h itself: a row is read before it is written), and quantize that into `acts` for
 * `next`, the matmul that reads it. The decode step and prefill both call it.
 */
inline void addNormQuantize(const Dims& s, int r0, int r1, float* resid, const float* h, bool add, float* normed, const float* weight, QActs& acts, const QMatrix& next) {
  for (int b = r0; b < r1; b++) {
    float* r = resid + size_t(b) * s.d;
    if (add)
      for (int c = 0; c < s.d; c++) r[c] += h[size_t(b) * s.d + c];
    rmsnorm(r, weight, normed + size_t(b) * s.d, s.d, s.eps);
  }
  quantizeRows(normed, s.d, r0, r1, s.d, acts, next);
}

/**
 * Optional wall time by phase (bench/native-kernels' `kernels --profile`), read by the team's
 * first thread as it ends each: its own work in a phase, and apart from it the wait at the
 * barrier that follows (where the other threads' longer share, or a slower core, shows).
 */
enum Phase { kEmbed, kNorm, kInProj, kInProjWait, kConv, kConvWait, kXProj, kDtProj, kScan, kScanWait, kOutProj, kOutProjWait, kHead, kPhases };
struct PhaseClock {
  virtual void mark(Phase) = 0;
  virtual ~PhaseClock() = default;
};

/**
 * The conv and SiLU of T tokens for the channel vector at c: token j's window is the K inputs
 * ending at its own (xz's rows, xzStride apart), the first of them from the state cs [K, D]
 * (the last K inputs, newest last) while j < K − 1; xc gets the outputs (rows xcStride apart)
 * and the state becomes the last K inputs. The decode step (a token a sequence) and prefill
 * both call it, so their arithmetic is one, as scanToken's.
 */
inline void convTokens(const Dims& s, const Layer& L, int c, int T, const float* xz, size_t xzStride, float* cs, float* xc, size_t xcStride) {
  auto input = [&](int i) { return i < s.K ? V::load(cs + i * s.D + c) : V::load(xz + size_t(i - s.K) * xzStride + c); };
  for (int j = 0; j < T; j++) {
    V::F acc = V::fmadd(V::load(L.convW + (s.K - 1) * s.D + c), input(j + s.K), L.convB ? V::load(L.convB + c) : V::zero());
    for (int k = 0; k < s.K - 1; k++) acc = V::fmadd(V::load(L.convW + k * s.D + c), input(j + 1 + k), acc);
    V::store(xc + size_t(j) * xcStride + c, siluV(acc));
  }
  // In order of k: row k takes input T + k, which is a later state row or a token's input.
  for (int k = 0; k < s.K; k++) V::store(cs + k * s.D + c, input(T + k));
}

/** One state element's update, h·exp(dt·(−exp A)) + dt·x·B: scanToken's and scanChannels' one arithmetic. */
inline V::F stateUpdate(V::F h, V::F dt, V::F negA, V::F dtx, V::F B) { return V::fmadd(h, expV(V::mul(dt, negA)), V::mul(dtx, B)); }

/**
 * One token's selective-scan update and gate for the channel vector at c: the token's dt before
 * softplus (dtRaw), input x, x_proj output (xdbl: dt rank, then B, then C), gate input z; the
 * layer's state rows hs [N, D] updated in place, y written. The decode step and prefill both
 * call it: their arithmetic is one, so a prompt leaves exactly what as many steps leave.
 */
inline void scanToken(const Dims& s, const Layer& L, int c, const float* dtRaw, const float* x, const float* xdbl, const float* z, float* hs, float* y) {
  const V::F dt = softplusV(V::load(dtRaw + c));
  const V::F xv = V::load(x + c);
  const V::F dtx = V::mul(dt, xv);
  V::F acc = V::mul(V::load(L.Dskip + c), xv);
  for (int n = 0; n < s.N; n++) {
    float* hp = hs + n * s.D + c;
    const V::F h = stateUpdate(V::load(hp), dt, V::load(L.negAT + n * s.D + c), dtx, V::set1(xdbl[s.R + n]));
    V::store(hp, h);
    acc = V::fmadd(h, V::set1(xdbl[s.R + s.N + n]), acc);
  }
  V::store(y + c, V::mul(acc, siluV(V::load(z + c))));
}

/**
 * scanToken for the channels [c0, c1) of one token at once, state row by state row: the decode
 * step's scan. The state [N, D] is then read a row at a time, [c0, c1) contiguous, where
 * scanToken, a vector of channels at a time, walks all N rows (6 KB apart for mamba-130m) for
 * each vector: measured on host D (AVX2), the phase of x_proj, dt_proj and the scan took 1.8 ms
 * of an int4 step's 6.0 that way. Each channel's arithmetic is scanToken's, in the same order
 * (dt, dt·x, D·x, then the N updates in order of n, then the gate), so the results are the same
 * floats: a prompt (scanToken along its tokens) still leaves what its steps leave. `work`:
 * 2 · (c1 − c0) floats; y holds the sums over n until the gate.
 */
inline void scanChannels(const Dims& s, const Layer& L, int c0, int c1, const float* dtRaw, const float* x, const float* xdbl, const float* z, float* hs, float* y, float* work) {
  float* dts = work - c0;                // dt by channel
  float* dtxs = work + (c1 - c0) - c0;  // dt · x by channel
  for (int c = c0; c < c1; c += V::W) {
    const V::F dt = softplusV(V::load(dtRaw + c));
    const V::F xv = V::load(x + c);
    V::store(dts + c, dt);
    V::store(dtxs + c, V::mul(dt, xv));
    V::store(y + c, V::mul(V::load(L.Dskip + c), xv));
  }
  constexpr int kLineFloats = 64 / 4;
  for (int n = 0; n < s.N; n++) {
    const V::F Bn = V::set1(xdbl[s.R + n]), Cn = V::set1(xdbl[s.R + s.N + n]);
    float* row = hs + n * s.D;
    const float* negA = L.negAT + n * s.D;
    // The next state row and its A, a line each per line of this row: the rows are D floats
    // apart and a thread's share of one is 3 KB, too short a run for the hardware prefetcher
    // (interleaved A/B on host E, int4 batch 1: 1–4 % off a step).
    const bool ahead = n + 1 < s.N;
    for (int c = c0; c < c1; c += V::W) {
      if (ahead && c % kLineFloats == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(row + s.D + c), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(negA + s.D + c), _MM_HINT_T0);
      }
      const V::F h = stateUpdate(V::load(row + c), V::load(dts + c), V::load(negA + c), V::load(dtxs + c), Bn);
      V::store(row + c, h);
      V::store(y + c, V::fmadd(h, Cn, V::load(y + c)));
    }
  }
  for (int c = c0; c < c1; c += V::W) V::store(y + c, V::mul(V::load(y + c), siluV(V::load(z + c))));
}

/**
 * The decode step's barrier for its team (inside an OpenMP parallel region, in place of `omp
 * barrier`): the last thread to arrive starts a new generation; the others spin until they see
 * it, and after a while sleep on it (a futex) until woken. Its atomics order memory as OpenMP's
 * barrier does: what any thread wrote before it, every thread reads after it. A step waits at
 * 97 of them (mamba-130m); libgomp's barrier took 1.6–1.9 µs for two threads on host F (a 2-vCPU
 * VM), this one 0.3–0.4 (scratch programs, back to back): the kernels program's int4 step at
 * batch 1 went from 1.65–1.75 to 1.48–1.59 ms in quiet minutes (alternating processes; within
 * noise in slow ones, and with the cores shared). Sleeping, not spinning on, is what keeps a
 * team that shares its cores (more threads than vCPUs, or the event loop and other processes
 * taking one) from waiting on a thread that cannot run.
 */
class TeamBarrier {
 public:
  void wait(int team) {
    if (team <= 1) return;
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == team - 1) {
      arrived_.store(0, std::memory_order_relaxed);  // before the new generation frees the others
      generation_.store(generation + 1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) futex(FUTEX_WAKE_PRIVATE, INT32_MAX);
      return;
    }
    // More threads than processors: the one awaited may be waiting for this one's core.
    const int spinLimit = team <= processors_ ? kSpins : 0;
    for (int spins = 0; spins < spinLimit; spins++) {
      if (generation_.load(std::memory_order_acquire) != generation) return;
      _mm_pause();
    }
    // A sleeper counts itself before it looks again, and the last arrival looks for sleepers
    // after the new generation (both sequentially consistent): one of the two sees the other.
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (generation_.load(std::memory_order_seq_cst) == generation) futex(FUTEX_WAIT_PRIVATE, generation);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  /** ~20–50 µs of pauses (-D to experiment): longer than a step's threads usually wait for each other. */
  static constexpr int kSpins = MAMBA_CPU_BARRIER_SPINS;
  const int processors_ = omp_get_num_procs();
  void futex(int op, uint32_t value) { syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), op, value, nullptr, nullptr, 0); }
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};
};

/**
 * A decode step's working memory for up to kMaxBatch sequences: the arrays the team shares, and
 * what each thread computes for itself (see step()).
 */
struct StepScratch {
  /** One thread's own: its copy of the residual stream, the normalized rows, x_proj's output. */
  struct Own {
    float *resid, *hn, *xdbl, *scan;  // scan: scanChannels' work for any share of the channels
    QActs actsd, actsR;
    Own(const Dims& s, bool f32)
        : resid(alignedArray<float>(size_t(kMaxBatch) * s.d)),
          hn(alignedArray<float>(size_t(kMaxBatch) * s.d)),
          xdbl(alignedArray<float>(size_t(kMaxBatch) * (s.R + 2 * s.N))),
          scan(alignedArray<float>(size_t(2) * s.D)),
          actsd(s.d, kMaxBatch, f32),
          actsR(s.R, kMaxBatch, f32) {}
    Own(const Own&) = delete;
    Own& operator=(const Own&) = delete;
    ~Own() {
      for (float* p : {resid, hn, xdbl, scan}) std::free(p);
    }
  };
  float *h, *xz, *xc, *dt, *y;
  QActs actsX, actsY;  // xc for x_proj, y for out_proj
  std::vector<std::unique_ptr<Own>> own;
  TeamBarrier barrier;
  /** For teams of up to `threads` threads (or OpenMP's default team size, if larger); `f32`: for f32 weights. */
  StepScratch(const Dims& s, int threads, bool f32 = false)
      : h(alignedArray<float>(size_t(kMaxBatch) * s.d)),
        xz(alignedArray<float>(size_t(kMaxBatch) * 2 * s.D)),
        xc(alignedArray<float>(size_t(kMaxBatch) * s.D)),
        dt(alignedArray<float>(size_t(kMaxBatch) * s.D)),
        y(alignedArray<float>(size_t(kMaxBatch) * s.D)),
        actsX(s.D, kMaxBatch, f32),
        actsY(s.D, kMaxBatch, f32) {
    for (int i = 0; i < std::max(threads, omp_get_max_threads()); i++) own.push_back(std::make_unique<Own>(s, f32));
  }
  StepScratch(const StepScratch&) = delete;
  StepScratch& operator=(const StepScratch&) = delete;
  ~StepScratch() {
    for (float* p : {h, xz, xc, dt, y}) std::free(p);
  }
};

/**
 * One decode step for `batch` <= kMaxBatch sequences: tokens in, logits [batch, V] (rows
 * `logitsStride` apart) out, states updated in place. Called inside a parallel region by
 * every thread of the team.
 *
 * Four barriers a layer (TeamBarrier's, ~0.4 µs; libgomp's cost ~1.5 on a 2-vCPU VM), where a
 * step of the first design had ten, with a thread idle through each single-threaded part: what
 * is cheap is computed by every thread for itself instead (its own copy of the residual stream
 * and its norm, x_proj whole), and each thread owns whole blocks of 128 channels, so that it
 * quantizes its own conv and scan outputs and computes dt for its own channels with no one
 * waiting:
 *   in_proj (rows split) | conv, quantize | x_proj (whole), dt_proj, scan, quantize | out_proj
 * Every value is computed by the same arithmetic as before (the kernels are row by row), so a
 * step equals a prefill token for token still.
 */
inline void step(const Model& m, int batch, const int* tokens, const StateRefs& st, StepScratch& t, float* logits, int64_t logitsStride, PhaseClock* clock = nullptr) {
  const Dims& s = m.dims;
  const int me = omp_get_thread_num(), team = omp_get_num_threads();
  const int pf = m.prefetchBytes;
  auto mark = [&](Phase p) {
    if (clock && me == 0) clock->mark(p);
  };
  // The end of a phase: its own time, the team's barrier, and the wait there.
  auto meet = [&](Phase done, Phase waited) {
    mark(done);
    t.barrier.wait(team);
    mark(waited);
  };
  StepScratch::Own& my = *t.own[size_t(me)];
  // This thread's whole blocks of channels: [c0, c1), blocks [k0, k1).
  const int channelBlocks = (s.D + kBlock - 1) / kBlock;
  const int k0 = int(int64_t(channelBlocks) * me / team), k1 = int(int64_t(channelBlocks) * (me + 1) / team);
  const int c0 = std::min(s.D, k0 * kBlock), c1 = std::min(s.D, k1 * kBlock);
  const int xdblCols = s.R + 2 * s.N;
  for (int b = 0; b < batch; b++)
    for (int c = 0; c < s.d; c++) my.resid[size_t(b) * s.d + c] = m.embed.value(tokens[b], c);
  mark(kEmbed);
  for (int li = 0; li < s.layers; li++) {
    const Layer& L = m.layers[li];
    addNormQuantize(s, 0, batch, my.resid, t.h, li > 0, my.hn, L.norm, my.actsd, L.inProj);
    mark(kNorm);
    matmul(batch, L.inProj, my.actsd, t.xz, 2 * s.D, pf);
    meet(kInProj, kInProjWait);
    // The conv over the window [state rows 1..K−1, x], which becomes the new state; then SiLU.
    for (int b = 0; b < batch; b++)
      for (int c = c0; c < c1; c += V::W) convTokens(s, L, c, 1, t.xz + size_t(b) * 2 * s.D, 2 * s.D, st.conv[b * s.layers + li], t.xc + b * s.D, s.D);
    quantizeRange(t.xc, s.D, 0, batch, s.D, k0, k1, t.actsX, L.xProj);
    meet(kConv, kConvWait);
    matmulRange(batch, L.xProj, t.actsX, my.xdbl, xdblCols, 0, L.xProj.rows, pf);
    mark(kXProj);
    quantizeForDtProj(L, my.xdbl, xdblCols, 0, batch, s.R, my.actsR);
    if (!L.dtCols) matmulRange(batch, L.dtProj, my.actsR, t.dt, s.D, c0, c1, pf);
    else
      for (int b = 0; b < batch; b++)
        if (c0 < c1) dtProjChannelsAny(L.dtProj, L.dtCols, ActsView(my.actsR, b), c0, c1, t.dt + b * s.D);
    mark(kDtProj);
    // The selective-scan step and the gate, a row of the state at a time.
    for (int b = 0; b < batch; b++)
      if (c0 < c1) scanChannels(s, L, c0, c1, t.dt + b * s.D, t.xc + b * s.D, my.xdbl + b * xdblCols, t.xz + size_t(b) * 2 * s.D + s.D, st.ssm[b * s.layers + li], t.y + b * s.D, my.scan);
    quantizeRange(t.y, s.D, 0, batch, s.D, k0, k1, t.actsY, L.outProj);
    meet(kScan, kScanWait);
    matmul(batch, L.outProj, t.actsY, t.h, s.d, pf);
    meet(kOutProj, kOutProjWait);
  }
  addNormQuantize(s, 0, batch, my.resid, t.h, true, my.hn, m.normF, my.actsd, m.head);
  matmul(batch, m.head, my.actsd, logits, int(logitsStride), pf);
  t.barrier.wait(team);
  mark(kHead);
}

/** Tokens one prefill call computes at once (its PrefillScratch's rows); a longer prompt runs in chunks (-D to experiment). */
#ifndef MAMBA_CPU_PREFILL_CHUNK
#define MAMBA_CPU_PREFILL_CHUNK 128
#endif
constexpr int kPrefillChunk = MAMBA_CPU_PREFILL_CHUNK;

/**
 * Absorb T <= t.rows tokens of one sequence: its states (conv[li] [K, D], ssm[li] [N, D]) are
 * updated in place, and `logits` gets each token's row [T, V] (allLogits) or the last token's
 * [1, V] (none when null: a chunk before a prompt's last). Called inside a parallel region by
 * every thread of the team.
 *
 * The arithmetic is the decode step's, token for token: the same quantization of each token's
 * activations, the same kernels and the same order of operations, so a prompt absorbed here
 * leaves the state T decode steps would. What differs is the order of the work: each matmul
 * meets all T tokens while a panel of its weights is in cache (compute-bound, where a decode
 * step is bound by reading the weights), and the conv and the scan walk the T tokens in time
 * order for each vector of channels, the state in registers and L1.
 */
inline void prefill(const Model& m, int T, const int* tokens, float* const* conv, float* const* ssm, PrefillScratch& t, float* logits, bool allLogits) {
  const Dims& s = m.dims;
  const int pf = m.prefetchBytes;
  const auto [t0, t1] = share(T);  // this thread's tokens, for per-token work
  const int me = omp_get_thread_num(), team = omp_get_num_threads();
  const int v0 = int(int64_t(s.D / V::W) * me / team) * V::W, v1 = int(int64_t(s.D / V::W) * (me + 1) / team) * V::W;
  const int xdblCols = s.R + 2 * s.N;
  for (int b = t0; b < t1; b++)
    for (int c = 0; c < s.d; c++) t.resid[size_t(b) * s.d + c] = m.embed.value(tokens[b], c);
  for (int li = 0; li < s.layers; li++) {
    const Layer& L = m.layers[li];
    addNormQuantize(s, t0, t1, t.resid, t.h, li > 0, t.h, L.norm, t.actsd, L.inProj);
#pragma omp barrier
    matmul(T, L.inProj, t.actsd, t.xz, 2 * s.D, pf);
#pragma omp barrier
    // The conv over time, a vector of channels at a time.
    for (int c = v0; c < v1; c += V::W) convTokens(s, L, c, T, t.xz, 2 * s.D, conv[li], t.xc, s.D);
#pragma omp barrier
    quantizeRows(t.xc, s.D, t0, t1, s.D, t.actsD, L.xProj);
#pragma omp barrier
    matmul(T, L.xProj, t.actsD, t.xdbl, xdblCols, pf);
#pragma omp barrier
    quantizeForDtProj(L, t.xdbl, xdblCols, t0, t1, s.R, t.actsR);
#pragma omp barrier
    if (!L.dtCols) matmul(T, L.dtProj, t.actsR, t.dt, s.D, pf);
    else
      for (int j = 0; j < T; j++) dtProjChannelsAny(L.dtProj, L.dtCols, ActsView(t.actsR, j), v0, v1, t.dt + size_t(j) * s.D);
#pragma omp barrier
    // The selective scan over time and the gate, a vector of channels at a time.
    for (int c = v0; c < v1; c += V::W)
      for (int j = 0; j < T; j++)
        scanToken(s, L, c, t.dt + size_t(j) * s.D, t.xc + size_t(j) * s.D, t.xdbl + size_t(j) * xdblCols, t.xz + size_t(j) * 2 * s.D + s.D, ssm[li], t.y + size_t(j) * s.D);
#pragma omp barrier
    quantizeRows(t.y, s.D, t0, t1, s.D, t.actsD, L.outProj);
#pragma omp barrier
    matmul(T, L.outProj, t.actsD, t.h, s.d, pf);
#pragma omp barrier
  }
  // A chunk before a prompt's last leaves only its states behind: no final norm or head.
  if (logits && allLogits) {
    addNormQuantize(s, t0, t1, t.resid, t.h, true, t.h, m.normF, t.actsd, m.head);
#pragma omp barrier
    matmul(T, m.head, t.actsd, logits, s.V, pf);
  } else if (logits) {
#pragma omp single
    addNormQuantize(s, T - 1, T, t.resid, t.h, true, t.h, m.normF, t.actsd, m.head);
    matmul(1, m.head, ActsView(t.actsd, T - 1), logits, s.V, pf);
  }
#pragma omp barrier
}

}  // namespace mamba_cpu
