// A whole mamba-130m-shaped decode step (24 Mamba-1 layers and the LM head) in plain C++ with
// AVX-512 VNNI kernels and OpenMP threads, over block-quantized weights (blocks of 128 values,
// one fp32 scale each, implicit zero point 2^(bits-1): the bytes of the ORT engine's int8 and
// int4 builds) and int8 activations quantized per block (what MatMulNBits' accuracy_level 4
// does). Random weights: the speed does not depend on the values.
//
// It answers one question for issue #17: can a decode step that is not made of ONNX Runtime
// kernels read these weights near the memory bound on a 2-vCPU worker, where ORT's graph
// reads them at a sixth to a third of it. It is a measurement, not an engine: no N-API binding, no state
// import/export, no hybrid layers. Driven by bench/native-decode.ts, which builds it with the
// machine's g++ and checks it before timing it.
//
//   decode_step --dtype int8|int4 --batch B --steps S --threads T   timing, one JSON line
//   decode_step --dtype int8|int4 --batch B --check [--layers L]    kernels vs a float64
//                                                                   scalar reference, JSON
//   decode_step --bandwidth --threads T                             read bandwidth, JSON
//   (timing with --profile: also the time by phase, on stderr)
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kBlock = 128;
constexpr int kMaxBatch = 8;
int gPrefetchBytes = 4096;  // --prefetch: 2048 was 7 % slower, 8192 the same

struct Dims {
  int d = 768;      // d_model
  int layers = 24;
  int D = 1536;     // d_inner
  int N = 16;       // d_state
  int R = 48;       // dt_rank
  int K = 4;        // d_conv
  int V = 50280;    // vocab
  float eps = 1e-5f;
};

template <typename T>
T* alignedArray(size_t n) {
  size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!p) {
    std::fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
    std::exit(1);
  }
  std::memset(p, 0, bytes);
  return static_cast<T*>(p);
}

// W [rows, cols] in blocks of 128 along cols. int8: a block is 128 bytes, q = w/scale + 128.
// int4: a block is 64 bytes, byte j holding element j in its low nibble and element j + 64 in
// its high nibble, q = w/scale + 8. (The ORT build packs elements 2j and 2j + 1 into byte j;
// an engine reading that file as it is would store each block's activation codes evens first,
// then odds, and run these same kernels: no copy of the weights.)
struct QMatrix {
  int rows = 0, cols = 0, bits = 8, blocks = 0, blockBytes = 0;
  uint8_t* data = nullptr;
  float* scales = nullptr;  // [rows * blocks]
  float* bias = nullptr;    // [rows] or null
  size_t bytes() const { return size_t(rows) * blocks * blockBytes + size_t(rows) * blocks * 4 + (bias ? rows * 4 : 0); }
  int code(int r, int c) const {  // the stored code of element (r, c)
    const uint8_t* blk = data + (size_t(r) * blocks + c / kBlock) * blockBytes;
    int j = c % kBlock;
    if (bits == 8) return blk[j];
    return j < 64 ? (blk[j] & 15) : (blk[j - 64] >> 4);
  }
  double value(int r, int c) const { return double(code(r, c) - (1 << (bits - 1))) * scales[size_t(r) * blocks + c / kBlock]; }
};

QMatrix randomMatrix(std::mt19937& rng, int rows, int cols, int bits, bool withBias, float stddev) {
  QMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.bits = bits;
  m.blocks = (cols + kBlock - 1) / kBlock;
  m.blockBytes = kBlock * bits / 8;
  m.data = alignedArray<uint8_t>(size_t(rows) * m.blocks * m.blockBytes);
  m.scales = alignedArray<float>(size_t(rows) * m.blocks);
  std::uniform_int_distribution<int> codes(0, (1 << bits) - 1);
  const int zero = 1 << (bits - 1);
  // Uniform codes have a standard deviation of about 2^bits / sqrt(12).
  const float scale = stddev / (float((1 << bits)) / 3.4641f);
  for (int r = 0; r < rows; r++) {
    for (int b = 0; b < m.blocks; b++) {
      m.scales[size_t(r) * m.blocks + b] = scale;
      uint8_t* blk = m.data + (size_t(r) * m.blocks + b) * m.blockBytes;
      for (int j = 0; j < kBlock; j++) {
        int c = b * kBlock + j;
        int q = c < cols ? codes(rng) : zero;  // padding is the zero point: it adds nothing
        if (bits == 8) blk[j] = uint8_t(q);
        else if (j < 64) blk[j] = uint8_t(q);
        else blk[j - 64] = uint8_t(blk[j - 64] | (q << 4));
      }
    }
  }
  if (withBias) {
    m.bias = alignedArray<float>(rows);
    std::normal_distribution<float> n(0.f, 0.02f);
    for (int r = 0; r < rows; r++) m.bias[r] = n(rng);
  }
  return m;
}

