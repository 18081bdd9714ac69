#include "gemm.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/StringUtil.h>
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../encoder_args.h"
#include "../settings.h"
#include "kernels.h"
#include "skinny_gemm.h"
#include "sm90_gemm.h"

namespace fusedbert::cuda {
namespace {

// Hopper's fastest cuBLASLt kernels want up to 32 MiB of workspace; it comes from the caching
// allocator, so asking once per encoder call costs no cudaMalloc after the first.
constexpr int64_t kWorkspaceBytes = int64_t{32} << 20;
// Candidates kept from the heuristic for timing. Its first choice is often not the fastest for small M
// (a few tokens: the GEMM is bound by reading the weights, and split-K or a narrower tile spreads that
// read over more SMs). Timing 64 instead chose the same kernels for bert-base's bs128 graph (H100).
constexpr int kCandidateAlgos = 16;
constexpr int kTimedRuns = 8;

// Everything a cuBLASLt plan depends on. `alignment` is the largest power of two (at most 256) that
// divides every buffer address: algorithms that need more are excluded, as cuBLASLt asks.
struct PlanKey {
  at::ScalarType dtype;
  int64_t m, n, k;
  Epilogue epilogue;
  bool tf32;
  int64_t alignment;

  bool operator==(const PlanKey& o) const {
    return dtype == o.dtype && m == o.m && n == o.n && k == o.k && epilogue == o.epilogue && tf32 == o.tf32 &&
           alignment == o.alignment;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = std::hash<int64_t>()(key.m);
    for (int64_t v : {key.n, key.k, static_cast<int64_t>(key.dtype), static_cast<int64_t>(key.epilogue),
                      static_cast<int64_t>(key.tf32), key.alignment}) {
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    }
    return h;
  }
};

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* p) const { cublasLtMatmulDescDestroy(p); }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* p) const { cublasLtMatrixLayoutDestroy(p); }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using DescPtr = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using LayoutPtr = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using PreferencePtr = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PreferenceDeleter>;

cudaDataType_t cuda_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "fusedbert::encoder (CUDA): no cuBLASLt GEMM for dtype ", dtype);
  }
}

cublasLtEpilogue_t cublaslt_epilogue(Epilogue epilogue) {
  switch (epilogue) {
    case Epilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::BiasRelu: return CUBLASLT_EPILOGUE_RELU_BIAS;
    case Epilogue::BiasGeluTanh: return CUBLASLT_EPILOGUE_GELU_BIAS;
    case Epilogue::BiasGeluErf: break;  // not a cuBLASLt epilogue: linear() adds bias and GELU after the GEMM
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

LayoutPtr column_major(cudaDataType_t dtype, int64_t rows, int64_t cols) {
  cublasLtMatrixLayout_t layout = nullptr;
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, dtype, rows, cols, rows));
  return LayoutPtr(layout);
}

// GPU time of kTimedRuns runs of `launch` (false: it could not run; then infinity), each after a write over
// twice the L2 cache, so the weights come from HBM as in the forward, where a layer's weights are evicted
// by the other layers' before their next use: timed back to back, a GEMM finds its weights in L2 and the
// choice favors kernels that are fast only then (seen on the H100 at bs1x128: 0.292 ms of GEMMs per
// forward tuned hot, 0.259 the heuristic's first choice, 0.256 tuned cold). Reading the input back into
// L2 after the flush, as the kernel before a GEMM leaves it, changed no forward measurably (H100, bs32 and
// bs128 var; branch attempt/ln-warp-warm-tune). A spin kernel holds the
// stream while the runs are queued, so the events time the GPU's work, not the host's launch rate: a
// graph replay has no launch cost either. The first launch is the warm-up. A candidate that launches a
// memset before its GEMM is not charged for that graph node: charging 2.5 us a node took bert-base's bs128
// graph from 36 memsets to 12, but the GEMMs without one were slower by as much (branch
// attempt/tuner-node-cost).
float cold_cache_ms(const std::function<bool()>& launch, const at::Tensor& like) {
  if (!launch()) return std::numeric_limits<float>::infinity();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t flush_bytes = 2 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->l2CacheSize);
  const at::Tensor flush = at::empty({flush_bytes}, like.options().dtype(at::kByte));
  std::vector<cudaEvent_t> events(2 * kTimedRuns);
  for (cudaEvent_t& event : events) C10_CUDA_CHECK(cudaEventCreate(&event));
  at::cuda::sleep(int64_t{1} << 18);  // ~0.15 ms of spinning: longer than queueing the first timed run
  for (int i = 0; i < kTimedRuns; ++i) {
    C10_CUDA_CHECK(cudaMemsetAsync(flush.data_ptr(), i, static_cast<size_t>(flush_bytes), stream));
    C10_CUDA_CHECK(cudaEventRecord(events[2 * i], stream));
    TORCH_CHECK(launch(), "fusedbert::encoder (CUDA): a GEMM that ran once failed when timed");
    C10_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], stream));
  }
  C10_CUDA_CHECK(cudaEventSynchronize(events.back()));
  float total_ms = 0.0f;
  for (int i = 0; i < kTimedRuns; ++i) {
    float ms = 0.0f;
    C10_CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]));
    total_ms += ms;
  }
  for (cudaEvent_t event : events) C10_CUDA_CHECK(cudaEventDestroy(event));
  return total_ms;
}

