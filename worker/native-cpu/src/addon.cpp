// The ORT engine's native kernels as a Node addon (Node-API, node-addon-api): a Decoder maps
// the graph build's weights file read-only and runs prefill and decode steps on it with
// mamba_cpu.h's kernels, on the calling thread and an OpenMP team. Built by `npm run build:cpu`
// (worker/native-cpu/build.ts); loaded by worker/engine/ort/native-engine.ts (and
// worker/generate/native-exp.ts for the sampler's rowMax and expRow).
//
//   new Decoder({ weightsPath, stripsPath?, bits, threads, prefetchBytes, dims: { d, layers, D, N, R, K, V, eps },
//                 embed: QM, head: QM, normF: R,
//                 layers: [{ norm: R, inProj: QM, convW: R, convB?: R, xProj: QM, dtProj: QM,
//                            negAT: R, Dskip: R, outProj: QM }] })
//     R = [offset, length] in bytes within the file; QM = { data: R, scales: R, bias?: R } for
//     bits 8 and 4 (blocks of codes); for bits 32 (f32) QM = { data: R, bias?: R }, the
//     projections' data Wᵀ [in, out] (the graph's MatMul layout), embed's and head's [V, d];
//     an f32 projection may instead be { strips: R, bias?: R }: its Wᵀ in column strips
//     (mamba_cpu.h's QMatrix::strips), R then within the file at stripsPath
//   decoder.decode(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array)
//     conv[b * layers + i] is sequence b's layer i [K, D], ssm[…] its [N, D]; both updated in
//     place; logits [B, V] written
//   decoder.prefill(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array, allLogits: boolean)
//     one sequence absorbs a prompt: conv[i] / ssm[i] its layer i, updated in place; logits
//     [T, V] (allLogits) or the last token's [1, V] written
//   decoder.close()   unmaps the file; later calls throw
//   expRow(logits: Float32Array, n, max, invT, out: Float64Array) -> [total, positive]
//     the sampler's softmax numerators (softmax_exp.h): out[i] = exp((logits[i] − max) · invT)
//     for i < n, their sum and how many are above 0
//   rowMax(logits: Float32Array, n) -> [max, at, nanAt]
//     the sampler's first pass (softmax_exp.h): the largest of logits[0, n) that is not NaN,
//     the lowest index holding it (0 when it is −∞), the lowest index of a NaN (−1: none)
//
// Errors are JavaScript Errors whose `code` says what was wrong: native_weights_invalid (a
// range or size that does not fit the file or the dims), native_weights_unreadable (the file
// could not be opened or mapped), native_decode_invalid (arguments of decode or prefill),
// native_closed.
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>

#include "mamba_cpu.h"
#include "softmax_exp.h"

namespace {

using namespace mamba_cpu;

Napi::Error codedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

struct Mapping {
  const uint8_t* base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base) munmap(const_cast<uint8_t*>(base), size);
  }
};