struct Layer {
  float* norm;      // [d]
  QMatrix inProj;   // [2D, d]
  float* convW;     // [K, D]: tap-major, so 16 channels are one vector
  float* convB;     // [D]
  QMatrix xProj;    // [R + 2N, D]
  QMatrix dtProj;   // [D, R] + bias
  float* negA;      // [N, D] = -exp(A_log)^T
  float* Dskip;     // [D]
  QMatrix outProj;  // [d, D]
};

struct Model {
  Dims dims;
  std::vector<Layer> layers;
  float* normF;
  QMatrix head;  // [V, d], tied: the embedding reads its rows
  size_t weightBytes() const {
    const Dims& s = dims;
    size_t n = head.bytes() + size_t(s.d) * 4;  // + the final norm
    const size_t fp32PerLayer = size_t(s.d + s.D * s.K + s.D + s.D * s.N + s.D) * 4;  // norm, conv, A, D
    for (const Layer& l : layers) n += l.inProj.bytes() + l.xProj.bytes() + l.dtProj.bytes() + l.outProj.bytes() + fp32PerLayer;
    return n;
  }
};

float* randomVector(std::mt19937& rng, int n, float mean, float stddev) {
  float* v = alignedArray<float>(n);
  std::normal_distribution<float> dist(mean, stddev);
  for (int i = 0; i < n; i++) v[i] = dist(rng);
  return v;
}

Model randomModel(int bits, uint32_t seed, int layers) {
  Model m;
  m.dims.layers = layers;
  const Dims& s = m.dims;
  std::mt19937 rng(seed);
  for (int i = 0; i < s.layers; i++) {
    Layer l;
    l.norm = randomVector(rng, s.d, 1.f, 0.05f);
    l.inProj = randomMatrix(rng, 2 * s.D, s.d, bits, false, 1.f / std::sqrt(float(s.d)));
    l.convW = randomVector(rng, s.D * s.K, 0.f, 0.3f);
    l.convB = randomVector(rng, s.D, 0.f, 0.1f);
    l.xProj = randomMatrix(rng, s.R + 2 * s.N, s.D, bits, false, 1.f / std::sqrt(float(s.D)));
    l.dtProj = randomMatrix(rng, s.D, s.R, bits, true, 1.f / std::sqrt(float(s.R)));
    for (int c = 0; c < s.D; c++) l.dtProj.bias[c] = -4.f + l.dtProj.bias[c] * 50.f;  // softplus ≈ 0.02
    l.negA = alignedArray<float>(size_t(s.D) * s.N);
    for (int n = 0; n < s.N; n++)
      for (int c = 0; c < s.D; c++) l.negA[n * s.D + c] = -float(n + 1);  // Mamba's A_log = log(1..N)
    l.Dskip = randomVector(rng, s.D, 1.f, 0.1f);
    l.outProj = randomMatrix(rng, s.d, s.D, bits, false, 0.5f / std::sqrt(float(s.D)));
    m.layers.push_back(l);
  }
  m.normF = randomVector(rng, s.d, 1.f, 0.05f);
  m.head = randomMatrix(rng, s.V, s.d, bits, false, 1.f);
  return m;
}

// ---- activations quantized per block of 128 (symmetric int8, one fp32 scale a block) -------

struct QActs {
  int blocks = 0;
  int8_t* q = nullptr;     // [batch, blocks * 128]
  float* scale = nullptr;  // [batch, blocks]
  int32_t* sum = nullptr;  // [batch, blocks]: sum of the block's codes, for the zero point
};

QActs qacts(int maxCols) {
  QActs a;
  a.blocks = (maxCols + kBlock - 1) / kBlock;
  a.q = alignedArray<int8_t>(size_t(kMaxBatch) * a.blocks * kBlock);
  a.scale = alignedArray<float>(size_t(kMaxBatch) * a.blocks);
  a.sum = alignedArray<int32_t>(size_t(kMaxBatch) * a.blocks);
  return a;
}