// Row-major out[n, m] = in[n, k] @ weight[m, k]^T, read column-major, is D[m, n] = op(A) B with
// A = weight stored [k, m] (op = transpose), B = in stored [k, n] and D = out stored [m, n]: nn.Linear's
// layout feeds cuBLASLt with no copy, and the bias runs along D's m rows as the epilogue expects.
class Plan {
 public:
  explicit Plan(const PlanKey& key) : has_bias_(key.epilogue != Epilogue::None) {
    const cudaDataType_t dtype = cuda_dtype(key.dtype);
    const cublasComputeType_t compute =
        key.dtype == at::kFloat && key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasLtMatmulDesc_t desc = nullptr;
    TORCH_CUDABLAS_CHECK(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F));
    desc_.reset(desc);
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
    TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)));
    const cublasLtEpilogue_t epilogue = cublaslt_epilogue(key.epilogue);
    TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    a_ = column_major(dtype, key.k, key.m);
    b_ = column_major(dtype, key.k, key.n);
    d_ = column_major(dtype, key.m, key.n);

    cublasLtMatmulPreference_t preference = nullptr;
    TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const PreferencePtr preference_owner(preference);
    const uint64_t workspace = kWorkspaceBytes;
    TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
    const uint32_t alignment = static_cast<uint32_t>(key.alignment);
    for (auto attribute : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &alignment, sizeof(alignment)));
    }
    cublasLtMatmulHeuristicResult_t results[kCandidateAlgos] = {};
    int found = 0;
    TORCH_CUDABLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(at::cuda::getCurrentCUDABlasLtHandle(), desc, a_.get(), b_.get(),
                                                        d_.get(), d_.get(), preference, kCandidateAlgos, results, &found));
    TORCH_CHECK(found > 0, "fusedbert::encoder (CUDA): cuBLASLt has no algorithm for a ", key.dtype, " GEMM [", key.n,
                ", ", key.k, "] x [", key.k, ", ", key.m, "] with epilogue ", static_cast<int>(key.epilogue));
    for (int i = 0; i < found; ++i) candidates_.push_back(results[i].algo);
    algo_ = candidates_.front();
  }

  void run(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
           const at::Tensor& workspace) {
    if (has_bias_) {
      // Set per call: the plan is shared by every layer, each with its own bias.
      const void* bias_ptr = bias.data_ptr();
      TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                                          sizeof(bias_ptr)));
    }
    // Timing waits on events, which a stream being captured cannot do; the graph's warm-up tunes first.
    // The capture query comes last: only a plan about to be tuned pays for it, not every GEMM.
    if (!tuned_ && gemm_autotuning_enabled() && !current_stream_is_capturing()) tune(out, in, weight, workspace);
    TORCH_CUDABLAS_CHECK(matmul(algo_, out, in, weight, workspace));
  }

 private:
  cublasStatus_t matmul(const cublasLtMatmulAlgo_t& algo, at::Tensor& out, const at::Tensor& in,
                        const at::Tensor& weight, const at::Tensor& workspace) const {
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(at::cuda::getCurrentCUDABlasLtHandle(), desc_.get(), &alpha, weight.data_ptr(), a_.get(),
                          in.data_ptr(), b_.get(), &beta, out.data_ptr(), d_.get(), out.data_ptr(), d_.get(), &algo,
                          workspace.data_ptr(), static_cast<size_t>(kWorkspaceBytes),
                          at::cuda::getCurrentCUDAStream());
  }

  // Times every candidate on the call's own buffers (their results are overwritten by the real run that
  // follows) and keeps the fastest.
  void tune(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& workspace) {
    tuned_ = true;
    if (candidates_.size() < 2) return;
    float best_ms = std::numeric_limits<float>::infinity();
    for (const cublasLtMatmulAlgo_t& algo : candidates_) {
      const float ms = cold_cache_ms(
          [&] { return matmul(algo, out, in, weight, workspace) == CUBLAS_STATUS_SUCCESS; }, in);
      if (ms < best_ms) {
        best_ms = ms;
        algo_ = algo;
      }
    }
  }

  bool has_bias_;
  DescPtr desc_;
  LayoutPtr a_, b_, d_;
  std::vector<cublasLtMatmulAlgo_t> candidates_;  // the heuristic's, best first
  cublasLtMatmulAlgo_t algo_;
  bool tuned_ = false;
};

