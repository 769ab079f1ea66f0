// The forward pass of Mamba-1 on the GPU, prefill and batched decode. See engine.h for the
// ownership model and kernels/kernels.h for the layouts.
//
// Prefill of one session, per layer (L tokens, Lp = L rounded up to 8, T = storage type):
//   h   [L][d]        T    = RMSNorm(residual)                         token-major
//   xz  [2D][Lp]      T    = W_in · h^T           (cuBLAS)             channel-major
//   xc  [D][Lp]       T    = silu(conv1d(x, conv_state))  (kernel; conv_state updated)
//   xdbl[R+2N][Lp]    fp32 = W_x · xc            (cuBLAS)  rows: dt_low | B | C
//   dt  [D][Lp]       fp32 = W_dt · dt_low       (cuBLAS)
//   y   [D][Lp]       T    = selective_scan(xc, dt, A, B, C, D, z; ssm_state updated)
//   residual [L][d]  fp32 += y^T · W_out^T       (cuBLAS, beta = 1: the residual add is free)
// Decode is the same with one token per session, token-major rows, dt_proj folded into the
// state-update kernel, and the whole step captured once per batch bucket as a CUDA graph.
//
// A hybrid's attention layer (token-major throughout, Q = heads*hd, K = kv_heads*hd):
//   h   [L][d]        T    = RMSNorm(residual)
//   qkv [L][Q+2K]     fp32 = h · [W_q; W_k; W_v]^T     (cuBLAS, one GEMM for the three)
//   qkv               fp32 += biases, RoPE on q and k at the tokens' positions  (qkv_prep)
//   att [L][Q]        T    = window attention over [ring | new keys]
//   ring                   = the last min(L, W) new keys/values  (after the attention read it)
//   residual [L][d]  fp32 += att · W_o^T              (cuBLAS, beta = 1)
// In decode qkv_prep writes the new key/value into the ring first and the attention reads
// only the ring. Positions come from the caller (TypeScript's tokensAbsorbed) on every call.
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace mamba {

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The row-major products, written once in cuBLAS's column-major terms. out[r][j] =
// sum_k in[r][k] * W[j][k] for token-major in/out: C(cm) = W(cm)^T · in(cm).
void linear_rows(GemmContext* g, const void* W, DType wt, int out_features, int in_features, const void* in,
                 int64_t in_ld, int rows, void* out, DType out_t, int64_t out_ld, float beta) {
  gemm(g, Op::T, Op::N, out_features, rows, in_features, W, wt, in_features, in, wt, in_ld, out, out_t, out_ld, beta);
}

}  // namespace

