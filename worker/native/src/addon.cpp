// The Node-API surface of the addon (typed on the TypeScript side in
// worker/engine/cuda/cuda-addon.ts; keep the two in step and bump kAbi when they change).
//
// Every call that touches the GPU runs as N-API async work on a libuv thread and returns a
// Promise: the worker's event loop renews queue locks and must never wait on the device.
// Buffers handed in (weights, tokens, output arrays) are kept referenced until the work is
// done, and their lengths are checked here, before any native code writes into them.
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"
#include "gemm.h"

namespace {

using mamba::DType;
using mamba::NativeError;

// Bumped whenever the JS-visible surface changes; cuda-addon.ts refuses a stale build.
// 2: attention hybrids (dims.hybrid, rings in import/export, positions on prefill/decode).
constexpr int kAbi = 2;

class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Result = std::function<Napi::Value(Napi::Env)>;

  Job(Napi::Env env, Work work, Result result = nullptr)
      : Napi::AsyncWorker(env, "mamba-native"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        result_(std::move(result)) {}

  void Keep(const Napi::Value& v) {
    if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();  // the worker deletes itself after OnOK/OnError
    return p;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (const NativeError& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "internal";
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(result_ ? result_(Env()) : Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    err.Value().Set("code", Napi::String::New(Env(), code_));
    deferred_.Reject(err.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Result result_;
  std::string code_ = "internal";
  std::vector<Napi::ObjectReference> refs_;
};

[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code));
  throw err;
}

DType parse_dtype(Napi::Env env, const Napi::Value& v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  throw_js(env, "invalid_argument", "dtype must be \"F32\", \"F16\" or \"BF16\"");
}

int get_int(const Napi::Object& o, const char* key, int fallback, bool required = false) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    if (required) throw_js(o.Env(), "invalid_argument", std::string("missing integer field \"") + key + "\"");
    return fallback;
  }
  if (!v.IsNumber()) throw_js(o.Env(), "invalid_argument", std::string("field \"") + key + "\" must be a number");
  return v.As<Napi::Number>().Int32Value();
}

template <typename T, napi_typedarray_type kType>
T* typed_data(const Napi::Value& v, std::size_t min_length, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType) {
    throw_js(v.Env(), "invalid_argument", std::string(what) + " has the wrong array type");
  }
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  if (arr.ElementLength() < min_length) {
    throw_js(v.Env(), "invalid_argument",
             std::string(what) + " holds " + std::to_string(arr.ElementLength()) + " elements, needs " +
                 std::to_string(min_length));
  }
  return arr.Data();
}

// Positions arrive as a Float64Array (a JS number holds every integer up to 2^53 exactly);
// each must be a non-negative integer. Copied: the array may change once the call returns.
std::shared_ptr<std::vector<int64_t>> positions_of(const Napi::Value& v, std::size_t n) {
  const double* data = typed_data<double, napi_float64_array>(v, n, "positions");
  auto out = std::make_shared<std::vector<int64_t>>(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double p = data[i];
    if (!(p >= 0 && p <= 9007199254740992.0 && p == static_cast<double>(static_cast<int64_t>(p)))) {
      throw_js(v.Env(), "invalid_argument", "position " + std::to_string(p) + " is not a non-negative integer");
    }
    (*out)[i] = static_cast<int64_t>(p);
  }
  return out;
}

int64_t position_of(const Napi::Value& v) {
  const double p = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(p >= 0 && p <= 9007199254740992.0 && p == static_cast<double>(static_cast<int64_t>(p)))) {
    throw_js(v.Env(), "invalid_argument", "position must be a non-negative integer");
  }
  return static_cast<int64_t>(p);
}