// One whole block of 128 values, 16 lanes at a time: the same arithmetic as the scalar path
// below (float products, rounded to nearest even).
inline void quantizeBlock(const float* x, int8_t* q, float& scale, int32_t& sum) {
  __m512 m = _mm512_setzero_ps();
  for (int i = 0; i < kBlock; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  float amax = 0.f;
  for (float v : lanes) amax = std::max(amax, v);
  const float s = amax / 127.f;
  const __m512 inv = _mm512_set1_ps(s > 0.f ? 1.f / s : 0.f);
  __m512i total = _mm512_setzero_si512();
  for (int i = 0; i < kBlock; i += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(v));
    total = _mm512_add_epi32(total, v);
  }
  alignas(64) int32_t sums[16];
  _mm512_store_si512(sums, total);
  sum = 0;
  for (int32_t v : sums) sum += v;
  scale = s;
}

// Quantize x[b][0..cols) (stride xStride) into a's layout for `blocks` blocks; the padding is 0.
void quantizeActs(const float* x, int xStride, int batch, int cols, QActs& a, int blocks) {
  for (int b = 0; b < batch; b++) {
    for (int k = 0; k < blocks; k++) {
      const int start = k * kBlock, end = std::min(cols, start + kBlock);
      if (end - start == kBlock) {
        quantizeBlock(x + size_t(b) * xStride + start, a.q + (size_t(b) * a.blocks + k) * kBlock, a.scale[size_t(b) * a.blocks + k], a.sum[size_t(b) * a.blocks + k]);
        continue;
      }
      float amax = 0.f;
      for (int i = start; i < end; i++) amax = std::max(amax, std::fabs(x[size_t(b) * xStride + i]));
      const float s = amax / 127.f;
      const float inv = s > 0.f ? 1.f / s : 0.f;
      int8_t* q = a.q + (size_t(b) * a.blocks + k) * kBlock;
      int32_t sum = 0;
      for (int i = 0; i < kBlock; i++) {
        int v = start + i < end ? int(std::nearbyint(x[size_t(b) * xStride + start + i] * inv)) : 0;
        q[i] = int8_t(v);
        sum += v;
      }
      a.scale[size_t(b) * a.blocks + k] = s;
      a.sum[size_t(b) * a.blocks + k] = sum;
    }
  }
}

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// ---- the matmul: y[b][r] = sum_c W[r][c] x[b][c] (+ bias), rows split over the team ---------

// RU rows at a time share each activation load and give the core RU * B independent chains.
template <int B, int Bits, int RU>
void matmulRowGroup(const QMatrix& w, const QActs& a, float* y, int yStride, int r) {
  const int zero = 1 << (Bits - 1);
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512 acc[RU][B];
  float corr[RU][B];
  for (int u = 0; u < RU; u++)
    for (int b = 0; b < B; b++) {
      acc[u][b] = _mm512_setzero_ps();
      corr[u][b] = 0.f;
    }
  for (int k = 0; k < w.blocks; k++) {
    __m512i xlo[B], xhi[B];
    float xs[B], xz[B];
    for (int b = 0; b < B; b++) {
      const int8_t* xq = a.q + (size_t(b) * a.blocks + k) * kBlock;
      xlo[b] = _mm512_loadu_si512(xq);
      xhi[b] = _mm512_loadu_si512(xq + 64);
      xs[b] = a.scale[size_t(b) * a.blocks + k];
      xz[b] = xs[b] * float(zero * a.sum[size_t(b) * a.blocks + k]);
    }
    for (int u = 0; u < RU; u++) {
      const uint8_t* blk = w.data + (size_t(r + u) * w.blocks + k) * w.blockBytes;
      // Ask for the weights gPrefetchBytes bytes ahead: the hardware prefetcher alone left the
      // loads waiting (perf: most samples on the instructions behind them).
      for (int line = 0; line < w.blockBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + gPrefetchBytes + line), _MM_HINT_T0);
      __m512i lo, hi;
      if (Bits == 8) {
        lo = _mm512_loadu_si512(blk);
        hi = _mm512_loadu_si512(blk + 64);
      } else {
        const __m512i v = _mm512_loadu_si512(blk);
        lo = _mm512_and_si512(v, nibble);
        hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      }
      const float ws = w.scales[size_t(r + u) * w.blocks + k];
      for (int b = 0; b < B; b++) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo[b]), hi, xhi[b]);
        acc[u][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(ws * xs[b]), acc[u][b]);
        corr[u][b] += ws * xz[b];
      }
    }
  }
  for (int u = 0; u < RU; u++) {
    const float bias = w.bias ? w.bias[r + u] : 0.f;
    for (int b = 0; b < B; b++) y[size_t(b) * yStride + r + u] = hsum(acc[u][b]) - corr[u][b] + bias;
  }
}