Engine::Engine(const ModelDims& dims, const EngineOptions& options) : dims_(dims), opt_(options) {
  const auto& m = dims_;
  MAMBA_REQUIRE(m.d_model > 0 && m.d_inner > 0 && m.d_state > 0 && m.d_conv > 0 && m.dt_rank > 0 && m.n_layers > 0 &&
                    m.vocab_rows > 0,
                "invalid_argument", "engine: every model dimension must be positive");
  MAMBA_REQUIRE(opt_.max_slots > 0 && opt_.max_batch > 0 && opt_.prefill_chunk > 0 && opt_.max_logit_rows > 0,
                "invalid_argument", "engine: slot, batch and chunk limits must be positive");
  opt_.prefill_chunk = static_cast<int>(round_up(opt_.prefill_chunk, kScanAlign));
  const bool hybrid = !m.layer_is_attention.empty();
  if (hybrid) {
    MAMBA_REQUIRE(static_cast<int>(m.layer_is_attention.size()) == m.n_layers, "invalid_argument",
                  "engine: layer types must name every layer");
    MAMBA_REQUIRE(m.window >= 1 && m.heads >= 1 && m.kv_heads >= 1 && m.heads % m.kv_heads == 0, "invalid_argument",
                  "engine: attention needs window >= 1 and heads a positive multiple of kv_heads");
    MAMBA_REQUIRE(m.head_dim >= 1 && m.head_dim <= kAttnMaxHeadDim && (m.rope_theta <= 0 || m.head_dim % 2 == 0),
                  "invalid_argument", "engine: head_dim must be in 1..256 (and even with RoPE)");
  }
  try {
    MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
    MAMBA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

    const int D = m.d_inner, N = m.d_state, R = m.dt_rank, d = m.d_model, V = m.vocab_rows;
    const std::size_t tb = dtype_bytes(opt_.dtype);
    const std::size_t per_slot_conv = m.conv_floats();
    const std::size_t per_slot_ssm = m.ssm_floats();
    const std::size_t per_slot_ring = m.ring_floats();
    conv_pool_ = static_cast<float*>(dev_alloc(per_slot_conv * opt_.max_slots * 4, &state_bytes_));
    ssm_pool_ = static_cast<float*>(dev_alloc(per_slot_ssm * opt_.max_slots * 4, &state_bytes_));
    if (per_slot_ring > 0) {
      ring_k_pool_ = static_cast<float*>(dev_alloc(per_slot_ring * opt_.max_slots * 4, &state_bytes_));
      ring_v_pool_ = static_cast<float*>(dev_alloc(per_slot_ring * opt_.max_slots * 4, &state_bytes_));
    }
    slot_used_.assign(opt_.max_slots, 0);
    for (int s = opt_.max_slots - 1; s >= 0; --s) free_slots_.push_back(s);

    const std::size_t Lc = opt_.prefill_chunk;
    auto* ws = &workspace_bytes_;
    pre_.residual = static_cast<float*>(dev_alloc(Lc * d * 4, ws));
    pre_.h = dev_alloc(Lc * d * tb, ws);
    pre_.xz = dev_alloc(2 * D * Lc * tb, ws);
    pre_.xc = dev_alloc(D * Lc * tb, ws);
    pre_.xdbl = static_cast<float*>(dev_alloc((R + 2 * N) * Lc * 4, ws));
    pre_.dt = static_cast<float*>(dev_alloc(D * Lc * 4, ws));
    pre_.y = dev_alloc(D * Lc * tb, ws);
    pre_.tokens = static_cast<int*>(dev_alloc(Lc * 4, ws));
    pre_.slots = static_cast<int*>(dev_alloc(4 * 4, ws));

    const std::size_t B = opt_.max_batch;
    dec_.residual = static_cast<float*>(dev_alloc(B * d * 4, ws));
    dec_.h = dev_alloc(B * d * tb, ws);
    dec_.xz = dev_alloc(B * 2 * D * tb, ws);
    dec_.xc = dev_alloc(B * D * tb, ws);
    dec_.xdbl = static_cast<float*>(dev_alloc(B * (R + 2 * N) * 4, ws));
    dec_.y = dev_alloc(B * D * tb, ws);
    dec_.tokens = static_cast<int*>(dev_alloc(B * 4, ws));
    dec_.slots = static_cast<int*>(dev_alloc(B * 4, ws));

    dec_.positions = static_cast<int64_t*>(dev_alloc(B * 8, ws));

    if (hybrid) {
      const std::size_t Q = static_cast<std::size_t>(m.heads) * m.head_dim;
      const std::size_t QKV = Q + 2 * static_cast<std::size_t>(m.kv_heads) * m.head_dim;
      pre_.qkv = static_cast<float*>(dev_alloc(Lc * QKV * 4, ws));
      pre_.att = dev_alloc(Lc * Q * tb, ws);
      dec_.qkv = static_cast<float*>(dev_alloc(B * QKV * 4, ws));
      dec_.att = dev_alloc(B * Q * tb, ws);
      attn_splits_ = attention_decode_splits(m.window, opt_.attn_split_keys);
      attn_split_keys_ = (m.window + attn_splits_ - 1) / attn_splits_;  // balanced ranges
      if (attn_splits_ > 1) {
        dec_.partial = static_cast<float*>(dev_alloc(B * m.heads * attn_splits_ * (m.head_dim + 2) * 4, ws));
      }
      if (m.rope_theta > 0) {
        // inv_freq[i] = theta^(-2i/hd) in float64, as the reference and the ORT engine's
        // tables compute it; the angles are formed on the device in float64 (rope_ring.cu).
        std::vector<double> inv(m.head_dim / 2);
        for (int i = 0; i < m.head_dim / 2; ++i) inv[i] = std::pow(m.rope_theta, -2.0 * i / m.head_dim);
        inv_freq_ = static_cast<double*>(dev_alloc(inv.size() * 8, &weight_bytes_));
        MAMBA_CUDA_CHECK(cudaMemcpy(inv_freq_, inv.data(), inv.size() * 8, cudaMemcpyHostToDevice));
      }
    }

    const std::size_t logit_rows = std::max<std::size_t>(opt_.max_logit_rows, B);
    logits_ = static_cast<float*>(dev_alloc(logit_rows * V * 4, ws));
    argmax_ = static_cast<int*>(dev_alloc(B * 4, ws));

    // cuBLAS gets its workspace up front: an allocation inside graph capture is an error.
    constexpr std::size_t kGemmWorkspace = 32u << 20;
    gemm_workspace_ = dev_alloc(kGemmWorkspace, ws);
    gemm_ = gemm_create(stream_, gemm_workspace_, kGemmWorkspace);

    // Decode stages slots and tokens (int32) and positions (int64) per row.
    host_staging_bytes_ =
        std::max({Lc * 4, B * 16, logit_rows * V * 4, (per_slot_conv + per_slot_ssm + 2 * per_slot_ring) * 4});
    MAMBA_CUDA_CHECK(cudaHostAlloc(&host_staging_, host_staging_bytes_, cudaHostAllocDefault));

    layers_.assign(m.n_layers, Layer{});
    int ranks[2] = {0, 0};
    for (int i = 0; i < m.n_layers; ++i) {
      layers_[i].attention = m.is_attention(i);
      layers_[i].rank = ranks[layers_[i].attention ? 1 : 0]++;
    }
  } catch (...) {
    release();
    throw;
  }
}

Engine::~Engine() { release(); }

void* Engine::dev_alloc(std::size_t bytes, std::size_t* counter) {
  void* p = nullptr;
  MAMBA_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(bytes, 16)));
  allocations_.push_back(p);
  if (counter != nullptr) *counter += bytes;
  return p;
}