class Decoder : public Napi::ObjectWrap<Decoder> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Decoder",
                       {InstanceMethod<&Decoder::Decode>("decode"), InstanceMethod<&Decoder::Prefill>("prefill"), InstanceMethod<&Decoder::Close>("close")});
  }

  explicit Decoder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Decoder>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 1 || !info[0].IsObject()) throw codedError(env, "native_weights_invalid", "Decoder: expected one options object");
    const Napi::Object o = info[0].As<Napi::Object>();
    const std::string path = o.Get("weightsPath").As<Napi::String>().Utf8Value();
    bits_ = o.Get("bits").As<Napi::Number>().Int32Value();
    threads_ = o.Get("threads").As<Napi::Number>().Int32Value();
    if (bits_ != 8 && bits_ != 4 && bits_ != 32) throw codedError(env, "native_weights_invalid", "Decoder: bits must be 8, 4 or 32");
    if (threads_ < 1) throw codedError(env, "native_weights_invalid", "Decoder: threads must be positive");
    const Napi::Object d = o.Get("dims").As<Napi::Object>();
    auto dim = [&](const char* k) { return d.Get(k).As<Napi::Number>().Int32Value(); };
    Dims& s = model_.dims;
    s.d = dim("d");
    s.layers = dim("layers");
    s.D = dim("D");
    s.N = dim("N");
    s.R = dim("R");
    s.K = dim("K");
    s.V = dim("V");
    s.eps = d.Get("eps").As<Napi::Number>().FloatValue();
    if (s.d < 1 || s.layers < 1 || s.D < 16 || s.D % 16 != 0 || s.N < 1 || s.R < 1 || s.K < 2 || s.V < 1)
      throw codedError(env, "native_weights_invalid", "Decoder: dims out of range (d_inner must be a positive multiple of 16, d_conv >= 2)");
    if (o.Has("prefetchBytes")) model_.prefetchBytes = o.Get("prefetchBytes").As<Napi::Number>().Int32Value();

    map_ = mapFile(env, path);
    if (o.Has("stripsPath") && !o.Get("stripsPath").IsUndefined()) stripsMap_ = mapFile(env, o.Get("stripsPath").As<Napi::String>().Utf8Value());

    model_.normF = floats(env, o.Get("normF"), s.d, "normF");
    model_.embed = matrix(env, o.Get("embed"), s.V, s.d, false, false, "embed");
    model_.head = matrix(env, o.Get("head"), s.V, s.d, true, false, "head");
    const Napi::Array layers = o.Get("layers").As<Napi::Array>();
    if (int(layers.Length()) != s.layers) throw codedError(env, "native_weights_invalid", "Decoder: layers has the wrong length");
    for (int i = 0; i < s.layers; i++) {
      const Napi::Object l = layers.Get(uint32_t(i)).As<Napi::Object>();
      const std::string at = "layers[" + std::to_string(i) + "].";
      Layer L;
      L.norm = floats(env, l.Get("norm"), s.d, at + "norm");
      L.inProj = matrix(env, l.Get("inProj"), 2 * s.D, s.d, true, true, at + "inProj");
      L.convW = floats(env, l.Get("convW"), size_t(s.K) * s.D, at + "convW");
      L.convB = l.Has("convB") && !l.Get("convB").IsUndefined() ? floats(env, l.Get("convB"), s.D, at + "convB") : nullptr;
      L.xProj = matrix(env, l.Get("xProj"), s.R + 2 * s.N, s.D, true, true, at + "xProj");
      L.dtProj = matrix(env, l.Get("dtProj"), s.D, s.R, true, true, at + "dtProj");
      L.negAT = floats(env, l.Get("negAT"), size_t(s.N) * s.D, at + "negAT");
      L.Dskip = floats(env, l.Get("Dskip"), s.D, at + "Dskip");
      L.outProj = matrix(env, l.Get("outProj"), s.d, s.D, true, true, at + "outProj");
      model_.layers.push_back(L);
    }
    prepareModel(model_);
    scratch_ = std::make_unique<StepScratch>(s, threads_, bits_ == 32);
  }

 private:
  /** `path` mapped read-only, whole. */
  static std::unique_ptr<Mapping> mapFile(Napi::Env env, const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw codedError(env, "native_weights_unreadable", "Decoder: cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
      close(fd);
      throw codedError(env, "native_weights_unreadable", "Decoder: cannot read the size of " + path);
    }
    void* p = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);  // the mapping keeps the file
    if (p == MAP_FAILED) throw codedError(env, "native_weights_unreadable", "Decoder: cannot map " + path + ": " + std::strerror(errno));
    auto m = std::make_unique<Mapping>();
    m->base = static_cast<const uint8_t*>(p);
    m->size = size_t(st.st_size);
    return m;
  }

  /** The bytes of a [offset, length] range, checked to lie in the file (`in`: the weights file by default), be 4-byte aligned and hold `want` bytes. */
  const uint8_t* range(Napi::Env env, Napi::Value v, size_t want, const std::string& what, const Mapping* in = nullptr) {
    const Mapping& file = in ? *in : *map_;
    if (!v.IsArray() || v.As<Napi::Array>().Length() != 2) throw codedError(env, "native_weights_invalid", "Decoder: " + what + " must be [offset, length]");
    const Napi::Array a = v.As<Napi::Array>();
    const double off = a.Get(uint32_t(0)).As<Napi::Number>().DoubleValue(), len = a.Get(uint32_t(1)).As<Napi::Number>().DoubleValue();
    if (off < 0 || len < 0 || off + len > double(file.size) || size_t(off) % 4 != 0)
      throw codedError(env, "native_weights_invalid", "Decoder: " + what + " lies outside the weights file or is misaligned");
    if (size_t(len) != want)
      throw codedError(env, "native_weights_invalid", "Decoder: " + what + " holds " + std::to_string(size_t(len)) + " bytes, expected " + std::to_string(want));
    return file.base + size_t(off);
  }
  const float* floats(Napi::Env env, Napi::Value v, size_t count, const std::string& what) {
    return reinterpret_cast<const float*>(range(env, v, count * 4, what));
  }
  /** A matrix [rows, cols]; f32 (bits 32) ones stored as Wᵀ [cols, rows] when `colsMajor`, else as rows. */
  QMatrix matrix(Napi::Env env, Napi::Value v, int rows, int cols, bool biasAllowed, bool colsMajor, const std::string& what) {
    if (!v.IsObject()) throw codedError(env, "native_weights_invalid", "Decoder: " + what + (bits_ == 32 ? " must be { data, bias? }" : " must be { data, scales, bias? }"));
    const Napi::Object o = v.As<Napi::Object>();
    const float* bias = nullptr;
    if (o.Has("bias") && !o.Get("bias").IsUndefined()) {
      if (!biasAllowed) throw codedError(env, "native_weights_invalid", "Decoder: " + what + " takes no bias");
      bias = floats(env, o.Get("bias"), size_t(rows), what + ".bias");
    }
    if (bits_ == 32) {
      if (o.Has("scales") && !o.Get("scales").IsUndefined()) throw codedError(env, "native_weights_invalid", "Decoder: " + what + " is f32 and takes no scales");
      if (o.Has("strips") && !o.Get("strips").IsUndefined()) {
        if (!colsMajor || !stripsMap_) throw codedError(env, "native_weights_invalid", "Decoder: " + what + ".strips needs stripsPath and a projection");
        const QMatrix shape = QMatrix::f32Strips(rows, cols, nullptr, nullptr);
        return QMatrix::f32Strips(rows, cols, reinterpret_cast<const float*>(range(env, o.Get("strips"), shape.dataBytes(), what + ".strips", stripsMap_.get())), bias);
      }
      return QMatrix::f32(rows, cols, colsMajor, floats(env, o.Get("data"), size_t(rows) * cols, what + ".data"), bias);
    }
    QMatrix shape = QMatrix::of(rows, cols, bits_, nullptr, nullptr, nullptr);
    const uint8_t* data = range(env, o.Get("data"), shape.dataBytes(), what + ".data");
    const float* scales = floats(env, o.Get("scales"), shape.scaleCount(), what + ".scales");
    return QMatrix::of(rows, cols, bits_, data, scales, bias);
  }

  Napi::Value Decode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!map_) throw codedError(env, "native_closed", "decode: the decoder is closed");
    if (info.Length() != 4 || !info[0].IsTypedArray() || !info[1].IsArray() || !info[2].IsArray() || !info[3].IsTypedArray())
      throw codedError(env, "native_decode_invalid", "decode(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array)");
    const Dims& s = model_.dims;
    const Napi::Int32Array tokens = info[0].As<Napi::Int32Array>();
    const int B = int(tokens.ElementLength());
    const Napi::Array conv = info[1].As<Napi::Array>(), ssm = info[2].As<Napi::Array>();
    Napi::Float32Array logits = info[3].As<Napi::Float32Array>();
    if (B < 1) throw codedError(env, "native_decode_invalid", "decode: no tokens");
    if (conv.Length() != size_t(B) * s.layers || ssm.Length() != size_t(B) * s.layers)
      throw codedError(env, "native_decode_invalid", "decode: conv and ssm must hold one array per sequence and layer");
    if (logits.ElementLength() != size_t(B) * s.V) throw codedError(env, "native_decode_invalid", "decode: logits must hold batch x vocabulary rows floats");
    checkTokens(env, tokens, "decode");
    std::vector<float*> convRefs, ssmRefs;
    stateRefs(env, conv, ssm, "decode", convRefs, ssmRefs);
    const int* ids = tokens.Data();
    float* out = logits.Data();
    for (int g = 0; g < B; g += kMaxBatch) {
      const int n = std::min(kMaxBatch, B - g);
      const StateRefs refs{convRefs.data() + size_t(g) * s.layers, ssmRefs.data() + size_t(g) * s.layers};
      float* rows = out + size_t(g) * s.V;
#pragma omp parallel num_threads(threads_)
      step(model_, n, ids + g, refs, *scratch_, rows, s.V);
    }
    return env.Undefined();
  }

  Napi::Value Prefill(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!map_) throw codedError(env, "native_closed", "prefill: the decoder is closed");
    if (info.Length() != 5 || !info[0].IsTypedArray() || !info[1].IsArray() || !info[2].IsArray() || !info[3].IsTypedArray() || !info[4].IsBoolean())
      throw codedError(env, "native_decode_invalid", "prefill(tokens: Int32Array, conv: Float32Array[], ssm: Float32Array[], logits: Float32Array, allLogits: boolean)");
    const Dims& s = model_.dims;
    const Napi::Int32Array tokens = info[0].As<Napi::Int32Array>();
    const int T = int(tokens.ElementLength());
    const Napi::Array conv = info[1].As<Napi::Array>(), ssm = info[2].As<Napi::Array>();
    Napi::Float32Array logits = info[3].As<Napi::Float32Array>();
    const bool allLogits = info[4].As<Napi::Boolean>().Value();
    if (T < 1) throw codedError(env, "native_decode_invalid", "prefill: no tokens");
    if (conv.Length() != size_t(s.layers) || ssm.Length() != size_t(s.layers))
      throw codedError(env, "native_decode_invalid", "prefill: conv and ssm must hold one array per layer");
    if (logits.ElementLength() != size_t(allLogits ? T : 1) * s.V)
      throw codedError(env, "native_decode_invalid", "prefill: logits must hold (allLogits ? tokens : 1) x vocabulary rows floats");
    checkTokens(env, tokens, "prefill");
    std::vector<float*> convRefs, ssmRefs;
    stateRefs(env, conv, ssm, "prefill", convRefs, ssmRefs);
    // A prompt's working memory is made at its first prefill, not for engines that never prefill here.
    if (!prefillScratch_) prefillScratch_ = std::make_unique<PrefillScratch>(s, kPrefillChunk, bits_ == 32);
    const int* ids = tokens.Data();
    float* out = logits.Data();
    for (int at = 0; at < T; at += kPrefillChunk) {
      const int n = std::min(kPrefillChunk, T - at);
      float* rows = allLogits ? out + size_t(at) * s.V : at + n == T ? out : nullptr;
#pragma omp parallel num_threads(threads_)
      prefill(model_, n, ids + at, convRefs.data(), ssmRefs.data(), *prefillScratch_, rows, allLogits);
    }
    return env.Undefined();
  }

  void checkTokens(Napi::Env env, const Napi::Int32Array& tokens, const char* op) const {
    for (size_t i = 0; i < tokens.ElementLength(); i++)
      if (tokens[i] < 0 || tokens[i] >= model_.dims.V)
        throw codedError(env, "native_decode_invalid", std::string(op) + ": token " + std::to_string(tokens[i]) + " is outside the vocabulary");
  }

  /** The data of each state array, checked to be Float32Array [K, D] (conv) and [N, D] (ssm). */
  void stateRefs(Napi::Env env, const Napi::Array& conv, const Napi::Array& ssm, const char* op, std::vector<float*>& convRefs, std::vector<float*>& ssmRefs) const {
    const Dims& s = model_.dims;
    convRefs.resize(conv.Length());
    ssmRefs.resize(ssm.Length());
    for (uint32_t i = 0; i < conv.Length(); i++) {
      const Napi::Value c = conv.Get(i), h = ssm.Get(i);
      if (!c.IsTypedArray() || c.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array || c.As<Napi::Float32Array>().ElementLength() != size_t(s.K) * s.D ||
          !h.IsTypedArray() || h.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array || h.As<Napi::Float32Array>().ElementLength() != size_t(s.N) * s.D)
        throw codedError(env, "native_decode_invalid", std::string(op) + ": state arrays must be Float32Array [K, D] (conv) and [N, D] (ssm)");
      convRefs[i] = c.As<Napi::Float32Array>().Data();
      ssmRefs[i] = h.As<Napi::Float32Array>().Data();
    }
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    map_.reset();
    stripsMap_.reset();
    scratch_.reset();
    prefillScratch_.reset();
    return info.Env().Undefined();
  }

  int bits_ = 8;
  int threads_ = 1;
  Model model_;
  std::unique_ptr<Mapping> map_;
  std::unique_ptr<Mapping> stripsMap_;
  std::unique_ptr<StepScratch> scratch_;
  std::unique_ptr<PrefillScratch> prefillScratch_;
};