template <int B, int Bits>
void matmulRows(const QMatrix& w, const QActs& a, float* y, int yStride, int rowBegin, int rowEnd) {
  constexpr int RU = B == 1 ? 4 : B <= 2 ? 2 : 1;
  int r = rowBegin;
  for (; r + RU <= rowEnd; r += RU) matmulRowGroup<B, Bits, RU>(w, a, y, yStride, r);
  for (; r < rowEnd; r++) matmulRowGroup<B, Bits, 1>(w, a, y, yStride, r);
}

template <int Bits>
void matmulRowsAnyBatch(int batch, const QMatrix& w, const QActs& a, float* y, int yStride, int r0, int r1) {
  switch (batch) {
    case 1: return matmulRows<1, Bits>(w, a, y, yStride, r0, r1);
    case 2: return matmulRows<2, Bits>(w, a, y, yStride, r0, r1);
    case 3: return matmulRows<3, Bits>(w, a, y, yStride, r0, r1);
    case 4: return matmulRows<4, Bits>(w, a, y, yStride, r0, r1);
    case 5: return matmulRows<5, Bits>(w, a, y, yStride, r0, r1);
    case 6: return matmulRows<6, Bits>(w, a, y, yStride, r0, r1);
    case 7: return matmulRows<7, Bits>(w, a, y, yStride, r0, r1);
    default: return matmulRows<8, Bits>(w, a, y, yStride, r0, r1);
  }
}

// Inside a parallel region: this thread's share of the rows, in runs of 16 so that no two
// threads write the same cache line of y. (Rows handed out in chunks of 64 as threads come for
// them, OpenMP's dynamic schedule, was 8-10 % slower.)
void matmul(int batch, const QMatrix& w, const QActs& a, float* y, int yStride) {
  const int team = omp_get_num_threads(), me = omp_get_thread_num();
  const int chunks = (w.rows + 15) / 16;
  const int c0 = int(int64_t(chunks) * me / team), c1 = int(int64_t(chunks) * (me + 1) / team);
  const int r0 = c0 * 16, r1 = std::min(w.rows, c1 * 16);
  if (r0 >= r1) return;
  if (w.bits == 8) matmulRowsAnyBatch<8>(batch, w, a, y, yStride, r0, r1);
  else matmulRowsAnyBatch<4>(batch, w, a, y, yStride, r0, r1);
}

// exp, 16 lanes: 2^(x log2 e), a degree-6 polynomial for 2^f on [-0.5, 0.5], relative error
// ~2e-7; the argument clamped to [-87, 88] (0 and float's largest powers beyond).
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5353362e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6180250e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503406e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022652e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 silu512(__m512 v) { return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), v)))); }

// softplus(v) = max(v, 0) + log(1 + e), e = exp(-|v|) in (0, 1]; log(1 + e) = 2 atanh(z) with
// z = e / (2 + e) <= 1/3, its odd series to z^13 (the next term is below 2e-8 of the sum).
inline __m512 softplus512(__m512 v) {
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(v)));
  const __m512 z = _mm512_div_ps(e, _mm512_add_ps(_mm512_set1_ps(2.f), e));
  const __m512 z2 = _mm512_mul_ps(z, z);
  __m512 p = _mm512_set1_ps(1.f / 13);
  for (float c : {1.f / 11, 1.f / 9, 1.f / 7, 1.f / 5, 1.f / 3, 1.f}) p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(c));
  return _mm512_add_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_mul_ps(_mm512_set1_ps(2.f), _mm512_mul_ps(z, p)));
}

struct Scratch {
  float *resid, *h, *xz, *xc, *xdbl, *dt, *y, *logits;
  QActs actsD, actsd, actsR;
};

struct State {
  float* conv;  // [layers, K-1, D]
  float* ssm;   // [layers, N, D]
};

State newState(const Dims& s) {
  return State{alignedArray<float>(size_t(s.layers) * s.D * (s.K - 1)), alignedArray<float>(size_t(s.layers) * s.D * s.N)};
}