// The entry of `cache` for `key`, made by make() on a miss. Distinct token counts keep arriving in a
// server, so a full cache starts over.
template <typename Value, typename Make>
Value& cached(std::unordered_map<PlanKey, Value, PlanKeyHash>& cache, const PlanKey& key, Make make) {
  constexpr size_t kMaxEntries = 1024;
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  if (cache.size() >= kMaxEntries) cache.clear();
  return cache.emplace(key, make()).first->second;
}

// A heuristic query costs microseconds of host time and a call issues 4 GEMMs per layer in 4 distinct
// shapes, so plans are cached. Per thread: the bias pointer is written into the shared descriptor at
// each run, which must not race.
Plan& plan_for(const PlanKey& key) {
  thread_local std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
  return *cached(plans, key, [&] { return std::make_unique<Plan>(key); });
}

int64_t common_alignment(std::initializer_list<const void*> pointers) {
  uintptr_t bits = 256;
  for (const void* p : pointers) bits |= reinterpret_cast<uintptr_t>(p);
  return static_cast<int64_t>(bits & (~bits + 1));  // lowest set bit
}

// From this many tokens the first CUTLASS kernel runs until the shape is timed (autotuning on), which then
// decides among every kernel. Measured on an H200 (benchmarks/ffn_gemm.py): for bert-base's FFN1 at 8,990
// tokens the CUTLASS kernels beat cuBLASLt + the bias + GELU pass by 6% (cooperative) and 17% (ping-pong); at
// 2,172 they lose by about 15%, and at 128 or fewer they take 1.5 to 2.4 times as long (their large tiles
// leave most SMs idle where cuBLASLt's small-M kernels split K). MiniLM's narrower FFN1 (1536 x 384) loses by
// 3 to 8% even at 8,990 tokens: only the timed choice gets every model right.
constexpr int64_t kSm90MinTokens = 4096;
// The implementations a GEMM can run, besides the sm90 kernels (numbered from 0): cuBLASLt (for
// Epilogue::BiasGeluErf its GEMM, then bias_activation_) and the small-batch kernel (skinny_gemm.h).
constexpr int kCublasLt = -1;
constexpr int kSkinny = -2;
constexpr int kSm90Default = 0;

bool sm90_bias_gelu_applies(const PlanKey& key) {
  if (sm90::kernel_count() == 0 || (key.dtype != at::kHalf && key.dtype != at::kBFloat16)) return false;
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  // sm_90a code runs on compute capability 9.0 alone; TMA wants 16-byte aligned rows and bases.
  return device->major == 9 && device->minor == 0 && key.m % 8 == 0 && key.k % 8 == 0 && key.alignment >= 16;
}

bool skinny_applies(const PlanKey& key) {
  return skinny_linear_refusal(key.dtype, key.n, key.m, key.k, key.alignment) == nullptr;
}

PlanKey without_epilogue(PlanKey key) {
  key.epilogue = Epilogue::None;
  return key;
}

