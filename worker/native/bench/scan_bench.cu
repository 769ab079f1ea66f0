// Standalone check and benchmark of the prefill scan, conv and decode-step kernels, and of a
// hybrid's attention kernels (qkv_prep, window attention prefill and decode, ring write): needs
// neither Node nor cuBLAS, so the GPU machine (which has no Node) can run it right after
// `cmake --build`. Prints, per shape and variant, the error against a float64 host reference
// of the recurrence (from a random saved state, and full == two resumed halves), then GB/s of
// the bytes the scan must move against the measured device-to-device copy bandwidth.
//
//   scan_bench [--quick] [--dtype bf16|f32|f16] [--iters N]
//
// Exit status 1 if any check fails. Not run yet on a GPU (see docs/cuda-engine.md).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../src/kernels/kernels.h"

using mamba::DType;

namespace {

#define CHECK(expr) MAMBA_CUDA_CHECK(expr)

bool g_failed = false;

struct DeviceBuf {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit DeviceBuf(std::size_t n) : bytes(n) { CHECK(cudaMalloc(&p, std::max<std::size_t>(n, 16))); }
  ~DeviceBuf() { cudaFree(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
};

// Host-side storage-type rounding, so the host reference sees exactly the values the GPU reads.
uint16_t to_bits(float v, DType t) {
  if (t == DType::BF16) {
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    uint16_t r;
    std::memcpy(&r, &b, 2);
    return r;
  }
  __half h = __float2half_rn(v);
  uint16_t r;
  std::memcpy(&r, &h, 2);
  return r;
}
float from_bits(uint16_t bits, DType t) {
  if (t == DType::BF16) {
    __nv_bfloat16 b;
    std::memcpy(&b, &bits, 2);
    return __bfloat162float(b);
  }
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

// A host array in the storage type, plus its exact float values.
struct Stored {
  std::vector<float> values;
  std::vector<uint8_t> bytes;
};
Stored store(const std::vector<float>& v, DType t) {
  Stored s;
  s.values.resize(v.size());
  s.bytes.resize(v.size() * mamba::dtype_bytes(t));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (t == DType::F32) {
      s.values[i] = v[i];
      std::memcpy(&s.bytes[i * 4], &v[i], 4);
    } else {
      const uint16_t b = to_bits(v[i], t);
      s.values[i] = from_bits(b, t);
      std::memcpy(&s.bytes[i * 2], &b, 2);
    }
  }
  return s;
}
std::vector<float> read_stored(const DeviceBuf& buf, std::size_t n, DType t) {
  std::vector<uint8_t> bytes(n * mamba::dtype_bytes(t));
  CHECK(cudaMemcpy(bytes.data(), buf.p, bytes.size(), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (t == DType::F32) std::memcpy(&out[i], &bytes[i * 4], 4);
    else {
      uint16_t b;
      std::memcpy(&b, &bytes[i * 2], 2);
      out[i] = from_bits(b, t);
    }
  }
  return out;
}
template <typename T>
void upload(const DeviceBuf& buf, const std::vector<T>& v) {
  CHECK(cudaMemcpy(buf.p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

double softplus(double v) { return v <= 20 ? std::log1p(std::exp(v)) : v; }
double silu(double v) { return v / (1 + std::exp(-v)); }

struct ErrStat {
  double num = 0, den = 0, max_abs = 0;
  bool nan = false;
  void add(double got, double want) {
    if (!std::isfinite(got)) nan = true;
    num += (got - want) * (got - want);
    den += want * want;
    max_abs = std::max(max_abs, std::fabs(got - want));
  }
  double rel() const { return nan ? INFINITY : std::sqrt(num / std::max(den, 1e-300)); }
};

void verdict(const char* what, const ErrStat& e, double tol) {
  const bool ok = e.rel() <= tol;
  if (!ok) g_failed = true;
  std::printf("  %-44s rel %.3e  max|d| %.3e  (tol %.0e) %s\n", what, e.rel(), e.max_abs, tol, ok ? "ok" : "FAIL");
}

double copy_bandwidth_gbs() {
  const std::size_t bytes = std::size_t{1} << 30;
  DeviceBuf a(bytes), b(bytes);
  CHECK(cudaMemset(a.p, 1, bytes));
  cudaEvent_t s, e;
  CHECK(cudaEventCreate(&s));
  CHECK(cudaEventCreate(&e));
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    CHECK(cudaEventRecord(s));
    CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));
    CHECK(cudaEventRecord(e));
    CHECK(cudaEventSynchronize(e));
    float t;
    CHECK(cudaEventElapsedTime(&t, s, e));
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(s);
  cudaEventDestroy(e);
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;  // read + write
}

struct ScanShape {
  int batch, dim, len;
};

// One random problem in device memory, channel-major like the engine's prefill buffers.
struct ScanProblem {
  ScanShape s;
  int N;
  DType t;
  int64_t ld;  // row stride along time (multiple of 8)
  Stored u, z;
  std::vector<float> delta, B, C, A_log, Dskip, dbias, state0;
  DeviceBuf *du = nullptr, *dz = nullptr, *ddelta = nullptr, *dB = nullptr, *dC = nullptr, *dA2 = nullptr,
            *dD = nullptr, *dbias_d = nullptr, *dstate = nullptr, *dout = nullptr, *dslots = nullptr;

  ScanProblem(ScanShape shape, int n_state, DType type, std::mt19937& rng) : s(shape), N(n_state), t(type) {
    ld = (s.len + 7) / 8 * 8;
    std::normal_distribution<float> nd(0.f, 1.f);
    std::uniform_real_distribution<float> ud(0.f, 1.f);
    const std::size_t rows = static_cast<std::size_t>(s.batch) * s.dim * ld;
    std::vector<float> uh(rows), zh(rows);
    delta.resize(rows);
    for (auto& v : uh) v = nd(rng);
    for (auto& v : zh) v = nd(rng);
    for (auto& v : delta) v = 0.5f * nd(rng);
    u = store(uh, t);
    z = store(zh, t);
    B.resize(static_cast<std::size_t>(s.batch) * N * ld);
    C.resize(B.size());
    for (auto& v : B) v = nd(rng);
    for (auto& v : C) v = nd(rng);
    A_log.resize(static_cast<std::size_t>(s.dim) * N);
    for (int d = 0; d < s.dim; ++d)
      for (int n = 0; n < N; ++n) A_log[d * N + n] = std::log(1.f + n) + 0.1f * nd(rng);
    Dskip.resize(s.dim);
    dbias.resize(s.dim);
    for (int d = 0; d < s.dim; ++d) {
      Dskip[d] = 0.5f + ud(rng);
      const double dt0 = std::exp(std::log(1e-3) + ud(rng) * (std::log(1e-1) - std::log(1e-3)));
      dbias[d] = static_cast<float>(dt0 + std::log(-std::expm1(-dt0)));  // softplus^-1(dt0)
    }
    state0.resize(static_cast<std::size_t>(s.batch) * s.dim * N);
    for (auto& v : state0) v = nd(rng);

    const std::size_t tb = mamba::dtype_bytes(t);
    du = new DeviceBuf(rows * tb);
    dz = new DeviceBuf(rows * tb);
    dout = new DeviceBuf(rows * tb);
    ddelta = new DeviceBuf(rows * 4);
    dB = new DeviceBuf(B.size() * 4);
    dC = new DeviceBuf(C.size() * 4);
    dA2 = new DeviceBuf(A_log.size() * 4);
    dD = new DeviceBuf(s.dim * 4);
    dbias_d = new DeviceBuf(s.dim * 4);
    dstate = new DeviceBuf(state0.size() * 4);
    dslots = new DeviceBuf(s.batch * 4);
    upload(*du, u.bytes);
    upload(*dz, z.bytes);
    upload(*ddelta, delta);
    upload(*dB, B);
    upload(*dC, C);
    DeviceBuf alog(A_log.size() * 4);
    upload(alog, A_log);
    mamba::launch_prepare_A(alog.as<float>(), dA2->as<float>(), static_cast<int64_t>(A_log.size()), nullptr);
    CHECK(cudaDeviceSynchronize());
    upload(*dD, Dskip);
    upload(*dbias_d, dbias);
    std::vector<int> slots(s.batch);
    for (int b = 0; b < s.batch; ++b) slots[b] = b;
    upload(*dslots, slots);
    reset_state();
  }
  ~ScanProblem() {
    for (DeviceBuf* b : {du, dz, dout, ddelta, dB, dC, dA2, dD, dbias_d, dstate, dslots}) delete b;
  }
  void reset_state() { upload(*dstate, state0); }

  std::size_t min_bytes() const {
    const std::size_t tb = mamba::dtype_bytes(t);
    const std::size_t steps = static_cast<std::size_t>(s.batch) * s.dim * s.len;
    return steps * (3 * tb + 4)                                     // u, z, out; delta in fp32
           + 2 * static_cast<std::size_t>(s.batch) * N * s.len * 4  // B and C once
           + 2 * state0.size() * 4                                  // state in and out
           + A_log.size() * 4 + 2 * s.dim * 4;
  }

  // Runs the scan over steps [t0, t0 + len) of every row (a resumed piece when t0 > 0).
  void run(int t0, int len, int channels, cudaStream_t stream = nullptr) const {
    const std::size_t tb = mamba::dtype_bytes(t);
    mamba::ScanParams p;
    p.batch = s.batch, p.dim = s.dim, p.seqlen = len, p.dstate = N;
    p.u = du->as<char>() + t0 * tb, p.u_batch_stride = static_cast<int64_t>(s.dim) * ld, p.u_dim_stride = ld;
    p.delta = ddelta->as<float>() + t0, p.delta_batch_stride = static_cast<int64_t>(s.dim) * ld, p.delta_dim_stride = ld;
    p.A2 = dA2->as<float>();
    p.B = dB->as<float>() + t0, p.B_batch_stride = static_cast<int64_t>(N) * ld, p.B_state_stride = ld;
    p.C = dC->as<float>() + t0, p.C_batch_stride = static_cast<int64_t>(N) * ld, p.C_state_stride = ld;
    p.D = dD->as<float>(), p.delta_bias = dbias_d->as<float>();
    p.z = dz->as<char>() + t0 * tb, p.z_batch_stride = static_cast<int64_t>(s.dim) * ld, p.z_dim_stride = ld;
    p.out = dout->as<char>() + t0 * tb, p.out_batch_stride = static_cast<int64_t>(s.dim) * ld, p.out_dim_stride = ld;
    p.state = dstate->as<float>(), p.state_slot_stride = static_cast<int64_t>(s.dim) * N;
    p.slots = dslots->as<int>();
    mamba::launch_selective_scan(p, t, channels, stream);
  }

  // float64 recurrence for row (b, d) from the saved state: y over all steps and final h.
  void reference(int b, int d, std::vector<double>& y, std::vector<double>& h) const {
    const std::size_t row = (static_cast<std::size_t>(b) * s.dim + d) * ld;
    h.assign(N, 0);
    for (int n = 0; n < N; ++n) h[n] = state0[(static_cast<std::size_t>(b) * s.dim + d) * N + n];
    y.assign(s.len, 0);
    for (int t = 0; t < s.len; ++t) {
      const double dt = softplus(static_cast<double>(delta[row + t]) + dbias[d]);
      const double uu = u.values[row + t];
      double acc = 0;
      for (int n = 0; n < N; ++n) {
        const double A = -std::exp(static_cast<double>(A_log[d * N + n]));
        const std::size_t bc = (static_cast<std::size_t>(b) * N + n) * ld + t;
        h[n] = std::exp(dt * A) * h[n] + dt * B[bc] * uu;
        acc += h[n] * C[bc];
      }
      y[t] = (acc + Dskip[d] * uu) * silu(z.values[row + t]);
    }
  }
};

void check_scan(ScanProblem& pb, int channels, double tol) {
  // Poison the output so an unwritten element cannot pass.
  CHECK(cudaMemset(pb.dout->p, 0xff, pb.dout->bytes));
  pb.reset_state();
  pb.run(0, pb.s.len, channels);
  CHECK(cudaDeviceSynchronize());
  const std::size_t rows = static_cast<std::size_t>(pb.s.batch) * pb.s.dim;
  std::vector<float> out = read_stored(*pb.dout, rows * pb.ld, pb.t);
  std::vector<float> state(pb.state0.size());
  CHECK(cudaMemcpy(state.data(), pb.dstate->p, state.size() * 4, cudaMemcpyDeviceToHost));

  // Two resumed halves must equal the full run (the carry through the saved state).
  const int half = std::max(8, (pb.s.len / 2) / 8 * 8);
  CHECK(cudaMemset(pb.dout->p, 0xff, pb.dout->bytes));
  pb.reset_state();
  pb.run(0, std::min(half, pb.s.len), channels);
  if (half < pb.s.len) pb.run(half, pb.s.len - half, channels);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out2 = read_stored(*pb.dout, rows * pb.ld, pb.t);
  std::vector<float> state2(pb.state0.size());
  CHECK(cudaMemcpy(state2.data(), pb.dstate->p, state2.size() * 4, cudaMemcpyDeviceToHost));

  ErrStat ey, eh, eresume;
  std::vector<double> y, h;
  const int samples = std::min<int>(static_cast<int>(rows), 24);
  for (int i = 0; i < samples; ++i) {
    const int r = static_cast<int>((static_cast<long long>(i) * 7919) % rows);  // spread over batches and channels
    const int b = r / pb.s.dim, d = r % pb.s.dim;
    pb.reference(b, d, y, h);
    for (int t = 0; t < pb.s.len; ++t) ey.add(out[static_cast<std::size_t>(r) * pb.ld + t], y[t]);
    for (int n = 0; n < pb.N; ++n) eh.add(state[static_cast<std::size_t>(r) * pb.N + n], h[n]);
  }
  for (std::size_t r = 0; r < rows; ++r)
    for (int t = 0; t < pb.s.len; ++t) eresume.add(out2[r * pb.ld + t], out[r * pb.ld + t]);
  for (std::size_t i = 0; i < state.size(); ++i) eresume.add(state2[i], state[i]);
  char label[96];
  std::snprintf(label, sizeof label, "y vs float64 (ch/block %d)", channels);
  verdict(label, ey, tol);
  std::snprintf(label, sizeof label, "final state vs float64 (ch/block %d)", channels);
  verdict(label, eh, 1e-5);
  std::snprintf(label, sizeof label, "full == two resumed halves (ch/block %d)", channels);
  verdict(label, eresume, pb.t == DType::F32 ? 1e-5 : tol);
}

double time_scan(std::vector<ScanProblem*>& sets, int channels, int iters) {
  cudaEvent_t s, e;
  CHECK(cudaEventCreate(&s));
  CHECK(cudaEventCreate(&e));
  for (int i = 0; i < 3; ++i) sets[i % sets.size()]->run(0, sets[0]->s.len, channels);
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    ScanProblem* pb = sets[i % sets.size()];  // rotate so small shapes are not timed out of L2
    CHECK(cudaEventRecord(s));
    pb->run(0, pb->s.len, channels);
    CHECK(cudaEventRecord(e));
    CHECK(cudaEventSynchronize(e));
    float t;
    CHECK(cudaEventElapsedTime(&t, s, e));
    ms.push_back(t);
  }
  cudaEventDestroy(s);
  cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Conv prefill (from a saved state, then resumed) and the decode step against float64.
void check_conv_and_step(DType t, int N, int K, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const int D = 96, L = 37, R = 6, batch = 5;
  const int64_t ld = 40;
  std::vector<float> xh(static_cast<std::size_t>(D) * ld), w(D * K), bias(D), st0(static_cast<std::size_t>(D) * K);
  for (auto& v : xh) v = nd(rng);
  for (auto& v : w) v = nd(rng) * 0.5f;
  for (auto& v : bias) v = nd(rng) * 0.1f;
  for (auto& v : st0) v = nd(rng);
  Stored x = store(xh, t);
  const std::size_t tb = mamba::dtype_bytes(t);
  DeviceBuf dx(x.bytes.size()), dout(D * ld * tb), dw(w.size() * 4), db(D * 4), dst(st0.size() * 4), dslot(4);
  upload(dx, x.bytes);
  upload(dw, w);
  upload(db, bias);
  upload(dst, st0);
  upload(dslot, std::vector<int>{0});
  CHECK(cudaMemset(dout.p, 0xff, dout.bytes));
  // Two pieces (L = 3 then 34) exercise the "prompt shorter than the window" path.
  for (auto [t0, len] : {std::pair<int, int>{0, 3}, std::pair<int, int>{3, L - 3}}) {
    mamba::ConvParams p;
    p.batch = 1, p.dim = D, p.seqlen = len, p.width = K;
    p.x = static_cast<char*>(dx.p) + t0 * tb, p.x_dim_stride = ld;
    p.weight = dw.as<float>(), p.bias = db.as<float>();
    p.out = static_cast<char*>(dout.p) + t0 * tb, p.out_dim_stride = ld;
    p.state = dst.as<float>(), p.state_slot_stride = 0, p.slots = dslot.as<int>();
    mamba::launch_conv1d_prefill(p, t, nullptr);
  }
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out = read_stored(dout, static_cast<std::size_t>(D) * ld, t);
  std::vector<float> st(st0.size());
  CHECK(cudaMemcpy(st.data(), dst.p, st.size() * 4, cudaMemcpyDeviceToHost));
  ErrStat eo, es;
  for (int d = 0; d < D; ++d) {
    std::vector<double> ext;  // x_ext: the state's last K-1 inputs, then the sequence
    for (int k = 1; k < K; ++k) ext.push_back(st0[d * K + k]);
    for (int i = 0; i < L; ++i) ext.push_back(x.values[d * ld + i]);
    for (int i = 0; i < L; ++i) {
      double acc = bias[d];
      for (int k = 0; k < K; ++k) acc += w[d * K + k] * ext[i + k];
      eo.add(out[d * ld + i], silu(acc));
    }
    for (int k = 0; k < K; ++k) es.add(st[d * K + k], ext[ext.size() - K + k]);
  }
  verdict("conv1d prefill (resumed, short piece) vs f64", eo, t == DType::F32 ? 1e-6 : 1e-2);
  verdict("conv1d state after prefill", es, 0);

  // Decode step: conv update then the fused dt_proj + state update, batch with a padding row.
  std::vector<float> xz_h(static_cast<std::size_t>(batch) * 2 * D), xdbl(static_cast<std::size_t>(batch) * (R + 2 * N));
  std::vector<float> dtw(D * R), dtb(D), Alog(D * N), Dsk(D), cst(static_cast<std::size_t>(batch) * D * K),
      sst(static_cast<std::size_t>(batch) * D * N);
  for (auto* v : {&xz_h, &xdbl, &dtw, &cst, &sst})
    for (auto& e : *v) e = nd(rng);
  for (int d = 0; d < D; ++d) {
    dtb[d] = -3.f + 0.5f * nd(rng);
    Dsk[d] = 1.f;
    for (int n = 0; n < N; ++n) Alog[d * N + n] = std::log(1.f + n);
  }
  Stored xz = store(xz_h, t);
  std::vector<int> slots = {3, 0, -1, 1};  // slot 2 untouched, one padding row
  const int rows = static_cast<int>(slots.size());
  DeviceBuf dxz(xz.bytes.size()), dxc(static_cast<std::size_t>(batch) * D * tb), dxdbl(xdbl.size() * 4),
      ddtw(dtw.size() * 4), ddtb(D * 4), dAlog(Alog.size() * 4), dA2(Alog.size() * 4), dDs(D * 4),
      dcst(cst.size() * 4), dsst(sst.size() * 4), dy(static_cast<std::size_t>(batch) * D * tb), dslots(rows * 4);
  upload(dxz, xz.bytes);
  upload(dxdbl, xdbl);
  upload(ddtw, dtw);
  upload(ddtb, dtb);
  upload(dAlog, Alog);
  upload(dDs, Dsk);
  upload(dcst, cst);
  upload(dsst, sst);
  upload(dslots, slots);
  mamba::launch_prepare_A(dAlog.as<float>(), dA2.as<float>(), D * N, nullptr);
  mamba::ConvStepParams cp;
  cp.batch = rows, cp.dim = D, cp.width = K, cp.x = dxz.p, cp.x_row_stride = 2 * D;
  cp.weight = dw.as<float>(), cp.bias = db.as<float>(), cp.out = dxc.p, cp.out_row_stride = D;
  cp.state = dcst.as<float>(), cp.state_slot_stride = static_cast<int64_t>(D) * K, cp.slots = dslots.as<int>();
  mamba::launch_conv1d_step(cp, t, nullptr);
  mamba::SsmStepParams sp;
  sp.batch = rows, sp.dim = D, sp.dstate = N, sp.dt_rank = R;
  sp.x = dxc.p, sp.x_row_stride = D, sp.xdbl = dxdbl.as<float>(), sp.xdbl_row_stride = R + 2 * N;
  sp.dt_weight = ddtw.as<float>(), sp.dt_bias = ddtb.as<float>(), sp.A2 = dA2.as<float>(), sp.D = dDs.as<float>();
  sp.z = static_cast<char*>(dxz.p) + D * tb, sp.z_row_stride = 2 * D, sp.out = dy.p, sp.out_row_stride = D;
  sp.state = dsst.as<float>(), sp.state_slot_stride = static_cast<int64_t>(D) * N, sp.slots = dslots.as<int>();
  mamba::launch_ssm_step(sp, t, nullptr);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> y = read_stored(dy, static_cast<std::size_t>(rows) * D, t);
  std::vector<float> sst_after(sst.size()), cst_after(cst.size());
  CHECK(cudaMemcpy(sst_after.data(), dsst.p, sst.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(cst_after.data(), dcst.p, cst.size() * 4, cudaMemcpyDeviceToHost));
  ErrStat ey, eh, euntouched;
  for (int r = 0; r < rows; ++r) {
    const int s = slots[r];
    for (int d = 0; d < D; ++d) {
      if (s < 0) {
        ey.add(y[r * D + d], 0);
        continue;
      }
      double acc = bias[d];
      std::vector<double> win(K);
      for (int k = 0; k < K - 1; ++k) win[k] = cst[(s * D + d) * K + k + 1];
      win[K - 1] = xz.values[r * 2 * D + d];
      for (int k = 0; k < K; ++k) acc += w[d * K + k] * win[k];
      const double xc = silu(acc);
      const double xc_stored = store({static_cast<float>(xc)}, t).values[0];  // the GPU rounds xc to T
      double dtlin = dtb[d];
      for (int q = 0; q < R; ++q) dtlin += dtw[d * R + q] * xdbl[r * (R + 2 * N) + q];
      const double dt = softplus(dtlin);
      double out = 0;
      for (int n = 0; n < N; ++n) {
        const double A = -std::exp(static_cast<double>(Alog[d * N + n]));
        const double Bn = xdbl[r * (R + 2 * N) + R + n], Cn = xdbl[r * (R + 2 * N) + R + N + n];
        const double hn = std::exp(dt * A) * sst[(s * D + d) * N + n] + dt * Bn * xc_stored;
        eh.add(sst_after[(s * D + d) * N + n], hn);
        out += hn * Cn;
      }
      out = (out + Dsk[d] * xc_stored) * silu(xz.values[r * 2 * D + D + d]);
      ey.add(y[r * D + d], out);
    }
  }
  for (int i = 0; i < D * K; ++i) euntouched.add(cst_after[2 * D * K + i], cst[2 * D * K + i]);
  for (int i = 0; i < D * N; ++i) euntouched.add(sst_after[2 * D * N + i], sst[2 * D * N + i]);
  verdict("decode step y (with a padding row) vs f64", ey, t == DType::F32 ? 1e-5 : 1e-2);
  verdict("decode step state vs f64", eh, t == DType::F32 ? 1e-5 : 1e-3);
  verdict("slot outside the batch untouched", euntouched, 0);
}

// ---- attention hybrid: qkv_prep, window attention, ring write ---------------------------------

struct AttnShape {
  int W, H, KV, hd;
};

// Host float64 RoPE of one row in place (q heads then k heads), angles in long double.
void host_rope(std::vector<double>& row, int heads, int hd, int64_t pos, const std::vector<double>& inv) {
  const int half = hd / 2;
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < half; ++i) {
      const long double angle = static_cast<long double>(pos) * inv[i];
      const double c = static_cast<double>(cosl(angle)), s = static_cast<double>(sinl(angle));
      const double a = row[h * hd + i], b = row[h * hd + half + i];
      row[h * hd + i] = a * c - b * s;
      row[h * hd + half + i] = b * c + a * s;
    }
  }
}

// One query (all H heads) over keys/values given as row pointers [KV*hd]: plain softmax.
void host_attend(const double* q, const std::vector<const float*>& keys, const std::vector<const float*>& values,
                 const AttnShape& a, double* out) {
  const int G = a.H / a.KV;
  for (int h = 0; h < a.H; ++h) {
    const int kv = h / G;
    std::vector<double> sc(keys.size());
    double mx = -INFINITY;
    for (std::size_t j = 0; j < keys.size(); ++j) {
      double dot = 0;
      for (int c = 0; c < a.hd; ++c) dot += q[h * a.hd + c] * keys[j][kv * a.hd + c];
      sc[j] = dot / std::sqrt(static_cast<double>(a.hd));
      mx = std::max(mx, sc[j]);
    }
    double tot = 0;
    for (auto& v : sc) tot += (v = std::exp(v - mx));
    for (int c = 0; c < a.hd; ++c) {
      double acc = 0;
      for (std::size_t j = 0; j < keys.size(); ++j) acc += sc[j] / tot * values[j][kv * a.hd + c];
      out[h * a.hd + c] = acc;
    }
  }
}

// Prefill of L tokens at `start` for slot 1 of a 4-slot ring pool (one attention layer), then a
// decode step of 4 rows (slots 2, 0, padding, 1) at different positions, split and unsplit.
void check_attention(DType t, const AttnShape& a, int64_t start, int L, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const int Q = a.H * a.hd, KVW = a.KV * a.hd, QKV = Q + 2 * KVW, slots_n = 4;
  const std::size_t ring_slot = static_cast<std::size_t>(a.W) * KVW;
  std::vector<float> ring_k(slots_n * ring_slot), ring_v(slots_n * ring_slot), qkv(static_cast<std::size_t>(L) * QKV),
      bias(QKV);
  for (auto* v : {&ring_k, &ring_v, &qkv}) for (auto& e : *v) e = 1.5f * nd(rng);
  for (auto& e : bias) e = 0.1f * nd(rng);
  std::vector<double> inv(a.hd / 2);
  for (int i = 0; i < a.hd / 2; ++i) inv[i] = std::pow(10000.0, -2.0 * i / a.hd);
  const std::size_t tb = mamba::dtype_bytes(t);
  DeviceBuf drk(ring_k.size() * 4), drv(ring_v.size() * 4), dqkv(qkv.size() * 4), dbias(QKV * 4), dinv(inv.size() * 8),
      dout(static_cast<std::size_t>(L) * Q * tb);
  upload(drk, ring_k);
  upload(drv, ring_v);
  upload(dqkv, qkv);
  upload(dbias, bias);
  upload(dinv, inv);
  CHECK(cudaMemset(dout.p, 0xff, dout.bytes));

  // qkv_prep (prefill: no ring write) against float64 bias + RoPE.
  mamba::QkvPrepParams pp;
  pp.rows = L, pp.heads = a.H, pp.kv_heads = a.KV, pp.head_dim = a.hd, pp.window = a.W;
  pp.qkv = dqkv.as<float>(), pp.qkv_row_stride = QKV, pp.bias = dbias.as<float>(), pp.inv_freq = dinv.as<double>();
  pp.start = start;
  mamba::launch_qkv_prep(pp, nullptr);
  const int slot = 1;
  mamba::AttnPrefillParams ap;
  ap.L = L, ap.start = start, ap.heads = a.H, ap.kv_heads = a.KV, ap.head_dim = a.hd, ap.window = a.W;
  ap.qkv = dqkv.as<float>(), ap.qkv_row_stride = QKV;
  ap.ring_k = drk.as<float>() + slot * ring_slot, ap.ring_v = drv.as<float>() + slot * ring_slot;
  ap.out = dout.p, ap.out_row_stride = Q;
  mamba::launch_window_attention_prefill(ap, t, nullptr);
  mamba::RingWriteParams rp;
  rp.L = L, rp.start = start, rp.window = a.W, rp.kv_width = KVW;
  rp.k = dqkv.as<float>() + Q, rp.v = dqkv.as<float>() + Q + KVW, rp.row_stride = QKV;
  rp.ring_k = drk.as<float>() + slot * ring_slot, rp.ring_v = drv.as<float>() + slot * ring_slot;
  mamba::launch_ring_write(rp, nullptr);
  CHECK(cudaDeviceSynchronize());
  std::vector<float> qkv_dev(qkv.size()), rk_after(ring_k.size()), rv_after(ring_v.size());
  CHECK(cudaMemcpy(qkv_dev.data(), dqkv.p, qkv.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(rk_after.data(), drk.p, rk_after.size() * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(rv_after.data(), drv.p, rv_after.size() * 4, cudaMemcpyDeviceToHost));
  std::vector<float> out = read_stored(dout, static_cast<std::size_t>(L) * Q, t);

  ErrStat erope, eatt, ering, euntouched;
  for (int l = 0; l < L; ++l) {
    std::vector<double> row(QKV);
    for (int c = 0; c < QKV; ++c) row[c] = static_cast<double>(qkv[l * QKV + c]) + bias[c];
    host_rope(row, a.H + a.KV, a.hd, start + l, inv);
    for (int c = 0; c < QKV; ++c) erope.add(qkv_dev[l * QKV + c], row[c]);
  }
  // Attention over the device's rotated rows (so this isolates the attention kernel).
  const float* ring_k0 = ring_k.data() + slot * ring_slot;  // the ring before the write
  const float* ring_v0 = ring_v.data() + slot * ring_slot;
  std::vector<double> q(Q), o(Q);
  for (int l = 0; l < L; ++l) {
    const int64_t p = start + l;
    std::vector<const float*> ks, vs;
    for (int64_t j = std::max<int64_t>(0, p - a.W + 1); j <= p; ++j) {
      if (j < start) {
        ks.push_back(ring_k0 + (j % a.W) * KVW);
        vs.push_back(ring_v0 + (j % a.W) * KVW);
      } else {
        ks.push_back(qkv_dev.data() + (j - start) * QKV + Q);
        vs.push_back(qkv_dev.data() + (j - start) * QKV + Q + KVW);
      }
    }
    for (int c = 0; c < Q; ++c) q[c] = qkv_dev[l * QKV + c];
    host_attend(q.data(), ks, vs, a, o.data());
    for (int c = 0; c < Q; ++c) eatt.add(out[l * Q + c], o[c]);
  }
  for (int s = 0; s < slots_n; ++s) {
    for (int r = 0; r < a.W; ++r) {
      // Ring row r of slot 1 holds the newest position == r mod W among the call's last W.
      int m = -1;
      if (s == slot)
        for (int mm = std::max(0, L - a.W); mm < L; ++mm)
          if ((start + mm) % a.W == r) m = mm;
      for (int c = 0; c < KVW; ++c) {
        const std::size_t at = s * ring_slot + static_cast<std::size_t>(r) * KVW + c;
        if (m >= 0) {
          ering.add(rk_after[at], qkv_dev[m * QKV + Q + c]);
          ering.add(rv_after[at], qkv_dev[m * QKV + Q + KVW + c]);
        } else {
          euntouched.add(rk_after[at], ring_k[at]);
          euntouched.add(rv_after[at], ring_v[at]);
        }
      }
    }
  }
  char label[96];
  std::snprintf(label, sizeof label, "qkv_prep bias+RoPE at %lld.. vs f64", static_cast<long long>(start));
  verdict(label, erope, 1e-6);
  std::snprintf(label, sizeof label, "prefill attention W%d L%d H%d/%d hd%d vs f64", a.W, L, a.H, a.KV, a.hd);
  verdict(label, eatt, t == DType::F32 ? 1e-5 : 1e-2);
  verdict("ring write (last min(L, W) rows)", ering, 0);
  verdict("ring rows not written, other slots untouched", euntouched, 0);

  // Decode: rows at positions 0, W-1, a wrapped one and a far one; slot 3 is not in the batch.
  const std::vector<int> dslots = {2, 0, -1, 1};
  const std::vector<int64_t> dpos = {0, a.W - 1, -1, 5000003};
  const int rows = static_cast<int>(dslots.size());
  std::vector<float> dq(static_cast<std::size_t>(rows) * QKV);
  for (auto& e : dq) e = 1.5f * nd(rng);
  std::vector<int64_t> dpos_dev = dpos;
  dpos_dev[2] = 0;
  for (int split_keys : {0, 8}) {
    upload(drk, rk_after);
    upload(drv, rv_after);
    DeviceBuf ddq(dq.size() * 4), dsl(rows * 4), dps(rows * 8), ddo(static_cast<std::size_t>(rows) * Q * tb);
    const int splits = mamba::attention_decode_splits(a.W, split_keys);
    const int keys = (a.W + splits - 1) / splits;
    DeviceBuf dpart(static_cast<std::size_t>(rows) * a.H * splits * (a.hd + 2) * 4);
    upload(ddq, dq);
    upload(dsl, dslots);
    upload(dps, dpos_dev);
    CHECK(cudaMemset(ddo.p, 0xff, ddo.bytes));
    mamba::QkvPrepParams dp;
    dp.rows = rows, dp.heads = a.H, dp.kv_heads = a.KV, dp.head_dim = a.hd, dp.window = a.W;
    dp.qkv = ddq.as<float>(), dp.qkv_row_stride = QKV, dp.bias = dbias.as<float>(), dp.inv_freq = dinv.as<double>();
    dp.positions = dps.as<int64_t>();
    dp.ring_k = drk.as<float>(), dp.ring_v = drv.as<float>(), dp.ring_slot_stride = static_cast<int64_t>(ring_slot);
    dp.slots = dsl.as<int>();
    mamba::launch_qkv_prep(dp, nullptr);
    mamba::AttnDecodeParams dap;
    dap.batch = rows, dap.heads = a.H, dap.kv_heads = a.KV, dap.head_dim = a.hd, dap.window = a.W;
    dap.slots = dsl.as<int>(), dap.positions = dps.as<int64_t>();
    dap.q = ddq.as<float>(), dap.q_row_stride = QKV;
    dap.ring_k = drk.as<float>(), dap.ring_v = drv.as<float>(), dap.ring_slot_stride = static_cast<int64_t>(ring_slot);
    dap.out = ddo.p, dap.out_row_stride = Q;
    dap.splits = splits, dap.split_keys = keys, dap.partial = dpart.as<float>();
    mamba::launch_window_attention_decode(dap, t, nullptr);
    CHECK(cudaDeviceSynchronize());
    std::vector<float> dout_h = read_stored(ddo, static_cast<std::size_t>(rows) * Q, t);
    std::vector<float> rk2(ring_k.size()), rv2(ring_v.size());
    CHECK(cudaMemcpy(rk2.data(), drk.p, rk2.size() * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(rv2.data(), drv.p, rv2.size() * 4, cudaMemcpyDeviceToHost));
    ErrStat edec, enew, eslot3;
    for (int r = 0; r < rows; ++r) {
      if (dslots[r] < 0) {
        for (int c = 0; c < Q; ++c) edec.add(dout_h[r * Q + c], 0);
        continue;
      }
      std::vector<double> row(QKV);
      for (int c = 0; c < QKV; ++c) row[c] = static_cast<double>(dq[r * QKV + c]) + bias[c];
      host_rope(row, a.H + a.KV, a.hd, dpos[r], inv);
      const std::size_t base = dslots[r] * ring_slot;
      const std::size_t at = base + static_cast<std::size_t>(dpos[r] % a.W) * KVW;
      for (int c = 0; c < KVW; ++c) {
        enew.add(rk2[at + c], row[Q + c]);
        enew.add(rv2[at + c], row[Q + KVW + c]);
      }
      // Live ring rows: 0 .. min(t+1, W)-1 (the reference engine's attentionStep).
      std::vector<const float*> ks, vs;
      for (int64_t s = 0; s < std::min<int64_t>(dpos[r] + 1, a.W); ++s) {
        ks.push_back(rk2.data() + base + s * KVW);
        vs.push_back(rv2.data() + base + s * KVW);
      }
      host_attend(row.data(), ks, vs, a, o.data());
      for (int c = 0; c < Q; ++c) edec.add(dout_h[r * Q + c], o[c]);
    }
    for (std::size_t i = 3 * ring_slot; i < 4 * ring_slot; ++i) {
      eslot3.add(rk2[i], rk_after[i]);
      eslot3.add(rv2[i], rv_after[i]);
    }
    std::snprintf(label, sizeof label, "decode attention, %d split(s), padding row vs f64", splits);
    verdict(label, edec, t == DType::F32 ? 1e-5 : 1e-2);
    verdict("decode: new key/value in ring row t mod W", enew, 1e-6);
    verdict("decode: slot outside the batch untouched", eslot3, 0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int iters = 20;
  std::vector<DType> types = {DType::BF16, DType::F32};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else if (a == "--dtype" && i + 1 < argc) {
      const std::string v = argv[++i];
      types = {v == "f32" ? DType::F32 : v == "f16" ? DType::F16 : DType::BF16};
    } else {
      std::fprintf(stderr, "usage: scan_bench [--quick] [--dtype bf16|f32|f16] [--iters N]\n");
      return 2;
    }
  }
  try {
    int dev = 0;
    cudaDeviceProp prop{};
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaGetDeviceProperties(&prop, dev));
    std::printf("device: %s (sm_%d%d, %d SMs, L2 %d MB)\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.l2CacheSize >> 20);
    const double copy = copy_bandwidth_gbs();
    std::printf("device-to-device copy: %.0f GB/s (bytes read + written)\n\n", copy);

    std::mt19937 rng(20261117);
    for (DType t : types) {
      for (auto [n, k] : {std::pair<int, int>{16, 4}, std::pair<int, int>{5, 3}}) {
        std::printf("== %s: conv1d (d_conv %d) and decode step (d_state %d)\n", mamba::dtype_name(t), k, n);
        check_conv_and_step(t, n, k, rng);
      }
      // Attention: prefill longer than the window far into a session, shorter than the window
      // at its start, head_dim 40 (a partly filled lane dimension), 64 and 8; decode with and
      // without splits.
      for (auto [shape, start, L] : {std::tuple<AttnShape, int64_t, int>{{37, 4, 2, 40}, 1000003, 50},
                                     std::tuple<AttnShape, int64_t, int>{{37, 4, 2, 40}, 10, 7},
                                     std::tuple<AttnShape, int64_t, int>{{64, 12, 4, 64}, 10000000, 100},
                                     std::tuple<AttnShape, int64_t, int>{{5, 4, 2, 8}, 3, 37}}) {
        std::printf("== %s: attention W=%d H=%d KV=%d hd=%d, prefill L=%d at %lld, decode\n", mamba::dtype_name(t), shape.W,
                    shape.H, shape.KV, shape.hd, L, static_cast<long long>(start));
        check_attention(t, shape, start, L, rng);
      }
    }

    std::vector<ScanShape> shapes = {{1, 1536, 512}, {1, 1536, 2048}, {1, 1536, 8192}, {16, 1536, 2048}};
    if (quick) shapes = {{1, 1536, 512}, {2, 256, 1037}};
    struct Row {
      std::string dtype, shape;
      int ch;
      double ms, gbs;
    };
    std::vector<Row> table;
    for (DType t : types) {
      const double tol = t == DType::F32 ? 1e-5 : 1e-2;  // 16-bit: the output is rounded to T
      for (const ScanShape& s : shapes) {
        std::printf("== %s scan B=%d D=%d L=%d N=16\n", mamba::dtype_name(t), s.batch, s.dim, s.len);
        std::vector<ScanProblem*> sets;
        sets.push_back(new ScanProblem(s, 16, t, rng));
        for (int ch : {1, 2, 4}) check_scan(*sets[0], ch, tol);
        // Enough distinct inputs that one set's bytes cannot stay in L2 between timed runs.
        const std::size_t per = sets[0]->min_bytes();
        const int nsets = static_cast<int>(std::min<std::size_t>(8, std::max<std::size_t>(1, (3 * (std::size_t(prop.l2CacheSize))) / per + 1)));
        for (int i = 1; i < nsets; ++i) sets.push_back(new ScanProblem(s, 16, t, rng));
        for (int ch : {1, 2, 4}) {
          const double ms = time_scan(sets, ch, iters);
          const double gbs = per / (ms * 1e-3) / 1e9;
          char shape[64];
          std::snprintf(shape, sizeof shape, "%dx%dx%d", s.batch, s.dim, s.len);
          table.push_back({mamba::dtype_name(t), shape, ch, ms, gbs});
        }
        for (ScanProblem* p : sets) delete p;
      }
    }
    std::printf("\n%-5s %-14s %-8s %10s %10s %8s\n", "type", "BxDxL", "ch/blk", "ms", "GB/s", "of copy");
    for (const Row& r : table)
      std::printf("%-5s %-14s %-8d %10.4f %10.1f %7.1f%%\n", r.dtype.c_str(), r.shape.c_str(), r.ch, r.ms, r.gbs,
                  100.0 * r.gbs / copy);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::printf("\n%s\n", g_failed ? "CHECKS FAILED" : "all checks passed");
  return g_failed ? 1 : 0;
}