void Engine::release() {
  // Best effort and silent: this runs from destructors and from close(), where there is no one
  // left to report to, and a failed free must not hide the error that led here.
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [bucket, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  if (gemm_ != nullptr) {
    gemm_destroy(gemm_);
    gemm_ = nullptr;
  }
  for (void* p : allocations_) cudaFree(p);
  allocations_.clear();
  if (host_staging_ != nullptr) {
    cudaFreeHost(host_staging_);
    host_staging_ = nullptr;
  }
  if (stream_ != nullptr) {
    cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }
}

void Engine::require_open() const {
  MAMBA_REQUIRE(!closed_, "engine_closed", "engine is closed");
}

void Engine::require_slot(int slot) const {
  std::lock_guard<std::mutex> lock(slots_mu_);
  MAMBA_REQUIRE(slot >= 0 && slot < opt_.max_slots, "invalid_argument", "slot index " + std::to_string(slot) + " out of range");
  MAMBA_REQUIRE(slot_used_[slot], "invalid_argument", "slot " + std::to_string(slot) + " is not allocated");
}

void Engine::set_tensor(const std::string& name, int layer, const void* bytes, std::size_t nbytes, DType src) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const auto& m = dims_;
  const int64_t D = m.d_inner, N = m.d_state, K = m.d_conv, R = m.dt_rank, d = m.d_model, V = m.vocab_rows;
  const DType T = opt_.dtype;

  // Where the tensor goes, how many elements it must have, and the type it is kept in. The
  // small, precision-critical vectors stay fp32 whatever the storage type.
  void** target = nullptr;
  int64_t count = 0;
  DType keep = DType::F32;
  bool is_A_log = false;
  // q, k and v (weights and biases) are rows of one stacked buffer of `total` elements; this
  // tensor starts `offset` elements in. Everything else fills a buffer of its own.
  int64_t total = -1, offset = 0;
  if (layer >= 0 && layer < m.n_layers && layers_[layer].attention) {
    Layer& L = layers_[layer];
    const int64_t Qn = static_cast<int64_t>(m.heads) * m.head_dim, Kn = static_cast<int64_t>(m.kv_heads) * m.head_dim;
    const int64_t QKV = Qn + 2 * Kn;
    auto f32 = [](float** p) { return reinterpret_cast<void**>(p); };
    if (name == "norm.weight") target = f32(&L.norm), count = d;
    else if (name == "mixer.q_proj.weight") target = &L.qkv_w, count = Qn * d, keep = T, total = QKV * d, offset = 0;
    else if (name == "mixer.k_proj.weight") target = &L.qkv_w, count = Kn * d, keep = T, total = QKV * d, offset = Qn * d;
    else if (name == "mixer.v_proj.weight")
      target = &L.qkv_w, count = Kn * d, keep = T, total = QKV * d, offset = (Qn + Kn) * d;
    else if (name == "mixer.o_proj.weight") target = &L.o_w, count = d * Qn, keep = T;
    else if (name == "mixer.q_proj.bias") target = f32(&L.qkv_b), count = Qn, total = QKV, offset = 0;
    else if (name == "mixer.k_proj.bias") target = f32(&L.qkv_b), count = Kn, total = QKV, offset = Qn;
    else if (name == "mixer.v_proj.bias") target = f32(&L.qkv_b), count = Kn, total = QKV, offset = Qn + Kn;
    else if (name == "mixer.o_proj.bias") target = f32(&L.out_b), count = d;
  } else if (layer < 0) {
    if (name == "embeddings") target = &embeddings_, count = V * d, keep = T;
    else if (name == "lm_head") target = &lm_head_, count = V * d, keep = T;
    else if (name == "norm_f") target = reinterpret_cast<void**>(&norm_f_), count = d;
  } else {
    MAMBA_REQUIRE(layer < m.n_layers, "invalid_argument", "tensor " + name + ": layer " + std::to_string(layer) + " out of range");
    Layer& L = layers_[layer];
    auto f32 = [](float** p) { return reinterpret_cast<void**>(p); };
    if (name == "norm.weight") target = f32(&L.norm), count = d;
    else if (name == "mixer.A_log") target = f32(&L.A2), count = D * N, is_A_log = true;
    else if (name == "mixer.D") target = f32(&L.Dskip), count = D;
    else if (name == "mixer.conv1d.weight") target = f32(&L.conv_w), count = D * K;
    else if (name == "mixer.conv1d.bias") target = f32(&L.conv_b), count = D;
    else if (name == "mixer.in_proj.weight") target = &L.in_w, count = 2 * D * d, keep = T;
    else if (name == "mixer.in_proj.bias") target = f32(&L.in_b), count = 2 * D;
    else if (name == "mixer.x_proj.weight") target = &L.x_w, count = (R + 2 * N) * D, keep = T;
    else if (name == "mixer.dt_proj.weight") target = f32(&L.dt_w), count = D * R;
    else if (name == "mixer.dt_proj.bias") target = f32(&L.dt_b), count = D;
    else if (name == "mixer.out_proj.weight") target = &L.out_w, count = d * D, keep = T;
    else if (name == "mixer.out_proj.bias") target = f32(&L.out_b), count = d;
  }
  MAMBA_REQUIRE(target != nullptr, "invalid_argument",
                "unknown tensor \"" + name + "\"" +
                    (layer >= 0 && layer < m.n_layers
                         ? std::string(" for ") + (m.is_attention(layer) ? "attention" : "Mamba") + " layer " +
                               std::to_string(layer)
                         : std::string()));
  if (total < 0) total = count;
  MAMBA_REQUIRE(static_cast<int64_t>(nbytes) == count * static_cast<int64_t>(dtype_bytes(src)), "invalid_argument",
                "tensor " + name + " (layer " + std::to_string(layer) + "): " + std::to_string(nbytes) +
                    " bytes, expected " + std::to_string(count) + " elements of " + dtype_name(src));
  const std::string key = name + "#" + std::to_string(layer);
  MAMBA_REQUIRE(!loaded_.count(key), "invalid_argument", "tensor " + key + " loaded twice");

  // Raw bytes go up as they are and are converted on the device: no float loops in JS.
  void* raw = nullptr;
  MAMBA_CUDA_CHECK(cudaMalloc(&raw, nbytes));
  try {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(raw, bytes, nbytes, cudaMemcpyHostToDevice, stream_));
    if (*target == nullptr) *target = dev_alloc(total * dtype_bytes(keep), &weight_bytes_);
    void* dst = static_cast<char*>(*target) + offset * static_cast<int64_t>(dtype_bytes(keep));
    if (is_A_log) {
      launch_convert(raw, src, dst, DType::F32, count, stream_);  // A_log as fp32, in place
      launch_prepare_A(static_cast<float*>(dst), static_cast<float*>(dst), count, stream_);
    } else {
      launch_convert(raw, src, dst, keep, count, stream_);
    }
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    cudaFree(raw);
    throw;
  }
  MAMBA_CUDA_CHECK(cudaFree(raw));
  loaded_[key] = true;
}