void rmsnorm(const float* x, const float* w, float* out, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += double(x[i]) * x[i];
  const float inv = 1.f / std::sqrt(float(ss / n) + eps);
  for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

// --profile: wall time by phase, read by the team's first thread after each phase's barrier
// (a phase includes the single-threaded norm and quantization before its matmul).
enum Phase { kEmbed, kInProj, kConv, kXProj, kDtProj, kScan, kOutProj, kHead, kPhases };
const char* const kPhaseNames[kPhases] = {"embed", "norm+in_proj", "conv", "x_proj", "dt_proj", "scan", "out_proj", "final norm+head"};
bool gProfile = false;
double gPhaseMs[kPhases] = {};
std::chrono::steady_clock::time_point gPhaseStart;

inline void profileMark(Phase phase) {
  if (!gProfile || omp_get_thread_num() != 0) return;
  const auto now = std::chrono::steady_clock::now();
  gPhaseMs[phase] += std::chrono::duration<double, std::milli>(now - gPhaseStart).count();
  gPhaseStart = now;
}

// One decode step for `batch` sequences: tokens in, logits [batch, V] out, states updated.
// Called inside a parallel region by every thread of the team.
void step(const Model& m, int batch, const int* tokens, State* states, Scratch& t) {
  const Dims& s = m.dims;
  const int me = omp_get_thread_num(), team = omp_get_num_threads();
  if (gProfile && me == 0) gPhaseStart = std::chrono::steady_clock::now();
  auto share = [&](int n, int& a, int& b) {
    a = int(int64_t(n) * me / team);
    b = int(int64_t(n) * (me + 1) / team);
  };
#pragma omp single
  for (int b = 0; b < batch; b++)  // the tied table's row, dequantized
    for (int c = 0; c < s.d; c++) {
      t.resid[b * s.d + c] = float(m.head.value(tokens[b], c));
      t.h[b * s.d + c] = 0.f;
    }
  profileMark(kEmbed);
  for (int li = 0; li < s.layers; li++) {
    const Layer& L = m.layers[li];
#pragma omp single
    {
      for (int b = 0; b < batch; b++) {
        float* r = t.resid + b * s.d;
        for (int c = 0; c < s.d; c++) r[c] += t.h[b * s.d + c];
        rmsnorm(r, L.norm, t.h + b * s.d, s.d, s.eps);
      }
      quantizeActs(t.h, s.d, batch, s.d, t.actsd, L.inProj.blocks);
    }
    matmul(batch, L.inProj, t.actsd, t.xz, 2 * s.D);
#pragma omp barrier
    profileMark(kInProj);
    {  // conv step and SiLU, 16 channels a vector, vectors split over the team
      int v0, v1;
      share(s.D / 16, v0, v1);
      for (int b = 0; b < batch; b++) {
        float* conv = states[b].conv + size_t(li) * (s.K - 1) * s.D;
        for (int c = v0 * 16; c < v1 * 16; c += 16) {
          const __m512 xin = _mm512_loadu_ps(t.xz + size_t(b) * 2 * s.D + c);
          __m512 acc = _mm512_fmadd_ps(_mm512_loadu_ps(L.convW + (s.K - 1) * s.D + c), xin, _mm512_loadu_ps(L.convB + c));
          for (int k = 0; k < s.K - 1; k++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(L.convW + k * s.D + c), _mm512_loadu_ps(conv + k * s.D + c), acc);
          for (int k = 0; k < s.K - 2; k++) _mm512_storeu_ps(conv + k * s.D + c, _mm512_loadu_ps(conv + (k + 1) * s.D + c));
          _mm512_storeu_ps(conv + (s.K - 2) * s.D + c, xin);
          _mm512_storeu_ps(t.xc + b * s.D + c, silu512(acc));
        }
      }
    }
#pragma omp barrier
    profileMark(kConv);
#pragma omp single
    quantizeActs(t.xc, s.D, batch, s.D, t.actsD, L.xProj.blocks);
    matmul(batch, L.xProj, t.actsD, t.xdbl, s.R + 2 * s.N);
#pragma omp barrier
    profileMark(kXProj);
#pragma omp single
    quantizeActs(t.xdbl, s.R + 2 * s.N, batch, s.R, t.actsR, L.dtProj.blocks);
    matmul(batch, L.dtProj, t.actsR, t.dt, s.D);
#pragma omp barrier
    profileMark(kDtProj);
    {  // the selective-scan step, 16 channels a vector, vectors split over the team
      int v0, v1;
      share(s.D / 16, v0, v1);
      for (int b = 0; b < batch; b++) {
        float* ssm = states[b].ssm + size_t(li) * s.N * s.D;
        const float* xdbl = t.xdbl + b * (s.R + 2 * s.N);
        for (int c = v0 * 16; c < v1 * 16; c += 16) {
          const __m512 dt = softplus512(_mm512_loadu_ps(t.dt + b * s.D + c));
          const __m512 x = _mm512_loadu_ps(t.xc + b * s.D + c);
          const __m512 dtx = _mm512_mul_ps(dt, x);
          __m512 y = _mm512_mul_ps(_mm512_loadu_ps(L.Dskip + c), x);
          for (int n = 0; n < s.N; n++) {
            float* hp = ssm + n * s.D + c;
            const __m512 decay = exp512(_mm512_mul_ps(dt, _mm512_loadu_ps(L.negA + n * s.D + c)));
            const __m512 h = _mm512_fmadd_ps(_mm512_loadu_ps(hp), decay, _mm512_mul_ps(dtx, _mm512_set1_ps(xdbl[s.R + n])));
            _mm512_storeu_ps(hp, h);
            y = _mm512_fmadd_ps(h, _mm512_set1_ps(xdbl[s.R + s.N + n]), y);
          }
          const __m512 z = _mm512_loadu_ps(t.xz + size_t(b) * 2 * s.D + s.D + c);
          _mm512_storeu_ps(t.y + b * s.D + c, _mm512_mul_ps(y, silu512(z)));
        }
      }
    }
#pragma omp barrier
    profileMark(kScan);
#pragma omp single
    quantizeActs(t.y, s.D, batch, s.D, t.actsD, L.outProj.blocks);
    matmul(batch, L.outProj, t.actsD, t.h, s.d);
#pragma omp barrier
    profileMark(kOutProj);
  }
#pragma omp single
  {
    for (int b = 0; b < batch; b++) {
      float* r = t.resid + b * s.d;
      for (int c = 0; c < s.d; c++) r[c] += t.h[b * s.d + c];
      rmsnorm(r, m.normF, t.h + b * s.d, s.d, s.eps);
    }
    quantizeActs(t.h, s.d, batch, s.d, t.actsd, m.head.blocks);
  }
  matmul(batch, m.head, t.actsd, t.logits, s.V);
#pragma omp barrier
  profileMark(kHead);
}

Scratch newScratch(const Dims& s) {
  Scratch t;
  t.resid = alignedArray<float>(kMaxBatch * s.d);
  t.h = alignedArray<float>(kMaxBatch * s.d);
  t.xz = alignedArray<float>(size_t(kMaxBatch) * 2 * s.D);
  t.xc = alignedArray<float>(kMaxBatch * s.D);
  t.xdbl = alignedArray<float>(kMaxBatch * (s.R + 2 * s.N));
  t.dt = alignedArray<float>(kMaxBatch * s.D);
  t.y = alignedArray<float>(kMaxBatch * s.D);
  t.logits = alignedArray<float>(size_t(kMaxBatch) * s.V);
  t.actsD = qacts(s.D);
  t.actsd = qacts(s.d);
  t.actsR = qacts(s.R);
  return t;
}

// ---- the check: the same step in float64 scalar code, on the same quantized activations ----

struct RefState {
  std::vector<double> conv, ssm;
};

// x (double) quantized exactly as quantizeActs does, returned dequantized: the reference then
// multiplies exactly what the kernels multiply, so only the accumulation order and exp differ.
std::vector<double> quantizedLikeKernels(const std::vector<double>& x) {
  std::vector<float> xf(x.begin(), x.end());
  QActs a = qacts(int(x.size()));
  quantizeActs(xf.data(), int(x.size()), 1, int(x.size()), a, a.blocks);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); i++) out[i] = double(a.q[i]) * a.scale[i / kBlock];
  std::free(a.q);
  std::free(a.scale);
  std::free(a.sum);
  return out;
}

