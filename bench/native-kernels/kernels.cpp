// A whole mamba-130m-shaped decode step (24 Mamba-1 layers and the LM head), and a prefill, on
// the ORT engine's native kernels (worker/native-cpu/src/mamba_cpu.h: AVX-512 VNNI or, built
// with -DMAMBA_CPU_AVX2, AVX2; OpenMP),
// over block-quantized weights (blocks of 128 values, one fp32 scale each, implicit zero point
// 2^(bits-1): the bytes of the engine's int8 and int4 builds) and int8 activations quantized
// per block (what MatMulNBits' accuracy_level 4 does), or over f32 weights in the layouts the
// engine reads (in_proj and out_proj in column strips, x_proj and dt_proj as the build's Wᵀ,
// the head as rows) and f32 activations. Random weights: the speed
// does not depend on the values.
//
// It measures the kernels alone, apart from Node and the engine, and checks them against a
// float64 scalar reference of the same step written here. Driven by bench/native-kernels.ts,
// which builds it with the machine's g++ and checks it before timing it.
//
//   kernels --dtype int8|int4|f32 --batch B --steps S --threads T   timing, one JSON line
//   kernels --dtype int8|int4|f32 --batch B --check [--layers L]    kernels vs a float64
//                                                                       scalar reference, JSON
//   kernels --dtype int8|int4|f32 --prefill L --steps R --threads T  prefill of L tokens, tok/s
//                                                                       (median of R rounds), JSON
//   kernels --dtype int8|int4|f32 --prefill L --check                 prefill vs L decode steps, JSON
//   kernels --bandwidth --threads T                             read bandwidth, JSON
//   (timing with --profile: also the time by phase, on stderr; --prefetch BYTES)
#include "../../worker/native-cpu/src/mamba_cpu.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <string>