void run_kernel(int kernel, const PlanKey& key, at::Tensor& out, const at::Tensor& in, const at::Tensor& weight,
                const at::Tensor& bias, const at::Tensor& workspace) {
  if (kernel == kSkinny) return skinny_linear(out, in, weight, bias, key.epilogue);
  if (kernel == kCublasLt && key.epilogue != Epilogue::BiasGeluErf) {
    return plan_for(key).run(out, in, weight, bias, workspace);
  }
  if (kernel == kCublasLt) {
    plan_for(without_epilogue(key)).run(out, in, weight, {}, workspace);
    return bias_activation_(out, bias, Activation::GeluErf);
  }
  const char* error = sm90::linear_bias_gelu(
      kernel, in.scalar_type() == at::kHalf ? sm90::Element::Half : sm90::Element::BFloat16, in.size(0),
      weight.size(0), weight.size(1), in.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
      workspace.data_ptr(), static_cast<size_t>(kWorkspaceBytes),
      at::cuda::getCurrentDeviceProperties()->multiProcessorCount, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(error == nullptr, "fusedbert::encoder (CUDA): the sm_90 bias + GELU GEMM (", sm90::kernel_name(kernel),
              ") failed: ", error);
}

// Up to this many token rows on Hopper the small-batch kernel runs untimed. Timed alone it loses QKV and the
// attention output to cuBLASLt at 16 rows, but in a forward it launches while the kernel ahead of it runs and
// loads its weights meanwhile (dependent_launch.cuh), which a GEMM timed on its own cannot show. From CUDA
// graphs on an H100, bert-base at one sequence took 0.314-0.318 ms at 16 tokens with it for all four GEMMs
// against 0.367-0.374 with the timed choices (cuBLASLt for those two), and 0.374-0.377 against 0.418-0.419 at
// 32 tokens; at 64 it lost, 0.575-0.578 against 0.458-0.461, so from 33 rows the shapes are timed as before
// (docs/benchmarks.md, "The small-batch GEMM untimed up to 32 rows").
constexpr int64_t kSkinnyUntimedRows = 32;

bool skinny_untimed(const PlanKey& key) {
  return key.n <= kSkinnyUntimedRows && skinny_applies(key) && at::cuda::getCurrentDeviceProperties()->major >= 9;
}

std::vector<int> candidates(const PlanKey& key) {
  if (skinny_untimed(key)) return {kSkinny};
  std::vector<int> kernels{kCublasLt};
  if (skinny_applies(key)) kernels.push_back(kSkinny);
  if (key.epilogue == Epilogue::BiasGeluErf && sm90_bias_gelu_applies(key)) {
    for (int kernel = 0; kernel < sm90::kernel_count(); ++kernel) kernels.push_back(kernel);
  }
  return kernels;
}

// Until a shape is timed: the small-batch kernel where it applies, the first CUTLASS kernel for a large
// FFN1 on Hopper, cuBLASLt otherwise.
int default_kernel(const PlanKey& key) {
  if (skinny_applies(key)) return kSkinny;
  if (key.epilogue == Epilogue::BiasGeluErf && key.n >= kSm90MinTokens && sm90_bias_gelu_applies(key)) {
    return kSm90Default;
  }
  return kCublasLt;
}

// Per shape, which implementation runs. Cached per thread like the plans.
struct KernelChoice {
  int kernel;
  bool tuned;
};

KernelChoice& choice_for(const PlanKey& key) {
  thread_local std::unordered_map<PlanKey, KernelChoice, PlanKeyHash> choices;
  return cached(choices, key, [&] { return KernelChoice{default_kernel(key), false}; });
}

// Of `kernels`, the one cold_cache_ms times fastest on this call's buffers; run(kernel) runs one and says
// whether it could.
int fastest(const std::vector<int>& kernels, const std::function<bool(int)>& run, const at::Tensor& like) {
  int best = kernels.front();
  float best_ms = std::numeric_limits<float>::infinity();
  for (int kernel : kernels) {
    const float ms = cold_cache_ms([&] { return run(kernel); }, like);
    if (ms < best_ms) {
      best_ms = ms;
      best = kernel;
    }
  }
  return best;
}

// Times every candidate, cuBLASLt's plan tuned first (its run tunes it).
int fastest_kernel(const PlanKey& key, at::Tensor& out, const at::Tensor& in, const at::Tensor& weight,
                   const at::Tensor& bias, const at::Tensor& workspace) {
  const std::vector<int> kernels = candidates(key);
  if (kernels.size() == 1) return kernels.front();
  run_kernel(kCublasLt, key, out, in, weight, bias, workspace);
  return fastest(
      kernels,
      [&](int kernel) {
        run_kernel(kernel, key, out, in, weight, bias, workspace);
        return true;
      },
      in);
}

PlanKey plan_key(const at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                 Epilogue epilogue) {
  const bool has_bias = epilogue != Epilogue::None;
  return {in.scalar_type(),
          weight.size(0),
          in.size(0),
          weight.size(1),
          epilogue,
          at::globalContext().allowTF32CuBLAS(),
          common_alignment({out.data_ptr(), in.data_ptr(), weight.data_ptr(), has_bias ? bias.data_ptr() : nullptr})};
}

// The names linear_bias_gelu takes, in bias_gelu_kernels()'s order, and the kernel each runs.
std::vector<std::pair<std::string, int>> named_bias_gelu_kernels() {
  std::vector<std::pair<std::string, int>> named{{"cublaslt", kCublasLt}};
  for (int kernel = 0; kernel < sm90::kernel_count(); ++kernel) named.emplace_back(sm90::kernel_name(kernel), kernel);
  named.emplace_back("skinny", kSkinny);
  return named;
}

// One FP8 GEMM by `kernel`, a tile configuration of sm90::fp8_linear or kSkinny: nullptr, or what failed.
const char* run_fp8_kernel(int kernel, at::Tensor& out, const at::Tensor& in, const at::Tensor& weight,
                           const at::Tensor& bias, sm90::Fp8Stage stage, const at::Tensor& scales,
                           at::ScalarType model_dtype, const at::Tensor& workspace) {
  const bool ffn1 = stage == sm90::Fp8Stage::Ffn1;
  const float* steps = scales.const_data_ptr<float>();
  const float* in_step = steps + (ffn1 ? kFfnInputStep : kFfnInnerStep);
  const float* weight_step = steps + (ffn1 ? kFfn1WeightStep : kFfn2WeightStep);
  const float* out_inverse = steps + kFfnInnerInverse;  // read by Ffn1 only
  if (kernel == kSkinny) {
    skinny_fp8_linear(out, in, weight, ffn1 ? bias : at::Tensor(), stage, in_step, weight_step, out_inverse,
                      model_dtype);
    return nullptr;
  }
  const sm90::Element element = model_dtype == at::kHalf ? sm90::Element::Half : sm90::Element::BFloat16;
  return sm90::fp8_linear(kernel, stage, element, in.size(0), weight.size(0), weight.size(1), in.data_ptr(),
                          weight.data_ptr(), ffn1 ? bias.data_ptr() : nullptr, in_step, weight_step, out_inverse,
                          out.data_ptr(), workspace.data_ptr(), static_cast<size_t>(kWorkspaceBytes),
                          at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                          at::cuda::getCurrentCUDAStream());
}

// What an FP8 GEMM's kernel choice depends on, as plan_key() for linear().
PlanKey fp8_plan_key(const at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                     sm90::Fp8Stage stage, at::ScalarType model_dtype) {
  const bool ffn1 = stage == sm90::Fp8Stage::Ffn1;
  return {model_dtype,
          weight.size(0),
          in.size(0),
          weight.size(1),
          ffn1 ? Epilogue::BiasGeluErf : Epilogue::None,
          false,
          common_alignment({out.data_ptr(), in.data_ptr(), weight.data_ptr(), ffn1 ? bias.data_ptr() : nullptr})};
}

const char* skinny_fp8_refusal(const PlanKey& key) {
  return skinny_fp8_linear_refusal(key.n, key.m, key.k, key.alignment);
}

// The names fp8_linear_named takes, in fp8_kernels()'s order, and the kernel each runs.
std::vector<std::pair<std::string, int>> named_fp8_kernels() {
  std::vector<std::pair<std::string, int>> named;
  for (int kernel = 0; kernel < sm90::fp8_kernel_count(); ++kernel) {
    named.emplace_back(sm90::fp8_kernel_name(kernel), kernel);
  }
  if (!named.empty()) named.emplace_back("skinny", kSkinny);
  return named;
}

}  // namespace