Napi::Value ExpRow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto bad = [&](const char* what) { return codedError(env, "native_decode_invalid", std::string("expRow: ") + what); };
  if (info.Length() != 5) throw bad("expected (logits, n, max, invT, out)");
  const Napi::Value x = info[0], out = info[4];
  if (!x.IsTypedArray() || x.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) throw bad("logits must be a Float32Array");
  if (!out.IsTypedArray() || out.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) throw bad("out must be a Float64Array");
  if (!info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) throw bad("n, max and invT must be numbers");
  const int64_t n = info[1].As<Napi::Number>().Int64Value();
  const double max = info[2].As<Napi::Number>().DoubleValue(), invT = info[3].As<Napi::Number>().DoubleValue();
  const Napi::Float32Array logits = x.As<Napi::Float32Array>();
  Napi::Float64Array probs = out.As<Napi::Float64Array>();
  if (n < 0 || size_t(n) > logits.ElementLength() || size_t(n) > probs.ElementLength()) throw bad("n must fit both arrays");
  if (!std::isfinite(max) || !std::isfinite(invT) || invT <= 0) throw bad("max must be finite and invT finite and positive");
  const ExpRowResult r = expRow(logits.Data(), n, max, invT, probs.Data());
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(uint32_t(0), Napi::Number::New(env, r.total));
  result.Set(uint32_t(1), Napi::Number::New(env, double(r.positive)));
  return result;
}