void Engine::finalize() {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  MAMBA_REQUIRE(embeddings_ != nullptr && norm_f_ != nullptr, "invalid_argument", "embeddings or norm_f not loaded");
  if (lm_head_ == nullptr) lm_head_ = embeddings_;  // tied head
  auto loaded = [&](const char* name, int layer) { return loaded_.count(std::string(name) + "#" + std::to_string(layer)) > 0; };
  const Layer* first_mamba = nullptr;
  for (int i = 0; i < dims_.n_layers; ++i) {
    const Layer& L = layers_[i];
    const std::string at = "layer " + std::to_string(i);
    if (L.attention) {
      MAMBA_REQUIRE(L.norm && L.o_w && loaded("mixer.q_proj.weight", i) && loaded("mixer.k_proj.weight", i) &&
                        loaded("mixer.v_proj.weight", i),
                    "invalid_argument", at + " (attention) is missing a required tensor");
      int biases = 0;
      for (const char* b : {"mixer.q_proj.bias", "mixer.k_proj.bias", "mixer.v_proj.bias", "mixer.o_proj.bias"}) biases += loaded(b, i);
      MAMBA_REQUIRE(biases == (dims_.attn_bias ? 4 : 0), "invalid_argument",
                    at + ": attention biases must be all four (attention_bias) or none");
      continue;
    }
    MAMBA_REQUIRE(L.norm && L.A2 && L.Dskip && L.conv_w && L.in_w && L.x_w && L.dt_w && L.dt_b && L.out_w,
                  "invalid_argument", at + " is missing a required tensor");
    // Optional tensors are all-or-none across the Mamba layers (checked by the TS loader as well).
    if (first_mamba == nullptr) first_mamba = &L;
    const Layer& L0 = *first_mamba;
    MAMBA_REQUIRE((L.in_b != nullptr) == (L0.in_b != nullptr) && (L.out_b != nullptr) == (L0.out_b != nullptr) &&
                      (L.conv_b != nullptr) == (L0.conv_b != nullptr),
                  "invalid_argument", at + ": optional biases differ from the first Mamba layer");
  }
  finalized_ = true;
}

int Engine::alloc_slot() {
  int slot = -1;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    require_open();
    MAMBA_REQUIRE(!free_slots_.empty(), "capacity",
                  "all " + std::to_string(opt_.max_slots) + " device state slots are in use");
    slot = free_slots_.back();
    free_slots_.pop_back();
    slot_used_[slot] = 1;
  }
  try {
    std::lock_guard<std::mutex> lock(mu_);
    MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
    const std::size_t conv = dims_.conv_floats(), ssm = dims_.ssm_floats(), ring = dims_.ring_floats();
    MAMBA_CUDA_CHECK(cudaMemsetAsync(conv_pool_ + slot * conv, 0, conv * 4, stream_));
    MAMBA_CUDA_CHECK(cudaMemsetAsync(ssm_pool_ + slot * ssm, 0, ssm * 4, stream_));
    if (ring > 0) {
      MAMBA_CUDA_CHECK(cudaMemsetAsync(ring_k_pool_ + slot * ring, 0, ring * 4, stream_));
      MAMBA_CUDA_CHECK(cudaMemsetAsync(ring_v_pool_ + slot * ring, 0, ring * 4, stream_));
    }
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    free_slot(slot);
    throw;
  }
  return slot;
}

void Engine::free_slot(int slot) {
  std::lock_guard<std::mutex> lock(slots_mu_);
  if (slot < 0 || slot >= opt_.max_slots || !slot_used_[slot]) return;  // idempotent: a double free is harmless
  slot_used_[slot] = 0;
  free_slots_.push_back(slot);
}

void Engine::copy_slot(int dst, int src) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  require_slot(dst);
  require_slot(src);
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const std::size_t conv = dims_.conv_floats(), ssm = dims_.ssm_floats(), ring = dims_.ring_floats();
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(conv_pool_ + dst * conv, conv_pool_ + src * conv, conv * 4, cudaMemcpyDeviceToDevice, stream_));
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(ssm_pool_ + dst * ssm, ssm_pool_ + src * ssm, ssm * 4, cudaMemcpyDeviceToDevice, stream_));
  if (ring > 0) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(ring_k_pool_ + dst * ring, ring_k_pool_ + src * ring, ring * 4, cudaMemcpyDeviceToDevice, stream_));
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(ring_v_pool_ + dst * ring, ring_v_pool_ + src * ring, ring * 4, cudaMemcpyDeviceToDevice, stream_));
  }
  MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Engine::import_slot(int slot, const float* conv_in, const float* ssm_in, const float* k_in, const float* v_in) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  require_slot(slot);
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const std::size_t conv = dims_.conv_floats(), ssm = dims_.ssm_floats(), ring = dims_.ring_floats();
  MAMBA_REQUIRE(ring == 0 || (k_in != nullptr && v_in != nullptr), "invalid_argument", "import: the state has no attention rings");
  // Through pinned memory: a pageable copy is staged by the driver anyway, more slowly. The
  // staging buffer holds a whole state: [conv | ssm | ring k | ring v].
  auto* stage = static_cast<float*>(host_staging_);
  std::memcpy(stage, conv_in, conv * 4);
  std::memcpy(stage + conv, ssm_in, ssm * 4);
  if (ring > 0) {
    std::memcpy(stage + conv + ssm, k_in, ring * 4);
    std::memcpy(stage + conv + ssm + ring, v_in, ring * 4);
  }
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(conv_pool_ + slot * conv, stage, conv * 4, cudaMemcpyHostToDevice, stream_));
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(ssm_pool_ + slot * ssm, stage + conv, ssm * 4, cudaMemcpyHostToDevice, stream_));
  if (ring > 0) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(ring_k_pool_ + slot * ring, stage + conv + ssm, ring * 4, cudaMemcpyHostToDevice, stream_));
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(ring_v_pool_ + slot * ring, stage + conv + ssm + ring, ring * 4, cudaMemcpyHostToDevice, stream_));
  }
  MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Engine::export_slot(int slot, float* conv_out, float* ssm_out, float* k_out, float* v_out) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  require_slot(slot);
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const std::size_t conv = dims_.conv_floats(), ssm = dims_.ssm_floats(), ring = dims_.ring_floats();
  MAMBA_REQUIRE(ring == 0 || (k_out != nullptr && v_out != nullptr), "invalid_argument", "export: no room for the attention rings");
  auto* stage = static_cast<float*>(host_staging_);
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(stage, conv_pool_ + slot * conv, conv * 4, cudaMemcpyDeviceToHost, stream_));
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(stage + conv, ssm_pool_ + slot * ssm, ssm * 4, cudaMemcpyDeviceToHost, stream_));
  if (ring > 0) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(stage + conv + ssm, ring_k_pool_ + slot * ring, ring * 4, cudaMemcpyDeviceToHost, stream_));
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(stage + conv + ssm + ring, ring_v_pool_ + slot * ring, ring * 4, cudaMemcpyDeviceToHost, stream_));
  }
  MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::memcpy(conv_out, stage, conv * 4);
  std::memcpy(ssm_out, stage + conv, ssm * 4);
  if (ring > 0) {
    std::memcpy(k_out, stage + conv + ssm, ring * 4);
    std::memcpy(v_out, stage + conv + ssm + ring, ring * 4);
  }
}