std::vector<double> refMatmul(const QMatrix& w, const std::vector<double>& x) {
  std::vector<double> y(w.rows);
  for (int r = 0; r < w.rows; r++) {
    double acc = w.bias ? w.bias[r] : 0.0;
    for (int c = 0; c < w.cols; c++) acc += w.value(r, c) * x[c];
    y[r] = acc;
  }
  return y;
}

std::vector<double> refNorm(const std::vector<double>& x, const float* w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); i++) out[i] = x[i] * inv * w[i];
  return out;
}

// quantizeActivations = false: the float64 model itself (what quantizing activations costs).
std::vector<double> refStep(const Model& m, int token, RefState& st, bool quantizeActivations) {
  const Dims& s = m.dims;
  auto fakeQuant = [&](const std::vector<double>& x) { return quantizeActivations ? quantizedLikeKernels(x) : x; };
  std::vector<double> resid(s.d), h(s.d, 0.0);
  for (int c = 0; c < s.d; c++) resid[c] = double(float(m.head.value(token, c)));
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  for (int li = 0; li < s.layers; li++) {
    const Layer& L = m.layers[li];
    for (int c = 0; c < s.d; c++) resid[c] += h[c];
    const std::vector<double> xz = refMatmul(L.inProj, fakeQuant(refNorm(resid, L.norm, s.eps)));
    std::vector<double> xc(s.D);
    for (int c = 0; c < s.D; c++) {
      double* cs = &st.conv[(size_t(li) * s.D + c) * (s.K - 1)];
      double acc = L.convB[c] + double(L.convW[(s.K - 1) * s.D + c]) * xz[c];
      for (int k = 0; k < s.K - 1; k++) acc += double(L.convW[k * s.D + c]) * cs[k];
      for (int k = 0; k < s.K - 2; k++) cs[k] = cs[k + 1];
      cs[s.K - 2] = xz[c];
      xc[c] = acc * sig(acc);
    }
    const std::vector<double> xdbl = refMatmul(L.xProj, fakeQuant(xc));
    const std::vector<double> dtIn = fakeQuant(std::vector<double>(xdbl.begin(), xdbl.begin() + s.R));
    const std::vector<double> dtRaw = refMatmul(L.dtProj, dtIn);
    std::vector<double> y(s.D);
    for (int c = 0; c < s.D; c++) {
      const double dt = std::log1p(std::exp(dtRaw[c]));
      double yc = double(L.Dskip[c]) * xc[c];
      for (int n = 0; n < s.N; n++) {
        double& hs = st.ssm[(size_t(li) * s.D + c) * s.N + n];
        hs = hs * std::exp(dt * L.negA[n * s.D + c]) + dt * xc[c] * xdbl[s.R + n];
        yc += hs * xdbl[s.R + s.N + n];
      }
      y[c] = yc * xz[s.D + c] * sig(xz[s.D + c]);
    }
    h = refMatmul(L.outProj, fakeQuant(y));
  }
  for (int c = 0; c < s.d; c++) resid[c] += h[c];
  return refMatmul(m.head, fakeQuant(refNorm(resid, m.normF, s.eps)));
}