bool fp8_linear_available() {
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  return sm90::fp8_kernel_count() > 0 && device->major == 9 && device->minor == 0;
}

void fp8_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                sm90::Fp8Stage stage, const at::Tensor& scales, at::ScalarType model_dtype,
                const at::Tensor& workspace) {
  if (in.size(0) == 0) return;
  const PlanKey key = fp8_plan_key(out, in, weight, bias, stage, model_dtype);
  auto run = [&](int kernel) {
    return run_fp8_kernel(kernel, out, in, weight, bias, stage, scales, model_dtype, workspace);
  };

  thread_local std::unordered_map<PlanKey, KernelChoice, PlanKeyHash> choices;
  // Until timed: the small-batch kernel where it applies, as linear() does, else sm90_gemm.cpp's default.
  const bool skinny = skinny_fp8_refusal(key) == nullptr;
  KernelChoice& choice = cached(choices, key, [&] { return KernelChoice{skinny ? kSkinny : 0, false}; });
  // Timing waits on events, which a stream being captured cannot do; the graph's warm-up tunes first.
  if (!choice.tuned && gemm_autotuning_enabled() && !current_stream_is_capturing()) {
    std::vector<int> kernels;
    for (const auto& [name, kernel] : named_fp8_kernels()) {
      if (kernel != kSkinny || skinny) kernels.push_back(kernel);
    }
    choice = {fastest(kernels, [&](int kernel) { return run(kernel) == nullptr; }, in), true};
  }
  const char* error = run(choice.kernel);
  TORCH_CHECK(error == nullptr, "fusedbert::encoder (CUDA): the FP8 FFN GEMM (", sm90::fp8_kernel_name(choice.kernel),
              ") failed: ", error);
}