float* Engine::ring_of(float* pool, int slot, const Layer& w) const {
  const auto& m = dims_;
  return pool + static_cast<int64_t>(slot) * static_cast<int64_t>(m.ring_floats()) +
         static_cast<int64_t>(w.rank) * m.window * m.kv_heads * m.head_dim;
}

// One attention layer of a prefill chunk: L tokens of `slot` at positions start..start+L-1.
// pre_.h holds the normed input rows.
void Engine::attention_prefill(const Layer& w, int slot, int64_t start, int L) {
  const auto& m = dims_;
  const DType T = opt_.dtype;
  const int Q = m.heads * m.head_dim, KVW = m.kv_heads * m.head_dim, QKV = Q + 2 * KVW;
  linear_rows(gemm_, w.qkv_w, T, QKV, m.d_model, pre_.h, m.d_model, L, pre_.qkv, DType::F32, QKV, 0.f);

  QkvPrepParams pp;
  pp.rows = L, pp.heads = m.heads, pp.kv_heads = m.kv_heads, pp.head_dim = m.head_dim, pp.window = m.window;
  pp.qkv = pre_.qkv, pp.qkv_row_stride = QKV, pp.bias = w.qkv_b, pp.inv_freq = inv_freq_;
  pp.positions = nullptr, pp.start = start;  // no ring write: the attention below reads the old rows
  launch_qkv_prep(pp, stream_);

  float* ring_k = ring_of(ring_k_pool_, slot, w);
  float* ring_v = ring_of(ring_v_pool_, slot, w);
  AttnPrefillParams ap;
  ap.L = L, ap.start = start;
  ap.heads = m.heads, ap.kv_heads = m.kv_heads, ap.head_dim = m.head_dim, ap.window = m.window;
  ap.qkv = pre_.qkv, ap.qkv_row_stride = QKV;
  ap.ring_k = ring_k, ap.ring_v = ring_v;
  ap.out = pre_.att, ap.out_row_stride = Q;
  launch_window_attention_prefill(ap, T, stream_);

  RingWriteParams rp;
  rp.L = L, rp.start = start, rp.window = m.window, rp.kv_width = KVW;
  rp.k = pre_.qkv + Q, rp.v = pre_.qkv + Q + KVW, rp.row_stride = QKV;
  rp.ring_k = ring_k, rp.ring_v = ring_v;
  launch_ring_write(rp, stream_);

  // residual[t][j] += sum_c W_o[j][c] att[t][c]
  linear_rows(gemm_, w.o_w, T, m.d_model, Q, pre_.att, Q, L, pre_.residual, DType::F32, m.d_model, 1.f);
}

// One attention layer of a decode step over `rows` rows of dec_ (capturable: fixed buffers).
void Engine::attention_decode(const Layer& w, int rows) {
  const auto& m = dims_;
  const DType T = opt_.dtype;
  const int Q = m.heads * m.head_dim, KVW = m.kv_heads * m.head_dim, QKV = Q + 2 * KVW;
  const int64_t ring_slot_stride = static_cast<int64_t>(m.ring_floats());
  linear_rows(gemm_, w.qkv_w, T, QKV, m.d_model, dec_.h, m.d_model, rows, dec_.qkv, DType::F32, QKV, 0.f);

  QkvPrepParams pp;
  pp.rows = rows, pp.heads = m.heads, pp.kv_heads = m.kv_heads, pp.head_dim = m.head_dim, pp.window = m.window;
  pp.qkv = dec_.qkv, pp.qkv_row_stride = QKV, pp.bias = w.qkv_b, pp.inv_freq = inv_freq_;
  pp.positions = dec_.positions;
  pp.ring_k = ring_of(ring_k_pool_, 0, w), pp.ring_v = ring_of(ring_v_pool_, 0, w);
  pp.ring_slot_stride = ring_slot_stride, pp.slots = dec_.slots;
  launch_qkv_prep(pp, stream_);

  AttnDecodeParams ap;
  ap.batch = rows, ap.heads = m.heads, ap.kv_heads = m.kv_heads, ap.head_dim = m.head_dim, ap.window = m.window;
  ap.slots = dec_.slots, ap.positions = dec_.positions;
  ap.q = dec_.qkv, ap.q_row_stride = QKV;
  ap.ring_k = pp.ring_k, ap.ring_v = pp.ring_v, ap.ring_slot_stride = ring_slot_stride;
  ap.out = dec_.att, ap.out_row_stride = Q;
  ap.splits = attn_splits_, ap.split_keys = attn_split_keys_, ap.partial = dec_.partial;
  launch_window_attention_decode(ap, T, stream_);

  linear_rows(gemm_, w.o_w, T, m.d_model, Q, dec_.att, Q, rows, dec_.residual, DType::F32, m.d_model, 1.f);
}