// The process's peak resident set (VmHWM), bytes; -1 where /proc is not there.
long long peakRssBytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long long kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

struct Args {
  int bits = 8, batch = 1, steps = 60, threads = 2, layers = 24;
  bool check = false;
  bool bandwidth = false;
  bool profile = false;
  int prefetch = 4096;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; i++) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--dtype") {
      std::string v = next();
      if (v != "int8" && v != "int4") {
        std::fprintf(stderr, "--dtype is int8 or int4\n");
        std::exit(2);
      }
      a.bits = v == "int8" ? 8 : 4;
    } else if (k == "--batch") a.batch = std::atoi(next().c_str());
    else if (k == "--steps") a.steps = std::atoi(next().c_str());
    else if (k == "--threads") a.threads = std::atoi(next().c_str());
    else if (k == "--layers") a.layers = std::atoi(next().c_str());
    else if (k == "--check") a.check = true;
    else if (k == "--bandwidth") a.bandwidth = true;
    else if (k == "--profile") a.profile = true;
    else if (k == "--prefetch") a.prefetch = std::atoi(next().c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  if (a.batch < 1 || a.batch > kMaxBatch || a.steps < 1 || a.threads < 1 || a.layers < 1) {
    std::fprintf(stderr, "--batch is 1..%d, --steps and --threads positive\n", kMaxBatch);
    std::exit(2);
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  gPrefetchBytes = args.prefetch;
  const Model model = randomModel(args.bits, 1234, args.layers);
  const Dims& s = model.dims;
  Scratch scratch = newScratch(s);
  std::vector<State> states;
  for (int b = 0; b < args.batch; b++) states.push_back(newState(s));
  std::vector<int> tokens(args.batch);
  auto tokensAt = [&](int i) {
    for (int b = 0; b < args.batch; b++) tokens[b] = (i * 31 + b * 7 + 1) % s.V;
  };
  omp_set_num_threads(args.threads);

  if (args.check) {
    // 1. Each matmul alone: the kernels against float64 sums over the same quantized
    //    activations; only the order of float32 additions differs, so the error is ~1e-6.
    double matmulErr = 0;
    {
      std::mt19937 rng(99);
      std::normal_distribution<float> n(0.f, 1.f);
      const Layer& L = model.layers[0];
      for (const QMatrix* w : {&L.inProj, &L.xProj, &L.dtProj, &L.outProj, &model.head}) {
        std::vector<float> x(size_t(args.batch) * w->cols);
        for (float& v : x) v = n(rng);
        QActs a = qacts(w->cols);
        quantizeActs(x.data(), w->cols, args.batch, w->cols, a, w->blocks);
        std::vector<float> y(size_t(args.batch) * w->rows);
#pragma omp parallel
        matmul(args.batch, *w, a, y.data(), w->rows);
        for (int b = 0; b < args.batch; b++) {
          std::vector<double> xq(w->cols);
          for (int c = 0; c < w->cols; c++) xq[c] = double(a.q[(size_t(b) * a.blocks) * kBlock + c]) * a.scale[size_t(b) * a.blocks + c / kBlock];
          const std::vector<double> want = refMatmul(*w, xq);
          double err = 0, top = 0;
          for (int r = 0; r < w->rows; r++) {
            err = std::max(err, std::fabs(want[r] - y[size_t(b) * w->rows + r]));
            top = std::max(top, std::fabs(want[r]));
          }
          matmulErr = std::max(matmulErr, err / top);
        }
      }
    }
    // 2. Whole steps (three per sequence; the last one's logits and states): the kernels against
    //    the float64 model with activations quantized the same way. A float32 difference can move
    //    an activation across a rounding boundary, so this error is of the size of one code step;
    //    it is printed beside what quantizing the activations changes (the float64 model with and
    //    without it), which it must be well under.
    std::vector<RefState> ref(args.batch, RefState{std::vector<double>(size_t(s.layers) * s.D * (s.K - 1)), std::vector<double>(size_t(s.layers) * s.D * s.N)});
    std::vector<RefState> exact = ref;
    double stepErr = 0, quantEffect = 0, maxLogit = 0;
    for (int i = 0; i < 3; i++) {
      tokensAt(i);
#pragma omp parallel
      step(model, args.batch, tokens.data(), states.data(), scratch);
      for (int b = 0; b < args.batch; b++) {
        const std::vector<double> want = refStep(model, tokens[b], ref[b], true);
        const std::vector<double> unquantized = refStep(model, tokens[b], exact[b], false);
        if (i < 2) continue;
        for (int v = 0; v < s.V; v++) {
          stepErr = std::max(stepErr, std::fabs(want[v] - scratch.logits[size_t(b) * s.V + v]));
          quantEffect = std::max(quantEffect, std::fabs(want[v] - unquantized[v]));
          maxLogit = std::max(maxLogit, std::fabs(want[v]));
        }
      }
    }
    std::printf("{\"check\":true,\"bits\":%d,\"batch\":%d,\"matmulRelError\":%.3g,\"stepLogitError\":%.4g,\"activationQuantEffect\":%.4g,\"maxLogit\":%.4g}\n", args.bits, args.batch,
                matmulErr, stepErr, quantEffect, maxLogit);
    return 0;
  }

  if (args.bandwidth) {
    // Read bandwidth with this program's own loads (64-byte vectors, every thread reading its
    // part of a buffer 8x any cache), median of 9: the bound the timings are compared with.
    const size_t bytes = size_t(1) << 30;
    uint8_t* buf = alignedArray<uint8_t>(bytes);
    std::memset(buf, 1, bytes);
    std::vector<double> rates;
    long long sink = 0;
    for (int rep = 0; rep < 9; rep++) {
      const auto started = std::chrono::steady_clock::now();
#pragma omp parallel reduction(^ : sink)
      {
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
        const size_t part = bytes / team / 64 * 64;
        const uint8_t* p = buf + part * me;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t o = 0; o < part; o += 256) {
          a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + o));
          a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + o + 64));
          a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + o + 128));
          a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + o + 192));
        }
        sink ^= _mm512_reduce_or_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
      }
      rates.push_back(double(bytes) / std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    std::sort(rates.begin(), rates.end());
    std::printf("{\"bandwidth\":true,\"threads\":%d,\"bytesPerSecond\":%.0f,\"best\":%.0f,\"sink\":%lld}\n", args.threads, rates[rates.size() / 2], rates.back(), sink & 1);
    return 0;
  }

  std::vector<double> ms;
  gProfile = args.profile;
#pragma omp parallel
  for (int i = 0; i < args.steps + 3; i++) {
#pragma omp single
    tokensAt(i);  // the single's barrier orders it before the step
    const auto started = std::chrono::steady_clock::now();
    step(model, args.batch, tokens.data(), states.data(), scratch);
#pragma omp master
    if (i >= 3) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  }
  if (args.profile) {
    std::fprintf(stderr, "ms a step by phase (mean of %d steps, warm-up included):", args.steps + 3);
    for (int p = 0; p < kPhases; p++) std::fprintf(stderr, " %s %.3f", kPhaseNames[p], gPhaseMs[p] / (args.steps + 3));
    std::fprintf(stderr, "\n");
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  std::printf("{\"bits\":%d,\"batch\":%d,\"threads\":%d,\"weightBytes\":%zu,\"medianMs\":%.4f,\"p10Ms\":%.4f,\"steps\":%d,\"peakRssBytes\":%lld}\n", args.bits, args.batch, args.threads,
              model.weightBytes(), sorted[sorted.size() / 2], sorted[sorted.size() / 10], int(sorted.size()), peakRssBytes());
  return 0;
}