namespace {

using namespace mamba_cpu;

// Buffers the random model's views point into, freed with the program.
std::vector<void*> gOwned;
template <typename T>
T* owned(size_t n) {
  T* p = alignedArray<T>(n);
  gOwned.push_back(p);
  return p;
}

/**
 * f32 (bits 32): normal values, stored as Wᵀ [cols, rows] (a projection, `colsMajor`), as the
 * engine's column strips of it (`strips`: in_proj and out_proj), or as rows (the head).
 */
QMatrix randomF32Matrix(std::mt19937& rng, int rows, int cols, bool colsMajor, bool strips, bool withBias, float stddev) {
  const size_t count = strips ? QMatrix::f32Strips(rows, cols, nullptr, nullptr).dataBytes() / 4 : size_t(rows) * cols;
  float* data = owned<float>(count);
  std::normal_distribution<float> n(0.f, stddev);
  for (size_t i = 0; i < count; i++) data[i] = n(rng);
  float* bias = nullptr;
  if (withBias) {
    bias = owned<float>(rows);
    std::normal_distribution<float> b(0.f, 0.02f);
    for (int r = 0; r < rows; r++) bias[r] = b(rng);
  }
  return strips ? QMatrix::f32Strips(rows, cols, data, bias) : QMatrix::f32(rows, cols, colsMajor, data, bias);
}

enum class F32Layout { kCols, kStrips, kRows };

QMatrix randomMatrix(std::mt19937& rng, int rows, int cols, int bits, bool withBias, float stddev, F32Layout f32 = F32Layout::kCols) {
  if (bits == 32) return randomF32Matrix(rng, rows, cols, f32 != F32Layout::kRows, f32 == F32Layout::kStrips, withBias, stddev);
  const int blocks = (cols + kBlock - 1) / kBlock, blockBytes = kBlock * bits / 8;
  uint8_t* data = owned<uint8_t>(size_t(rows) * blocks * blockBytes);
  float* scales = owned<float>(size_t(rows) * blocks);
  std::uniform_int_distribution<int> codes(0, (1 << bits) - 1);
  const int zero = 1 << (bits - 1);
  // Uniform codes have a standard deviation of about 2^bits / sqrt(12).
  const float scale = stddev / (float(1 << bits) / 3.4641f);
  for (int r = 0; r < rows; r++)
    for (int b = 0; b < blocks; b++) {
      scales[size_t(r) * blocks + b] = scale;
      uint8_t* blk = data + (size_t(r) * blocks + b) * blockBytes;
      for (int j = 0; j < kBlock; j++) {
        const int c = b * kBlock + j;
        const int q = c < cols ? codes(rng) : zero;  // padding is the zero point: it adds nothing
        if (bits == 8) blk[j] = uint8_t(q);
        else blk[j / 2] = uint8_t(blk[j / 2] | (j % 2 ? q << 4 : q));  // element 2i low, 2i + 1 high
      }
    }
  float* bias = nullptr;
  if (withBias) {
    bias = owned<float>(rows);
    std::normal_distribution<float> n(0.f, 0.02f);
    for (int r = 0; r < rows; r++) bias[r] = n(rng);
  }
  return QMatrix::of(rows, cols, bits, data, scales, bias);
}

const float* randomVector(std::mt19937& rng, int n, float mean, float stddev) {
  float* v = owned<float>(n);
  std::normal_distribution<float> dist(mean, stddev);
  for (int i = 0; i < n; i++) v[i] = dist(rng);
  return v;
}

Model randomModel(int bits, uint32_t seed, int layers) {
  Model m;
  Dims& s = m.dims;
  s = Dims{768, layers, 1536, 16, 48, 4, 50280, 1e-5f};
  std::mt19937 rng(seed);
  for (int i = 0; i < s.layers; i++) {
    Layer l;
    l.norm = randomVector(rng, s.d, 1.f, 0.05f);
    l.inProj = randomMatrix(rng, 2 * s.D, s.d, bits, false, 1.f / std::sqrt(float(s.d)), F32Layout::kStrips);
    l.convW = randomVector(rng, s.D * s.K, 0.f, 0.3f);
    l.convB = randomVector(rng, s.D, 0.f, 0.1f);
    l.xProj = randomMatrix(rng, s.R + 2 * s.N, s.D, bits, false, 1.f / std::sqrt(float(s.D)));
    l.dtProj = randomMatrix(rng, s.D, s.R, bits, true, 1.f / std::sqrt(float(s.R)));
    float* dtBias = const_cast<float*>(l.dtProj.bias);
    for (int c = 0; c < s.D; c++) dtBias[c] = -4.f + dtBias[c] * 50.f;  // softplus ≈ 0.02
    float* negAT = owned<float>(size_t(s.D) * s.N);
    for (int n = 0; n < s.N; n++)
      for (int c = 0; c < s.D; c++) negAT[n * s.D + c] = -float(n + 1);  // Mamba's A_log = log(1..N)
    l.negAT = negAT;
    l.Dskip = randomVector(rng, s.D, 1.f, 0.1f);
    l.outProj = randomMatrix(rng, s.d, s.D, bits, false, 0.5f / std::sqrt(float(s.D)), F32Layout::kStrips);
    m.layers.push_back(l);
  }
  m.normF = randomVector(rng, s.d, 1.f, 0.05f);
  m.head = randomMatrix(rng, s.V, s.d, bits, false, 1.f, F32Layout::kRows);
  m.embed = m.head;  // tied
  prepareModel(m);
  return m;
}

/** The bytes a step reads: every matrix (codes, scales, biases) and the fp32 parameters. */
size_t weightBytes(const Model& m) {
  const Dims& s = m.dims;
  auto bytes = [](const QMatrix& w) { return w.dataBytes() + w.scaleCount() * 4 + (w.bias ? size_t(w.rows) * 4 : 0); };
  size_t n = bytes(m.head) + size_t(s.d) * 4;
  const size_t fp32PerLayer = size_t(s.d + s.D * s.K + s.D + s.D * s.N + s.D) * 4;  // norm, conv, A, D
  for (const Layer& l : m.layers) n += bytes(l.inProj) + bytes(l.xProj) + bytes(l.dtProj) + bytes(l.outProj) + fp32PerLayer;
  return n;
}

// ---- the check: the same step in float64 scalar code, on the same quantized activations ----

struct RefState {
  std::vector<double> conv, ssm;
};

// x (double) quantized exactly as quantizeActs does, returned dequantized: the reference then
// multiplies exactly what the kernels multiply, so only the accumulation order and exp differ.
std::vector<double> quantizedLikeKernels(const std::vector<double>& x) {
  const std::vector<float> xf(x.begin(), x.end());
  std::vector<double> out(x.size());
  for (size_t start = 0; start < x.size(); start += kBlock) {
    const int n = int(std::min<size_t>(kBlock, x.size() - start));
    alignas(64) int8_t q[kBlock];
    float scale, scaledSum;
    quantizeBlock(xf.data() + start, n, q, scale, scaledSum, false);
    for (int i = 0; i < n; i++) out[start + i] = double(q[i]) * scale;
  }
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
  for (int c = 0; c < s.d; c++) resid[c] = double(m.embed.value(token, c));
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  for (int li = 0; li < s.layers; li++) {
    const Layer& L = m.layers[li];
    for (int c = 0; c < s.d; c++) resid[c] += h[c];
    const std::vector<double> xz = refMatmul(L.inProj, fakeQuant(refNorm(resid, L.norm, s.eps)));
    std::vector<double> xc(s.D);
    for (int c = 0; c < s.D; c++) {
      double* cs = &st.conv[(size_t(li) * s.D + c) * (s.K - 1)];  // the K − 1 inputs before x
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
        hs = hs * std::exp(dt * L.negAT[n * s.D + c]) + dt * xc[c] * xdbl[s.R + n];
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
  int prefetch = 8192;
  int prefill = 0;  // --prefill L: time (or with --check, check) absorbing an L-token prompt
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
      if (v != "int8" && v != "int4" && v != "f32") {
        std::fprintf(stderr, "--dtype is int8, int4 or f32\n");
        std::exit(2);
      }
      a.bits = v == "int8" ? 8 : v == "int4" ? 4 : 32;
    } else if (k == "--batch") a.batch = std::atoi(next().c_str());
    else if (k == "--steps") a.steps = std::atoi(next().c_str());
    else if (k == "--threads") a.threads = std::atoi(next().c_str());
    else if (k == "--layers") a.layers = std::atoi(next().c_str());
    else if (k == "--check") a.check = true;
    else if (k == "--bandwidth") a.bandwidth = true;
    else if (k == "--profile") a.profile = true;
    else if (k == "--prefetch") a.prefetch = std::atoi(next().c_str());
    else if (k == "--prefill") a.prefill = std::atoi(next().c_str());
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

/**
 * --prefill L: a fresh sequence absorbs an L-token prompt in chunks of kPrefillChunk. With
 * --check, against L decode steps of batch 1 from a fresh state: prefill is the step's
 * arithmetic token for token (mamba_cpu.h), so logits and states must agree to float32
 * rounding. Otherwise timed, median of --steps rounds, as tokens a second.
 */
int prefillMode(const Model& model, const Args& args) {
  const Dims& s = model.dims;
  const int L = args.prefill;
  std::vector<int> prompt(L);
  for (int i = 0; i < L; i++) prompt[i] = (i * 7919 + 11) % s.V;
  PrefillScratch chunk(s, kPrefillChunk, args.bits == 32);
  std::vector<float> conv(size_t(s.layers) * s.K * s.D), ssm(size_t(s.layers) * s.N * s.D), logits(s.V);
  std::vector<float*> convRefs, ssmRefs;
  for (int li = 0; li < s.layers; li++) {
    convRefs.push_back(conv.data() + size_t(li) * s.K * s.D);
    ssmRefs.push_back(ssm.data() + size_t(li) * s.N * s.D);
  }
  auto absorb = [&]() {
    std::fill(conv.begin(), conv.end(), 0.f);
    std::fill(ssm.begin(), ssm.end(), 0.f);
    for (int at = 0; at < L; at += kPrefillChunk) {
      const int T = std::min(kPrefillChunk, L - at);
#pragma omp parallel
      prefill(model, T, prompt.data() + at, convRefs.data(), ssmRefs.data(), chunk, at + T == L ? logits.data() : nullptr, false);
    }
  };
  if (args.check) {
    absorb();
    StepScratch one(s, args.threads, args.bits == 32);
    std::vector<float> conv1(conv.size()), ssm1(ssm.size()), logits1(s.V);
    std::vector<float*> c1, h1;
    for (int li = 0; li < s.layers; li++) {
      c1.push_back(conv1.data() + size_t(li) * s.K * s.D);
      h1.push_back(ssm1.data() + size_t(li) * s.N * s.D);
    }
    const StateRefs refs{c1.data(), h1.data()};
    for (int i = 0; i < L; i++) {
#pragma omp parallel
      step(model, 1, prompt.data() + i, refs, one, logits1.data(), s.V);
    }
    auto maxDiff = [](const std::vector<float>& a, const std::vector<float>& b) {
      double d = 0, top = 0;
      for (size_t i = 0; i < a.size(); i++) {
        d = std::max(d, double(std::fabs(a[i] - b[i])));
        top = std::max(top, double(std::fabs(b[i])));
      }
      return d / std::max(top, 1e-30);
    };
    std::printf("{\"prefillCheck\":true,\"bits\":%d,\"tokens\":%d,\"logit0\":%.5g,\"logitsRelError\":%.3g,\"convRelError\":%.3g,\"ssmRelError\":%.3g}\n", args.bits, L,
                logits[0], maxDiff(logits, logits1), maxDiff(conv, conv1), maxDiff(ssm, ssm1));
    return 0;
  }
  absorb();  // warm-up
  std::vector<double> rates;
  for (int r = 0; r < args.steps; r++) {
    const auto started = std::chrono::steady_clock::now();
    absorb();
    rates.push_back(L / std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  std::sort(rates.begin(), rates.end());
  std::printf("{\"prefill\":true,\"bits\":%d,\"tokens\":%d,\"threads\":%d,\"medianTokPerS\":%.1f,\"bestTokPerS\":%.1f,\"rounds\":%d,\"peakRssBytes\":%lld}\n", args.bits, L,
              args.threads, rates[rates.size() / 2], rates.back(), int(rates.size()), peakRssBytes());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  Model model = randomModel(args.bits, 1234, args.layers);
  model.prefetchBytes = args.prefetch;
  const Dims& s = model.dims;
  StepScratch scratch(s, args.threads, args.bits == 32);
  // Each sequence's state, [layers, K, D] and [layers, N, D], and the per-layer pointers to it.
  std::vector<std::vector<float>> convs(args.batch, std::vector<float>(size_t(s.layers) * s.K * s.D)), ssms(args.batch, std::vector<float>(size_t(s.layers) * s.N * s.D));
  std::vector<float*> convRefs, ssmRefs;
  for (int b = 0; b < args.batch; b++)
    for (int li = 0; li < s.layers; li++) {
      convRefs.push_back(convs[b].data() + size_t(li) * s.K * s.D);
      ssmRefs.push_back(ssms[b].data() + size_t(li) * s.N * s.D);
    }
  const StateRefs states{convRefs.data(), ssmRefs.data()};
  std::vector<float> logits(size_t(args.batch) * s.V);
  std::vector<int> tokens(args.batch);
  auto tokensAt = [&](int i) {
    for (int b = 0; b < args.batch; b++) tokens[b] = (i * 31 + b * 7 + 1) % s.V;
  };
  omp_set_num_threads(args.threads);

  if (args.prefill > 0) return prefillMode(model, args);

  if (args.check) {
    // 1. Each matmul alone: the kernels against float64 sums over the same quantized
    //    activations; only the order of float32 additions differs, so the error is ~1e-6.
    double matmulErr = 0;
    {
      std::mt19937 rng(99);
      std::normal_distribution<float> n(0.f, 1.f);
      const Layer& L = model.layers[0];
      // Row b of y against the float64 sums of w over the activations xq: the largest error, relative to the largest sum.
      auto worst = [&](const QMatrix& w, const std::vector<double>& xq, const std::vector<float>& y, int b) {
        const std::vector<double> want = refMatmul(w, xq);
        double err = 0, top = 0;
        for (int r = 0; r < w.rows; r++) {
          err = std::max(err, std::fabs(want[r] - y[size_t(b) * w.rows + r]));
          top = std::max(top, std::fabs(want[r]));
        }
        matmulErr = std::max(matmulErr, err / top);
      };
      for (const QMatrix* w : std::initializer_list<const QMatrix*>{&L.inProj, &L.xProj, &L.dtProj, &L.outProj, &model.head}) {
        std::vector<float> x(size_t(args.batch) * w->cols);
        for (float& v : x) v = n(rng);
        QActs a(w->cols, args.batch, w->bits == 32);
        quantizeActs(x.data(), w->cols, args.batch, w->cols, a, *w);
        std::vector<float> y(size_t(args.batch) * w->rows);
#pragma omp parallel
        matmul(args.batch, *w, a, y.data(), w->rows, model.prefetchBytes);
        for (int b = 0; b < args.batch; b++) {
          std::vector<double> xq(w->cols);
          for (int c = 0; c < w->cols; c++) {
            if (w->bits == 32) {  // f32: the activations as they are
              xq[c] = a.f[size_t(b) * a.blocks * kBlock + c];
              continue;
            }
            // int4 blocks hold each weight load's codes evens first (quantizeBlock)
            const int j = c % kBlock, G = V::kBytes, g = j / (2 * G) * (2 * G), jj = j % (2 * G);
            const int at = w->bits == 4 ? g + (jj % 2 ? G + jj / 2 : jj / 2) : j;
            xq[c] = double(a.q[(size_t(b) * a.blocks + c / kBlock) * kBlock + at]) * a.scale[size_t(b) * a.blocks + c / kBlock];
          }
          worst(*w, xq, y, b);
        }
      }
      // dt_proj by columns (dtProjChannels: what the step and prefill compute dt with), its
      // activation codes in their own order.
      if (L.dtCols) {
        const QMatrix& w = L.dtProj;
        std::vector<float> x(size_t(args.batch) * w.cols);
        for (float& v : x) v = n(rng);
        QActs a(w.cols, args.batch);
        quantizeRowsInOrder(x.data(), w.cols, 0, args.batch, w.cols, a);
        std::vector<float> y(size_t(args.batch) * w.rows);
        for (int b = 0; b < args.batch; b++) dtProjChannelsAny(w, L.dtCols, ActsView(a, b), 0, w.rows, y.data() + size_t(b) * w.rows);
        for (int b = 0; b < args.batch; b++) {
          std::vector<double> xq(w.cols);
          for (int c = 0; c < w.cols; c++) xq[c] = double(a.q[(size_t(b) * a.blocks + c / kBlock) * kBlock + c % kBlock]) * a.scale[size_t(b) * a.blocks + c / kBlock];
          worst(w, xq, y, b);
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
      step(model, args.batch, tokens.data(), states, scratch, logits.data(), s.V);
      for (int b = 0; b < args.batch; b++) {
        const std::vector<double> want = refStep(model, tokens[b], ref[b], args.bits != 32);
        const std::vector<double> unquantized = refStep(model, tokens[b], exact[b], false);
        if (i < 2) continue;
        for (int v = 0; v < s.V; v++) {
          stepErr = std::max(stepErr, std::fabs(want[v] - logits[size_t(b) * s.V + v]));
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
        V::I a0 = V::zeroI(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t o = 0; o + 4 * V::kBytes <= part; o += 4 * V::kBytes) {
          a0 = V::xorI(a0, V::loadBytes(p + o));
          a1 = V::xorI(a1, V::loadBytes(p + o + V::kBytes));
          a2 = V::xorI(a2, V::loadBytes(p + o + 2 * V::kBytes));
          a3 = V::xorI(a3, V::loadBytes(p + o + 3 * V::kBytes));
        }
        sink ^= V::low64(V::xorI(V::xorI(a0, a1), V::xorI(a2, a3)));
      }
      rates.push_back(double(bytes) / std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    std::sort(rates.begin(), rates.end());
    std::printf("{\"bandwidth\":true,\"threads\":%d,\"bytesPerSecond\":%.0f,\"best\":%.0f,\"sink\":%lld}\n", args.threads, rates[rates.size() / 2], rates.back(), sink & 1);
    return 0;
  }

  std::vector<double> ms;
  // --profile: wall time by phase, read by the team's first thread as it ends each (its own
  // work, then apart the wait at the barrier after it: mamba_cpu.h's Phase).
  struct Clock : PhaseClock {
    double ms[kPhases] = {};
    std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
    void mark(Phase p) override {
      const auto now = std::chrono::steady_clock::now();
      ms[p] += std::chrono::duration<double, std::milli>(now - last).count();
      last = now;
    }
  } clock;
  const char* const phaseNames[kPhases] = {"embed",   "norm",    "in_proj", "(wait)", "conv+quantize", "(wait)",   "x_proj",
                                            "dt_proj", "scan+quantize", "(wait)", "out_proj", "(wait)", "final norm+head"};
#pragma omp parallel
  for (int i = 0; i < args.steps + 3; i++) {
#pragma omp single
    tokensAt(i);  // the single's barrier orders it before the step
    const auto started = std::chrono::steady_clock::now();
#pragma omp master
    clock.last = started;
    step(model, args.batch, tokens.data(), states, scratch, logits.data(), s.V, args.profile ? &clock : nullptr);
#pragma omp master
    if (i >= 3) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  }
  if (args.profile) {
    std::fprintf(stderr, "ms a step by phase on the first thread, all layers (mean of %d steps, warm-up included; (wait): at the barrier after the phase before it):", args.steps + 3);
    for (int p = 0; p < kPhases; p++) std::fprintf(stderr, " %s %.3f", phaseNames[p], clock.ms[p] / (args.steps + 3));
    std::fprintf(stderr, "\n");
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  std::printf("{\"bits\":%d,\"batch\":%d,\"threads\":%d,\"weightBytes\":%zu,\"medianMs\":%.4f,\"p10Ms\":%.4f,\"steps\":%d,\"peakRssBytes\":%lld}\n", args.bits, args.batch, args.threads,
              weightBytes(model), sorted[sorted.size() / 2], sorted[sorted.size() / 10], int(sorted.size()), peakRssBytes());
  return 0;
}