// norm_f over `rows` residual rows (adding the last layer's out_proj bias first, if any), then
// the lm_head product into logits_dev [rows][V].
void Engine::lm_head(const float* residual_rows, int rows, const float* add_bias, void* hf, float* logits_dev) {
  const auto& m = dims_;
  launch_rmsnorm(const_cast<float*>(residual_rows), add_bias, norm_f_, hf, m.d_model, rows, m.d_model, m.eps,
                 opt_.dtype, stream_);
  linear_rows(gemm_, lm_head_, opt_.dtype, m.vocab_rows, m.d_model, hf, m.d_model, rows, logits_dev, DType::F32,
              m.vocab_rows, 0.f);
}

void Engine::prefill(int slot, int64_t position, const int32_t* tokens, int n, bool all_logits, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  MAMBA_REQUIRE(finalized_, "invalid_argument", "engine weights are not finalized");
  require_slot(slot);
  MAMBA_REQUIRE(position >= 0, "invalid_argument", "prefill: negative position");
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  if (n <= 0) return;

  const auto& m = dims_;
  const int D = m.d_inner, N = m.d_state, K = m.d_conv, R = m.dt_rank, d = m.d_model, V = m.vocab_rows;
  const DType T = opt_.dtype;
  const std::size_t tb = dtype_bytes(T);
  const int64_t conv_slot_stride = static_cast<int64_t>(m.conv_floats());
  const int64_t ssm_slot_stride = static_cast<int64_t>(m.ssm_floats());
  auto* stage = static_cast<int32_t*>(host_staging_);
  stage[0] = slot;
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(pre_.slots, stage, 4, cudaMemcpyHostToDevice, stream_));
  MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the staging buffer is reused below
  const float* last_out_b = layers_.back().out_b;

  for (int off = 0; off < n; off += opt_.prefill_chunk) {
    const int L = std::min(opt_.prefill_chunk, n - off);
    const int64_t Lp = round_up(L, kScanAlign);
    std::memcpy(stage, tokens + off, static_cast<std::size_t>(L) * 4);
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(pre_.tokens, stage, static_cast<std::size_t>(L) * 4, cudaMemcpyHostToDevice, stream_));
    launch_embed(pre_.tokens, L, embeddings_, d, pre_.residual, T, stream_);

    for (int li = 0; li < m.n_layers; ++li) {
      const Layer& w = layers_[li];
      const float* prev_out_b = li > 0 ? layers_[li - 1].out_b : nullptr;
      launch_rmsnorm(pre_.residual, prev_out_b, w.norm, pre_.h, d, L, d, m.eps, T, stream_);
      if (w.attention) {
        attention_prefill(w, slot, position + off, L);
        continue;
      }
      // xz[j][t] = sum_k W_in[j][k] h[t][k]: column-major C (Lp x 2D) = h(cm)^T · W_in(cm).
      gemm(gemm_, Op::T, Op::N, L, 2 * D, d, pre_.h, T, d, w.in_w, T, d, pre_.xz, T, Lp, 0.f);
      if (w.in_b != nullptr) launch_add_bias(pre_.xz, 2 * D, L, Lp, w.in_b, true, T, stream_);

      ConvParams cp;
      cp.batch = 1, cp.dim = D, cp.seqlen = L, cp.width = K;
      cp.x = pre_.xz, cp.x_batch_stride = 0, cp.x_dim_stride = Lp;
      cp.weight = w.conv_w, cp.bias = w.conv_b;
      cp.out = pre_.xc, cp.out_batch_stride = 0, cp.out_dim_stride = Lp;
      cp.state = conv_pool_ + static_cast<int64_t>(w.rank) * D * K, cp.state_slot_stride = conv_slot_stride;
      cp.slots = pre_.slots;
      launch_conv1d_prefill(cp, T, stream_);

      // xdbl[j][t] = sum_c W_x[j][c] xc[c][t]: C(cm, Lp x (R+2N)) = xc(cm) · W_x(cm).
      gemm(gemm_, Op::N, Op::N, L, R + 2 * N, D, pre_.xc, T, Lp, w.x_w, T, D, pre_.xdbl, DType::F32, Lp, 0.f);
      // dt[c][t] = sum_r W_dt[c][r] xdbl[r][t]: C(cm, Lp x D) = xdbl(cm) · W_dt(cm).
      gemm(gemm_, Op::N, Op::N, L, D, R, pre_.xdbl, DType::F32, Lp, w.dt_w, DType::F32, R, pre_.dt, DType::F32, Lp, 0.f);

      ScanParams sp;
      sp.batch = 1, sp.dim = D, sp.seqlen = L, sp.dstate = N;
      sp.u = pre_.xc, sp.u_dim_stride = Lp;
      sp.delta = pre_.dt, sp.delta_dim_stride = Lp;
      sp.A2 = w.A2;
      sp.B = pre_.xdbl + static_cast<int64_t>(R) * Lp, sp.B_state_stride = Lp;
      sp.C = pre_.xdbl + static_cast<int64_t>(R + N) * Lp, sp.C_state_stride = Lp;
      sp.D = w.Dskip, sp.delta_bias = w.dt_b;
      sp.z = static_cast<const char*>(pre_.xz) + static_cast<int64_t>(D) * Lp * tb, sp.z_dim_stride = Lp;
      sp.out = pre_.y, sp.out_dim_stride = Lp;
      sp.state = ssm_pool_ + static_cast<int64_t>(w.rank) * D * N, sp.state_slot_stride = ssm_slot_stride;
      sp.slots = pre_.slots;
      launch_selective_scan(sp, T, opt_.scan_channels, stream_);

      // residual[t][j] += sum_c W_out[j][c] y[c][t]: C(cm, d x L) = W_out(cm)^T · y(cm)^T + C.
      gemm(gemm_, Op::T, Op::T, d, L, D, w.out_w, T, D, pre_.y, T, Lp, pre_.residual, DType::F32, d, 1.f);
    }

    const bool last_chunk = off + L >= n;
    if (all_logits) {
      for (int r0 = 0; r0 < L; r0 += opt_.max_logit_rows) {
        const int rows = std::min(opt_.max_logit_rows, L - r0);
        lm_head(pre_.residual + static_cast<int64_t>(r0) * d, rows, last_out_b, pre_.h, logits_);
        MAMBA_CUDA_CHECK(cudaMemcpyAsync(host_staging_, logits_, static_cast<std::size_t>(rows) * V * 4,
                                         cudaMemcpyDeviceToHost, stream_));
        MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
        std::memcpy(logits + static_cast<int64_t>(off + r0) * V, host_staging_, static_cast<std::size_t>(rows) * V * 4);
      }
    } else if (last_chunk) {
      lm_head(pre_.residual + static_cast<int64_t>(L - 1) * d, 1, last_out_b, pre_.h, logits_);
      MAMBA_CUDA_CHECK(cudaMemcpyAsync(host_staging_, logits_, static_cast<std::size_t>(V) * 4, cudaMemcpyDeviceToHost, stream_));
      MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::memcpy(logits, host_staging_, static_cast<std::size_t>(V) * 4);
    } else {
      MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the token staging is reused next chunk
    }
  }
}