// dims.hybrid: { layerTypes: ("mamba" | "sliding_attention")[], window, numHeads, numKvHeads,
// headDim, bias, ropeTheta: number | null }; absent for a pure Mamba model.
void parse_hybrid(const Napi::Object& d, mamba::ModelDims& dims) {
  Napi::Env env = d.Env();
  Napi::Value hv = d.Get("hybrid");
  if (hv.IsUndefined() || hv.IsNull()) return;
  if (!hv.IsObject()) throw_js(env, "invalid_argument", "dims.hybrid must be an object");
  Napi::Object h = hv.As<Napi::Object>();
  Napi::Value types = h.Get("layerTypes");
  if (!types.IsArray()) throw_js(env, "invalid_argument", "dims.hybrid.layerTypes must be an array");
  Napi::Array arr = types.As<Napi::Array>();
  if (static_cast<int>(arr.Length()) != dims.n_layers) {
    throw_js(env, "invalid_argument", "dims.hybrid.layerTypes must have one entry per layer");
  }
  dims.layer_is_attention.resize(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value t = arr.Get(i);
    const std::string s = t.IsString() ? t.As<Napi::String>().Utf8Value() : "";
    if (s != "mamba" && s != "sliding_attention") {
      throw_js(env, "invalid_argument", "dims.hybrid.layerTypes[" + std::to_string(i) + "] must be \"mamba\" or \"sliding_attention\"");
    }
    dims.layer_is_attention[i] = s == "sliding_attention" ? 1 : 0;
  }
  dims.window = get_int(h, "window", 0, true);
  dims.heads = get_int(h, "numHeads", 0, true);
  dims.kv_heads = get_int(h, "numKvHeads", 0, true);
  dims.head_dim = get_int(h, "headDim", 0, true);
  Napi::Value bias = h.Get("bias");
  if (!bias.IsBoolean()) throw_js(env, "invalid_argument", "dims.hybrid.bias must be a boolean");
  dims.attn_bias = bias.As<Napi::Boolean>().Value();
  Napi::Value theta = h.Get("ropeTheta");
  if (theta.IsNull() || theta.IsUndefined()) {
    dims.rope_theta = 0;
  } else if (theta.IsNumber() && theta.As<Napi::Number>().DoubleValue() > 0) {
    dims.rope_theta = theta.As<Napi::Number>().DoubleValue();
  } else {
    throw_js(env, "invalid_argument", "dims.hybrid.ropeTheta must be a positive number or null");
  }
}

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  out.Set("runtimeVersion", runtime);
  out.Set("driverVersion", driver);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  Napi::Array devices = Napi::Array::New(env);
  if (err != cudaSuccess) {
    out.Set("ok", false);
    out.Set("errorName", cudaGetErrorName(err));
    out.Set("error", cudaGetErrorString(err));
    cudaGetLastError();  // clear the sticky-free error so a later probe starts clean
  } else {
    out.Set("ok", count > 0);
    for (int i = 0; i < count; ++i) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
      Napi::Object d = Napi::Object::New(env);
      d.Set("index", i);
      d.Set("name", prop.name);
      d.Set("major", prop.major);
      d.Set("minor", prop.minor);
      d.Set("totalMemory", static_cast<double>(prop.totalGlobalMem));
      d.Set("multiprocessors", prop.multiProcessorCount);
      devices.Set(devices.Length(), d);
    }
  }
  out.Set("devices", devices);
  return out;
}

Napi::Value GemmBackend(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), mamba::gemm_backend_version());
}