std::vector<std::string> fp8_kernels() {
  std::vector<std::string> names;
  for (const auto& [name, kernel] : named_fp8_kernels()) names.push_back(name);
  return names;
}

void fp8_linear_named(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                      sm90::Fp8Stage stage, const at::Tensor& scales, at::ScalarType model_dtype,
                      const std::string& kernel, const at::Tensor& workspace) {
  const auto named = named_fp8_kernels();
  const auto found = std::find_if(named.begin(), named.end(), [&](const auto& entry) { return entry.first == kernel; });
  TORCH_CHECK(found != named.end(), "fusedbert::fp8_ffn_linear: no kernel '", kernel, "' in this build; it has ",
              named.empty() ? std::string("none (no CUTLASS sm_90a kernels were built)")
                            : c10::Join(", ", fp8_kernels()));
  if (in.size(0) == 0) return;
  if (found->second == kSkinny) {
    const char* refusal = skinny_fp8_refusal(fp8_plan_key(out, in, weight, bias, stage, model_dtype));
    TORCH_CHECK(refusal == nullptr, "fusedbert::fp8_ffn_linear: 'skinny' cannot run this GEMM: ", refusal);
  }
  const char* error = run_fp8_kernel(found->second, out, in, weight, bias, stage, scales, model_dtype, workspace);
  TORCH_CHECK(error == nullptr, "fusedbert::fp8_ffn_linear: '", kernel, "' failed: ", error);
}

at::Tensor gemm_workspace(const at::Tensor& like) {
  return at::empty({kWorkspaceBytes}, like.options().dtype(at::kByte));
}

void linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias, Epilogue epilogue,
            const at::Tensor& workspace) {
  if (in.size(0) == 0) return;
  const PlanKey key = plan_key(out, in, weight, bias, epilogue);
  KernelChoice& choice = choice_for(key);
  // Timing waits on events, which a stream being captured cannot do; the graph's warm-up tunes first.
  if (!choice.tuned && gemm_autotuning_enabled() && !current_stream_is_capturing()) {
    choice = {fastest_kernel(key, out, in, weight, bias, workspace), true};
  }
  run_kernel(choice.kernel, key, out, in, weight, bias, workspace);
}

std::vector<std::string> bias_gelu_kernels() {
  std::vector<std::string> names;
  for (const auto& [name, kernel] : named_bias_gelu_kernels()) names.push_back(name);
  return names;
}

void linear_bias_gelu(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                      const std::string& kernel, const at::Tensor& workspace) {
  const auto named = named_bias_gelu_kernels();
  const auto found = std::find_if(named.begin(), named.end(), [&](const auto& entry) { return entry.first == kernel; });
  TORCH_CHECK(found != named.end(), "fusedbert::linear_bias_gelu: no kernel '", kernel, "' in this build; it has ",
              c10::Join(", ", bias_gelu_kernels()));
  if (in.size(0) == 0) return;
  const PlanKey key = plan_key(out, in, weight, bias, Epilogue::BiasGeluErf);
  if (found->second == kSkinny) {
    const char* refusal = skinny_linear_refusal(key.dtype, key.n, key.m, key.k, key.alignment);
    TORCH_CHECK(refusal == nullptr, "fusedbert::linear_bias_gelu: 'skinny' cannot run this GEMM: ", refusal);
  }
  TORCH_CHECK(found->second < 0 || sm90_bias_gelu_applies(key),
              "fusedbert::linear_bias_gelu: '", kernel, "' needs an sm_90 GPU, float16/bfloat16, sizes that are "
              "multiples of 8 and 16-byte aligned buffers");
  run_kernel(found->second, key, out, in, weight, bias, workspace);
}

}  // namespace fusedbert::cuda