// The decode step over `rows` token-major rows of dec_ (slots and tokens already on the device).
// Everything here is capturable: no host synchronization, no allocation, fixed addresses.
void Engine::run_decode_body(int rows) {
  const auto& m = dims_;
  const int D = m.d_inner, N = m.d_state, K = m.d_conv, R = m.dt_rank, d = m.d_model;
  const DType T = opt_.dtype;
  const std::size_t tb = dtype_bytes(T);
  const int64_t conv_slot_stride = static_cast<int64_t>(m.conv_floats());
  const int64_t ssm_slot_stride = static_cast<int64_t>(m.ssm_floats());

  launch_embed(dec_.tokens, rows, embeddings_, d, dec_.residual, T, stream_);
  for (int li = 0; li < m.n_layers; ++li) {
    const Layer& w = layers_[li];
    const float* prev_out_b = li > 0 ? layers_[li - 1].out_b : nullptr;
    launch_rmsnorm(dec_.residual, prev_out_b, w.norm, dec_.h, d, rows, d, m.eps, T, stream_);
    if (w.attention) {
      attention_decode(w, rows);
      continue;
    }
    linear_rows(gemm_, w.in_w, T, 2 * D, d, dec_.h, d, rows, dec_.xz, T, 2 * D, 0.f);
    if (w.in_b != nullptr) launch_add_bias(dec_.xz, rows, 2 * D, 2 * D, w.in_b, false, T, stream_);

    ConvStepParams cp;
    cp.batch = rows, cp.dim = D, cp.width = K;
    cp.x = dec_.xz, cp.x_row_stride = 2 * D;
    cp.weight = w.conv_w, cp.bias = w.conv_b;
    cp.out = dec_.xc, cp.out_row_stride = D;
    cp.state = conv_pool_ + static_cast<int64_t>(w.rank) * D * K, cp.state_slot_stride = conv_slot_stride;
    cp.slots = dec_.slots;
    launch_conv1d_step(cp, T, stream_);

    linear_rows(gemm_, w.x_w, T, R + 2 * N, D, dec_.xc, D, rows, dec_.xdbl, DType::F32, R + 2 * N, 0.f);

    SsmStepParams sp;
    sp.batch = rows, sp.dim = D, sp.dstate = N, sp.dt_rank = R;
    sp.x = dec_.xc, sp.x_row_stride = D;
    sp.xdbl = dec_.xdbl, sp.xdbl_row_stride = R + 2 * N;
    sp.dt_weight = w.dt_w, sp.dt_bias = w.dt_b, sp.A2 = w.A2, sp.D = w.Dskip;
    sp.z = static_cast<const char*>(dec_.xz) + static_cast<int64_t>(D) * tb, sp.z_row_stride = 2 * D;
    sp.out = dec_.y, sp.out_row_stride = D;
    sp.state = ssm_pool_ + static_cast<int64_t>(w.rank) * D * N, sp.state_slot_stride = ssm_slot_stride;
    sp.slots = dec_.slots;
    launch_ssm_step(sp, T, stream_);

    linear_rows(gemm_, w.out_w, T, d, D, dec_.y, D, rows, dec_.residual, DType::F32, d, 1.f);
  }
  lm_head(dec_.residual, rows, layers_.back().out_b, dec_.h, logits_);
}

int Engine::bucket_for(int batch) const {
  int b = 1;
  while (b < batch) b <<= 1;
  return std::min(b, opt_.max_batch);
}

