// One Mamba model (or attention hybrid) resident on one GPU: its weights, a pool of
// session-state slots, the workspaces of prefill and decode, and the CUDA graphs of decode. All device work of an engine
// runs on its one stream, one operation at a time (a mutex), so that operations arriving from
// several libuv worker threads never interleave on shared workspaces.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "gemm.h"

namespace mamba {

struct ModelDims {
  int d_model = 0, d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0, n_layers = 0, vocab_rows = 0;
  float eps = 1e-5f;
  // A hybrid's sliding-window attention layers; layer_is_attention is empty for a pure Mamba
  // model. The query at position t attends to positions t-window < j <= t; query head h reads
  // key/value head h / (heads / kv_heads).
  std::vector<uint8_t> layer_is_attention;  // [n_layers]: 1 = attention, 0 = Mamba
  int window = 0, heads = 0, kv_heads = 0, head_dim = 0;
  bool attn_bias = false;    // q/k/v/o projections carry biases
  double rope_theta = 0;     // RoPE base; 0 = no positional encoding

  bool is_attention(int layer) const { return !layer_is_attention.empty() && layer_is_attention[layer] != 0; }
  int attention_layers() const {
    int n = 0;
    for (uint8_t a : layer_is_attention) n += a != 0;
    return n;
  }
  int mamba_layers() const { return n_layers - attention_layers(); }
  // Floats of one session's state, in the `.mstate` layouts (host-state.ts): conv [M][D][K],
  // ssm [M][D][N] over the M Mamba layers, each ring [A][window][kv_heads][head_dim].
  std::size_t conv_floats() const { return static_cast<std::size_t>(mamba_layers()) * d_inner * d_conv; }
  std::size_t ssm_floats() const { return static_cast<std::size_t>(mamba_layers()) * d_inner * d_state; }
  std::size_t ring_floats() const {
    return static_cast<std::size_t>(attention_layers()) * window * kv_heads * head_dim;
  }
};

struct EngineOptions {
  DType dtype = DType::BF16;  // weights and activations; states are always fp32
  int max_slots = 64;         // sessions whose state can live on the device at once
  int max_batch = 64;         // largest decode batch in one launch
  int prefill_chunk = 2048;   // longer prompts are prefilled in pieces (the state carries)
  int max_logit_rows = 256;   // rows of logits computed per lm_head call in all-logits prefill
  bool use_graphs = true;     // decode through CUDA graphs, one per batch-size bucket
  int scan_channels = 0;      // channels per block of the prefill scan; 0 = default
  // Decode attention cuts a window into ranges of this many keys, one block each, merged
  // after (flash-decoding); 0 = one block per (row, head) whatever the window.
  int attn_split_keys = 256;
  int device = 0;
};

struct EngineInfo {
  std::string device_name;
  int cc_major = 0, cc_minor = 0;
  std::size_t weight_bytes = 0, state_pool_bytes = 0, workspace_bytes = 0;
  std::string gemm_backend;
};

class Engine {
 public:
  Engine(const ModelDims& dims, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads one checkpoint tensor (raw little-endian bytes in `src` type), converting it to the
  // type the engine keeps it in. name: a per-layer name relative to "backbone.layers.{layer}."
  // (e.g. "mixer.in_proj.weight") or "embeddings", "norm_f", "lm_head" with layer = -1.
  void set_tensor(const std::string& name, int layer, const void* bytes, std::size_t nbytes, DType src);
  // Checks that every required tensor arrived; ties lm_head to the embeddings if it did not.
  void finalize();

  int alloc_slot();  // a zeroed slot; throws NativeError("capacity") when the pool is full
  void free_slot(int slot);
  void copy_slot(int dst, int src);
  // fp32 host memory in the ModelDims layouts: conv and ssm over the Mamba layers, the key
  // and value rings over the attention layers (null when the model has none).
  void import_slot(int slot, const float* conv, const float* ssm, const float* attn_k, const float* attn_v);
  void export_slot(int slot, float* conv, float* ssm, float* attn_k, float* attn_v);

  // Absorbs n tokens into the slot's state; `position` is the number of tokens the state has
  // absorbed before (the caller keeps it: RoPE angles and ring rows depend on it). logits:
  // [all_logits ? n : 1][vocab_rows].
  void prefill(int slot, int64_t position, const int32_t* tokens, int n, bool all_logits, float* logits);
  // One token for each of `batch` distinct slots, row i at positions[i]. logits:
  // [batch][vocab_rows] or null; argmax: [batch] or null (greedy tokens computed on the device).
  void decode(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch, float* logits,
              int32_t* argmax);
  // Device time of one decode step at this batch (graph replay if enabled), median of `iters`
  // timed steps after warm-up; advances the given slots' states (every step at the same
  // positions: the states are for timing only afterwards). For the benchmarks.
  double time_decode(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch, int iters);

  EngineInfo info() const;
  void close();

  const ModelDims& dims() const { return dims_; }
  const EngineOptions& options() const { return opt_; }

 private:
  struct Layer {
    bool attention = false;
    int rank = 0;  // index among the layers of its kind: its row in conv/ssm state, or its ring
    float* norm = nullptr;
    float* A2 = nullptr;
    float* Dskip = nullptr;
    float* conv_w = nullptr;
    float* conv_b = nullptr;
    void* in_w = nullptr;
    float* in_b = nullptr;
    void* x_w = nullptr;
    float* dt_w = nullptr;
    float* dt_b = nullptr;
    void* out_w = nullptr;
    float* out_b = nullptr;  // out_proj.bias, or an attention layer's o_proj.bias
    // Attention: q, k and v weights stacked into one [Q + 2K][d] matrix (one GEMM), their
    // biases likewise [Q + 2K] (added by qkv_prep), and o_proj [d][Q].
    void* qkv_w = nullptr;
    float* qkv_b = nullptr;
    void* o_w = nullptr;
  };
  struct Workspace {  // prefill: channel-major [rows][chunk]; decode: token-major [max_batch][cols]
    float* residual = nullptr;
    void* h = nullptr;
    void* xz = nullptr;
    void* xc = nullptr;
    float* xdbl = nullptr;
    float* dt = nullptr;
    void* y = nullptr;
    int* tokens = nullptr;
    int* slots = nullptr;
    // Attention layers (hybrids only): q | k | v rows (fp32), the heads' outputs (storage
    // type, o_proj's input), and in decode the rows' positions and the split partials.
    float* qkv = nullptr;
    void* att = nullptr;
    int64_t* positions = nullptr;
    float* partial = nullptr;
  };

  void* dev_alloc(std::size_t bytes, std::size_t* counter);
  void require_open() const;
  void require_slot(int slot) const;
  void run_decode_body(int rows);
  void launch_decode(int bucket);
  int bucket_for(int batch) const;
  void stage_decode_inputs(const int32_t* slots, const int64_t* positions, const int32_t* tokens, int batch,
                           int bucket);
  void attention_prefill(const Layer& w, int slot, int64_t start, int L);
  void attention_decode(const Layer& w, int rows);
  float* ring_of(float* pool, int slot, const Layer& w) const;
  void lm_head(const float* residual_rows, int rows, const float* add_bias, void* hf, float* logits_dev);
  void release();

  ModelDims dims_;
  EngineOptions opt_;
  bool closed_ = false;
  bool finalized_ = false;
  mutable std::mutex mu_;       // one device operation at a time
  mutable std::mutex slots_mu_; // the free list (touched from the JS thread too)

  cudaStream_t stream_ = nullptr;
  GemmContext* gemm_ = nullptr;
  void* gemm_workspace_ = nullptr;
  std::vector<void*> allocations_;
  std::size_t weight_bytes_ = 0, state_bytes_ = 0, workspace_bytes_ = 0;

  std::vector<Layer> layers_;
  void* embeddings_ = nullptr;
  void* lm_head_ = nullptr;  // == embeddings_ when tied
  float* norm_f_ = nullptr;
  std::map<std::string, bool> loaded_;

  float* conv_pool_ = nullptr;  // [max_slots][mamba layers][d_inner][d_conv]
  float* ssm_pool_ = nullptr;   // [max_slots][mamba layers][d_inner][d_state]
  float* ring_k_pool_ = nullptr;  // [max_slots][attention layers][window][kv_heads][head_dim]
  float* ring_v_pool_ = nullptr;
  double* inv_freq_ = nullptr;    // [head_dim / 2] RoPE frequencies in float64; null = no RoPE
  int attn_splits_ = 1, attn_split_keys_ = 0;
  std::vector<int> free_slots_;
  std::vector<char> slot_used_;

  Workspace pre_{}, dec_{};
  float* logits_ = nullptr;  // [max(max_logit_rows, max_batch)][vocab_rows]
  int* argmax_ = nullptr;    // [max_batch]
  void* host_staging_ = nullptr;  // pinned: token/slot uploads, logits and state downloads
  std::size_t host_staging_bytes_ = 0;

  std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace mamba