Napi::Value RowMax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto bad = [&](const char* what) { return codedError(env, "native_decode_invalid", std::string("rowMax: ") + what); };
  if (info.Length() != 2) throw bad("expected (logits, n)");
  const Napi::Value x = info[0];
  if (!x.IsTypedArray() || x.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) throw bad("logits must be a Float32Array");
  if (!info[1].IsNumber()) throw bad("n must be a number");
  const int64_t n = info[1].As<Napi::Number>().Int64Value();
  const Napi::Float32Array logits = x.As<Napi::Float32Array>();
  if (n < 0 || size_t(n) > logits.ElementLength()) throw bad("n must fit the array");
  const RowMaxResult r = rowMax(logits.Data(), n);
  Napi::Array result = Napi::Array::New(env, 3);
  result.Set(uint32_t(0), Napi::Number::New(env, double(r.max)));
  result.Set(uint32_t(1), Napi::Number::New(env, double(r.at)));
  result.Set(uint32_t(2), Napi::Number::New(env, double(r.nanAt)));
  return result;
}

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  exports.Set("Decoder", Decoder::Init(env));
  exports.Set("expRow", Napi::Function::New(env, ExpRow, "expRow"));
  exports.Set("rowMax", Napi::Function::New(env, RowMax, "rowMax"));
  // The instruction set the kernels were compiled for (support.ts names the CPU flags it needs).
#if defined(MAMBA_CPU_AVX2)
  exports.Set("isa", Napi::String::New(env, "avx2"));
#else
  exports.Set("isa", Napi::String::New(env, "avx512"));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(mamba_cpu, InitAddon)