void Engine::launch_decode(int bucket) {
  if (!opt_.use_graphs) {
    run_decode_body(bucket);
    return;
  }
  auto it = graphs_.find(bucket);
  if (it == graphs_.end()) {
    // Captured on first use of a bucket: the kernels read slots and tokens from fixed device
    // buffers, so one graph serves every batch of this size. ThreadLocal mode: only this
    // thread's calls are checked for capture safety; other engines' threads are unaffected.
    cudaGraph_t graph = nullptr;
    MAMBA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      run_decode_body(bucket);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      throw;
    }
    MAMBA_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    MAMBA_CUDA_CHECK(err);
    it = graphs_.emplace(bucket, exec).first;
  }
  MAMBA_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void Engine::stage_decode_inputs(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch,
                                 int bucket) {
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    std::vector<char> seen(opt_.max_slots, 0);
    for (int i = 0; i < batch; ++i) {
      const int s = slots[i];
      MAMBA_REQUIRE(s >= 0 && s < opt_.max_slots && slot_used_[s], "invalid_argument",
                    "decode row " + std::to_string(i) + ": slot " + std::to_string(s) + " is not allocated");
      MAMBA_REQUIRE(!seen[s], "invalid_argument", "decode: slot " + std::to_string(s) + " appears twice in one batch");
      MAMBA_REQUIRE(positions[i] >= 0, "invalid_argument", "decode row " + std::to_string(i) + ": negative position");
      seen[s] = 1;
    }
  }
  // [slots | tokens] as int32, then the positions as int64 (8-byte aligned: 8 * bucket bytes in).
  auto* stage = static_cast<int32_t*>(host_staging_);
  auto* stage_pos = reinterpret_cast<int64_t*>(stage + 2 * bucket);
  for (int i = 0; i < bucket; ++i) {
    stage[i] = i < batch ? slots[i] : -1;  // padding rows: slot -1 (touch no state), token 0
    stage[bucket + i] = i < batch ? tokens[i] : 0;
    stage_pos[i] = i < batch ? positions[i] : 0;
  }
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(dec_.slots, stage, bucket * 4, cudaMemcpyHostToDevice, stream_));
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(dec_.tokens, stage + bucket, bucket * 4, cudaMemcpyHostToDevice, stream_));
  MAMBA_CUDA_CHECK(cudaMemcpyAsync(dec_.positions, stage_pos, bucket * 8, cudaMemcpyHostToDevice, stream_));
}

void Engine::decode(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch, float* logits,
                    int32_t* argmax) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  MAMBA_REQUIRE(finalized_, "invalid_argument", "engine weights are not finalized");
  MAMBA_REQUIRE(batch >= 0 && batch <= opt_.max_batch, "invalid_argument",
                "decode batch " + std::to_string(batch) + " exceeds max_batch " + std::to_string(opt_.max_batch));
  if (batch == 0) return;
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const int bucket = bucket_for(batch);
  const int V = dims_.vocab_rows;
  stage_decode_inputs(slots, positions, tokens, batch, bucket);
  launch_decode(bucket);
  if (argmax != nullptr) launch_argmax(logits_, batch, V, argmax_, stream_);
  MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // staging inputs are free again
  if (logits != nullptr) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(host_staging_, logits_, static_cast<std::size_t>(batch) * V * 4,
                                     cudaMemcpyDeviceToHost, stream_));
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(logits, host_staging_, static_cast<std::size_t>(batch) * V * 4);
  }
  if (argmax != nullptr) {
    MAMBA_CUDA_CHECK(cudaMemcpyAsync(host_staging_, argmax_, static_cast<std::size_t>(batch) * 4, cudaMemcpyDeviceToHost, stream_));
    MAMBA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(argmax, host_staging_, static_cast<std::size_t>(batch) * 4);
  }
}

double Engine::time_decode(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch, int iters) {
  std::lock_guard<std::mutex> lock(mu_);
  require_open();
  MAMBA_REQUIRE(finalized_, "invalid_argument", "engine weights are not finalized");
  MAMBA_REQUIRE(batch >= 1 && batch <= opt_.max_batch && iters >= 1, "invalid_argument", "time_decode: bad batch or iters");
  MAMBA_CUDA_CHECK(cudaSetDevice(opt_.device));
  const int bucket = bucket_for(batch);
  stage_decode_inputs(slots, positions, tokens, batch, bucket);
  for (int i = 0; i < 3; ++i) launch_decode(bucket);  // warm-up; captures the graph
  cudaEvent_t start = nullptr, stop = nullptr;
  MAMBA_CUDA_CHECK(cudaEventCreate(&start));
  MAMBA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(iters);
  try {
    for (int i = 0; i < iters; ++i) {
      MAMBA_CUDA_CHECK(cudaEventRecord(start, stream_));
      launch_decode(bucket);
      MAMBA_CUDA_CHECK(cudaEventRecord(stop, stream_));
      MAMBA_CUDA_CHECK(cudaEventSynchronize(stop));
      MAMBA_CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(ms.begin(), ms.begin() + iters / 2, ms.end());
  return ms[iters / 2];
}

// No lock: called from the JS thread, it must not wait behind a long prefill; the sizes it
// reads only change while weights load, before anyone asks.
EngineInfo Engine::info() const {
  EngineInfo out;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, opt_.device) == cudaSuccess) {
    out.device_name = prop.name;
    out.cc_major = prop.major;
    out.cc_minor = prop.minor;
  }
  out.weight_bytes = weight_bytes_;
  out.state_pool_bytes = state_bytes_;
  out.workspace_bytes = workspace_bytes_;
  out.gemm_backend = gemm_backend_version();
  return out;
}

void Engine::close() {
  std::lock_guard<std::mutex> lock(mu_);  // waits for the operation in flight, if any
  if (closed_) return;
  cudaSetDevice(opt_.device);
  {
    std::lock_guard<std::mutex> slots_lock(slots_mu_);
    closed_ = true;
  }
  release();
}

}  // namespace mamba