class NativeEngine : public Napi::ObjectWrap<NativeEngine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {
                           InstanceMethod<&NativeEngine::Init>("init"),
                           InstanceMethod<&NativeEngine::SetTensor>("setTensor"),
                           InstanceMethod<&NativeEngine::Finalize>("finalize"),
                           InstanceMethod<&NativeEngine::AllocSlot>("allocSlot"),
                           InstanceMethod<&NativeEngine::FreeSlot>("freeSlot"),
                           InstanceMethod<&NativeEngine::CopySlot>("copySlot"),
                           InstanceMethod<&NativeEngine::ImportSlot>("importSlot"),
                           InstanceMethod<&NativeEngine::ExportSlot>("exportSlot"),
                           InstanceMethod<&NativeEngine::Prefill>("prefill"),
                           InstanceMethod<&NativeEngine::Decode>("decode"),
                           InstanceMethod<&NativeEngine::TimeDecode>("timeDecode"),
                           InstanceMethod<&NativeEngine::Info>("info"),
                           InstanceMethod<&NativeEngine::Close>("close"),
                       });
  }

  // new NativeEngine(dims, options): records the configuration only; init() allocates.
  explicit NativeEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEngine>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      throw_js(env, "invalid_argument", "new NativeEngine(dims, options) needs two objects");
    }
    Napi::Object d = info[0].As<Napi::Object>();
    dims_.d_model = get_int(d, "dModel", 0, true);
    dims_.d_inner = get_int(d, "dInner", 0, true);
    dims_.d_state = get_int(d, "dState", 0, true);
    dims_.d_conv = get_int(d, "dConv", 0, true);
    dims_.dt_rank = get_int(d, "dtRank", 0, true);
    dims_.n_layers = get_int(d, "nLayers", 0, true);
    dims_.vocab_rows = get_int(d, "vocabRows", 0, true);
    Napi::Value eps = d.Get("eps");
    if (!eps.IsNumber()) throw_js(env, "invalid_argument", "missing number field \"eps\"");
    dims_.eps = eps.As<Napi::Number>().FloatValue();
    parse_hybrid(d, dims_);

    Napi::Object o = info[1].As<Napi::Object>();
    opt_.dtype = parse_dtype(env, o.Get("dtype"));
    opt_.max_slots = get_int(o, "maxSlots", opt_.max_slots);
    opt_.max_batch = get_int(o, "maxBatch", opt_.max_batch);
    opt_.prefill_chunk = get_int(o, "prefillChunk", opt_.prefill_chunk);
    opt_.max_logit_rows = get_int(o, "maxLogitRows", opt_.max_logit_rows);
    opt_.scan_channels = get_int(o, "scanChannels", opt_.scan_channels);
    opt_.attn_split_keys = get_int(o, "attnSplitKeys", opt_.attn_split_keys);
    opt_.device = get_int(o, "device", opt_.device);
    Napi::Value graphs = o.Get("useGraphs");
    if (graphs.IsBoolean()) opt_.use_graphs = graphs.As<Napi::Boolean>().Value();
  }

 private:
  mamba::Engine& engine(Napi::Env env) {
    if (!engine_) throw_js(env, "engine_closed", "native engine is not initialized or was closed");
    return *engine_;
  }

  Napi::Value Init(const Napi::CallbackInfo& info) {
    if (engine_ || init_started_) throw_js(info.Env(), "invalid_argument", "init() was already called");
    init_started_ = true;
    auto holder = std::make_shared<std::unique_ptr<mamba::Engine>>();
    const mamba::ModelDims dims = dims_;
    const mamba::EngineOptions opt = opt_;
    auto* job = new Job(
        info.Env(), [holder, dims, opt] { *holder = std::make_unique<mamba::Engine>(dims, opt); },
        [this, holder](Napi::Env env) {
          engine_ = std::move(*holder);
          return env.Undefined();
        });
    job->Keep(info.This());
    return job->Start();
  }

  // setTensor(name, layer, bytes: Uint8Array, dtype)
  Napi::Value SetTensor(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    mamba::Engine& e = engine(env);
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber()) {
      throw_js(env, "invalid_argument", "setTensor(name, layer, bytes, dtype)");
    }
    const std::string name = info[0].As<Napi::String>().Utf8Value();
    const int layer = info[1].As<Napi::Number>().Int32Value();
    const uint8_t* bytes = typed_data<uint8_t, napi_uint8_array>(info[2], 0, "bytes");
    const std::size_t nbytes = info[2].As<Napi::Uint8Array>().ByteLength();
    const DType src = parse_dtype(env, info[3]);
    auto* job = new Job(env, [&e, name, layer, bytes, nbytes, src] { e.set_tensor(name, layer, bytes, nbytes, src); });
    job->Keep(info.This());
    job->Keep(info[2]);
    return job->Start();
  }

  Napi::Value Finalize(const Napi::CallbackInfo& info) {
    mamba::Engine& e = engine(info.Env());
    auto* job = new Job(info.Env(), [&e] { e.finalize(); });
    job->Keep(info.This());
    return job->Start();
  }

  Napi::Value AllocSlot(const Napi::CallbackInfo& info) {
    mamba::Engine& e = engine(info.Env());
    auto slot = std::make_shared<int>(-1);
    auto* job = new Job(
        info.Env(), [&e, slot] { *slot = e.alloc_slot(); },
        [slot](Napi::Env env) { return Napi::Number::New(env, *slot); });
    job->Keep(info.This());
    return job->Start();
  }

  // Host bookkeeping only, so synchronous (freeState is synchronous in the Engine interface).
  Napi::Value FreeSlot(const Napi::CallbackInfo& info) {
    if (engine_ && info.Length() >= 1 && info[0].IsNumber()) engine_->free_slot(info[0].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
  }

  Napi::Value CopySlot(const Napi::CallbackInfo& info) {
    mamba::Engine& e = engine(info.Env());
    const int dst = info[0].As<Napi::Number>().Int32Value();
    const int src = info[1].As<Napi::Number>().Int32Value();
    auto* job = new Job(info.Env(), [&e, dst, src] { e.copy_slot(dst, src); });
    job->Keep(info.This());
    return job->Start();
  }

  // A ring array may be empty (pure Mamba model): then no pointer crosses.
  template <typename T>
  T* ring_data(const Napi::Value& v, const char* what) {
    const std::size_t n = dims_.ring_floats();
    if (n == 0) {
      if (!v.IsUndefined() && !v.IsNull()) typed_data<float, napi_float32_array>(v, 0, what);  // type check only
      return nullptr;
    }
    return typed_data<float, napi_float32_array>(v, n, what);
  }

  // importSlot(slot, conv: Float32Array, ssm: Float32Array, attnK: Float32Array, attnV: Float32Array)
  Napi::Value ImportSlot(const Napi::CallbackInfo& info) {
    mamba::Engine& e = engine(info.Env());
    const int slot = info[0].As<Napi::Number>().Int32Value();
    const float* conv = typed_data<float, napi_float32_array>(info[1], dims_.conv_floats(), "conv state");
    const float* ssm = typed_data<float, napi_float32_array>(info[2], dims_.ssm_floats(), "ssm state");
    const float* k = ring_data<const float>(info[3], "attention key ring");
    const float* v = ring_data<const float>(info[4], "attention value ring");
    auto* job = new Job(info.Env(), [&e, slot, conv, ssm, k, v] { e.import_slot(slot, conv, ssm, k, v); });
    job->Keep(info.This());
    for (std::size_t i = 1; i < 5 && i < info.Length(); ++i) job->Keep(info[i]);
    return job->Start();
  }

  Napi::Value ExportSlot(const Napi::CallbackInfo& info) {
    mamba::Engine& e = engine(info.Env());
    const int slot = info[0].As<Napi::Number>().Int32Value();
    float* conv = typed_data<float, napi_float32_array>(info[1], dims_.conv_floats(), "conv state");
    float* ssm = typed_data<float, napi_float32_array>(info[2], dims_.ssm_floats(), "ssm state");
    float* k = ring_data<float>(info[3], "attention key ring");
    float* v = ring_data<float>(info[4], "attention value ring");
    auto* job = new Job(info.Env(), [&e, slot, conv, ssm, k, v] { e.export_slot(slot, conv, ssm, k, v); });
    job->Keep(info.This());
    for (std::size_t i = 1; i < 5 && i < info.Length(); ++i) job->Keep(info[i]);
    return job->Start();
  }

  // prefill(slot, position, tokens: Int32Array, allLogits: boolean, out: Float32Array);
  // position = tokens the state absorbed before (TypeScript's tokensAbsorbed).
  Napi::Value Prefill(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    mamba::Engine& e = engine(env);
    const int slot = info[0].As<Napi::Number>().Int32Value();
    const int64_t position = position_of(info[1]);
    const int32_t* tokens = typed_data<int32_t, napi_int32_array>(info[2], 0, "tokens");
    const int n = static_cast<int>(info[2].As<Napi::Int32Array>().ElementLength());
    const bool all = info[3].ToBoolean().Value();
    const std::size_t rows = all ? n : (n > 0 ? 1 : 0);
    float* out = typed_data<float, napi_float32_array>(info[4], rows * dims_.vocab_rows, "logits");
    auto* job = new Job(env, [&e, slot, position, tokens, n, all, out] { e.prefill(slot, position, tokens, n, all, out); });
    job->Keep(info.This());
    job->Keep(info[2]);
    job->Keep(info[4]);
    return job->Start();
  }

  // decode(slots: Int32Array, positions: Float64Array, tokens: Int32Array, logits: Float32Array | null,
  //        argmax: Int32Array | null)
  Napi::Value Decode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    mamba::Engine& e = engine(env);
    const int32_t* slots = typed_data<int32_t, napi_int32_array>(info[0], 0, "slots");
    const std::size_t batch = info[0].As<Napi::Int32Array>().ElementLength();
    auto positions = positions_of(info[1], batch);
    const int32_t* tokens = typed_data<int32_t, napi_int32_array>(info[2], batch, "tokens");
    float* logits = info[3].IsNull() || info[3].IsUndefined()
                        ? nullptr
                        : typed_data<float, napi_float32_array>(info[3], batch * dims_.vocab_rows, "logits");
    int32_t* argmax = info.Length() < 5 || info[4].IsNull() || info[4].IsUndefined()
                          ? nullptr
                          : typed_data<int32_t, napi_int32_array>(info[4], batch, "argmax");
    const int b = static_cast<int>(batch);
    auto* job = new Job(env, [&e, slots, positions, tokens, b, logits, argmax] {
      e.decode(slots, positions->data(), tokens, b, logits, argmax);
    });
    job->Keep(info.This());
    for (std::size_t i = 0; i < 5 && i < info.Length(); ++i) job->Keep(info[i]);
    return job->Start();
  }

  // timeDecode(slots, positions: Float64Array, tokens, iters): device milliseconds per step (median).
  Napi::Value TimeDecode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    mamba::Engine& e = engine(env);
    const int32_t* slots = typed_data<int32_t, napi_int32_array>(info[0], 0, "slots");
    const int batch = static_cast<int>(info[0].As<Napi::Int32Array>().ElementLength());
    auto positions = positions_of(info[1], batch);
    const int32_t* tokens = typed_data<int32_t, napi_int32_array>(info[2], batch, "tokens");
    const int iters = info[3].As<Napi::Number>().Int32Value();
    auto ms = std::make_shared<double>(0);
    auto* job = new Job(
        env, [&e, slots, positions, tokens, batch, iters, ms] { *ms = e.time_decode(slots, positions->data(), tokens, batch, iters); },
        [ms](Napi::Env env2) { return Napi::Number::New(env2, *ms); });
    job->Keep(info.This());
    job->Keep(info[0]);
    job->Keep(info[2]);
    return job->Start();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const mamba::EngineInfo i = engine(env).info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("deviceName", i.device_name);
    o.Set("computeCapability", std::to_string(i.cc_major) + "." + std::to_string(i.cc_minor));
    o.Set("weightBytes", static_cast<double>(i.weight_bytes));
    o.Set("statePoolBytes", static_cast<double>(i.state_pool_bytes));
    o.Set("workspaceBytes", static_cast<double>(i.workspace_bytes));
    o.Set("gemmBackend", i.gemm_backend);
    o.Set("dtype", mamba::dtype_name(opt_.dtype));
    o.Set("maxSlots", opt_.max_slots);
    o.Set("maxBatch", opt_.max_batch);
    o.Set("useGraphs", opt_.use_graphs);
    o.Set("attentionLayers", dims_.attention_layers());
    return o;
  }

  // Releases the device memory (after the operation in flight, if any). The Engine object
  // itself lives until this wrapper is collected: jobs queued behind close() still hold a
  // reference to it, and find it closed (engine_closed) rather than freed.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!engine_) {
      auto d = Napi::Promise::Deferred::New(info.Env());
      d.Resolve(info.Env().Undefined());
      return d.Promise();
    }
    mamba::Engine& e = *engine_;
    auto* job = new Job(info.Env(), [&e] { e.close(); });
    job->Keep(info.This());
    return job->Start();
  }

  mamba::ModelDims dims_{};
  mamba::EngineOptions opt_{};
  bool init_started_ = false;
  std::unique_ptr<mamba::Engine> engine_;
};

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("abi", Napi::Number::New(env, kAbi));
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
  exports.Set("gemmBackend", Napi::Function::New(env, GemmBackend, "gemmBackend"));
  exports.Set("NativeEngine", NativeEngine::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(mamba_native, InitModule)
