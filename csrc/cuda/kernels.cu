#include "kernels.h"

#include "activation.cuh"
#include "dependent_launch.cuh"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>
#include <cub/block/block_scan.cuh>
#include <cuda_fp8.h>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace fusedbert::cuda {
namespace {

// Calls fn with a value of the storage type: the three dtypes check_encoder_args admits, no others.
template <typename Fn>
void dispatch_storage_type(at::ScalarType dtype, const char* what, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(at::Half{}); break;
    case at::kBFloat16: fn(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "fusedbert::encoder (CUDA) ", what, ": unsupported dtype ", dtype);
  }
}

// kVec elements moved as one 16-byte access.
template <typename scalar_t>
constexpr int kVec = 16 / sizeof(scalar_t);

template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[kVec<scalar_t>];
};

template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t>*>(p);
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t>& pack) {
  *reinterpret_cast<Pack<scalar_t>*>(p) = pack;
}

// ---- padding removal --------------------------------------------------------------------------------

constexpr int kRankThreads = 256;
constexpr int kSummaryThreads = 1024;
// Up to this many bytes of mask, a batch captured into a CUDA graph gets its offsets from the ranking kernel
// itself: each sequence's block counts the real tokens of the rows before its own. That reads the mask
// about B / 2 times over, from L2, and saves the summary kernel and its graph node (on an H200, MiniLM bs1 x 16
// from graphs 0.142 -> 0.141 ms; no change measured at 32 and 128 sequences).
constexpr int64_t kOwnOffsetsMaxMaskBytes = int64_t{64} << 10;

// Nonzero mask values in one 16-byte pack of them.
template <typename mask_t>
__device__ __forceinline__ int32_t nonzero_in_pack(const uint4& pack) {
  if constexpr (sizeof(mask_t) == 1) {  // __vcmpne4 sets a byte to 0xff where it is not 0: 8 bits each
    return (__popc(__vcmpne4(pack.x, 0u)) + __popc(__vcmpne4(pack.y, 0u)) + __popc(__vcmpne4(pack.z, 0u)) +
            __popc(__vcmpne4(pack.w, 0u))) / 8;
  } else if constexpr (sizeof(mask_t) == 4) {
    return (pack.x != 0) + (pack.y != 0) + (pack.z != 0) + (pack.w != 0);
  } else {
    static_assert(sizeof(mask_t) == 8, "masks are 1, 4 or 8 bytes a value");
    return ((pack.x | pack.y) != 0) + ((pack.z | pack.w) != 0);
  }
}

// This thread's share of the nonzero values among mask[0, count), in 16-byte packs where the mask is aligned.
template <typename mask_t>
__device__ int32_t nonzero_before(const mask_t* __restrict__ mask, int64_t count) {
  constexpr int64_t kPerPack = 16 / sizeof(mask_t);
  int64_t scalar_from = 0;
  int32_t nonzero = 0;
  if (reinterpret_cast<uintptr_t>(mask) % 16 == 0) {
    const auto* packs = reinterpret_cast<const uint4*>(mask);
    const int64_t pack_count = count / kPerPack;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < pack_count; i += kRankThreads) nonzero += nonzero_in_pack<mask_t>(packs[i]);
    scalar_from = pack_count * kPerPack;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < count; i += kRankThreads) nonzero += mask[i] != 0;
  return nonzero;
}

// One block per sequence: scans its mask row in chunks, giving each real token its rank among the
// sequence's real tokens. kOwnOffsets: the block also counts the real tokens before its row and writes its
// sequence's end offset, cu_seqlens[b + 1], capped at row_limit (the summary kernel's work, for a graph).
// Otherwise it records the sequence's length and its first mask value other than 0/1 for summarize_kernel.
template <typename mask_t, bool kOwnOffsets>
__global__ void rank_real_tokens_kernel(
    const mask_t* __restrict__ mask, int64_t seq_len, int32_t* __restrict__ rank, int32_t* __restrict__ seqlens,
    long long* __restrict__ first_invalid, int32_t row_limit, int32_t* __restrict__ cu_seqlens) {
  using Scan = cub::BlockScan<int32_t, kRankThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int32_t carry;
  __shared__ long long invalid;
  const int64_t row_start = static_cast<int64_t>(blockIdx.x) * seq_len;
  int32_t real_before = 0;  // real tokens of the rows before this one (kOwnOffsets)
  if constexpr (kOwnOffsets) {
    int32_t unused;
    Scan(scan_storage).ExclusiveSum(nonzero_before(mask, row_start), unused, real_before);
  }
  if (threadIdx.x == 0) {
    carry = 0;
    invalid = LLONG_MAX;
  }
  __syncthreads();  // kOwnOffsets: every thread has its count, and the scan storage is free again
  for (int64_t chunk = 0; chunk < seq_len; chunk += kRankThreads) {
    const int64_t s = chunk + threadIdx.x;
    int32_t real = 0;
    if (s < seq_len) {
      const auto value = static_cast<long long>(mask[row_start + s]);
      real = value != 0;
      if (!kOwnOffsets && value != 0 && value != 1) atomicMin(&invalid, static_cast<long long>(row_start + s));
    }
    int32_t offset, chunk_count;
    Scan(scan_storage).ExclusiveSum(real, offset, chunk_count);
    if (s < seq_len) rank[row_start + s] = real ? carry + offset : -1;
    __syncthreads();  // every thread has read `carry` and the scan storage is free again
    if (threadIdx.x == 0) carry += chunk_count;
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if constexpr (kOwnOffsets) {
    if (blockIdx.x == 0) cu_seqlens[0] = 0;
    cu_seqlens[blockIdx.x + 1] = min(real_before + carry, row_limit);
  } else {
    seqlens[blockIdx.x] = carry;
    first_invalid[blockIdx.x] = invalid;
  }
}

// One block: cu_seqlens by an inclusive scan over the lengths, plus the summary the host reads back:
// {total tokens, longest sequence, first invalid mask position or LLONG_MAX}. Offsets are capped at
// row_limit, the packed buffer's rows, so that attention never reaches past it (see find_real_tokens).
__global__ void summarize_kernel(
    const int32_t* __restrict__ seqlens, const long long* __restrict__ first_invalid, int64_t batch,
    int32_t row_limit, int32_t* __restrict__ cu_seqlens, long long* __restrict__ summary) {
  using Scan = cub::BlockScan<int32_t, kSummaryThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int32_t carry;
  __shared__ int32_t longest;
  __shared__ long long invalid;
  if (threadIdx.x == 0) {
    carry = 0;
    longest = 0;
    invalid = LLONG_MAX;
    cu_seqlens[0] = 0;
  }
  __syncthreads();
  for (int64_t chunk = 0; chunk < batch; chunk += kSummaryThreads) {
    const int64_t b = chunk + threadIdx.x;
    const int32_t len = b < batch ? seqlens[b] : 0;
    if (b < batch) {
      atomicMax(&longest, len);
      atomicMin(&invalid, first_invalid[b]);
    }
    int32_t inclusive, chunk_total;
    Scan(scan_storage).InclusiveSum(len, inclusive, chunk_total);
    if (b < batch) cu_seqlens[b + 1] = min(carry + inclusive, row_limit);
    __syncthreads();
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    summary[0] = carry;
    summary[1] = longest;
    summary[2] = invalid;
  }
}

// Row copies are dtype-agnostic: unit_t is the widest access (16, 8, 4 or 2 bytes) that the row size
// and both base pointers allow. A warp per padded position, kCopyWarps positions per block. With a block
// per position, the 16,384 blocks of a 128 x 128 batch took ~20.7 us to gather on an H100 whatever the row
// width (MiniLM's 384 as bert-base's 768); a warp per position takes 4.8 and 8.2-9.2 us. (The way back to
// the padded shape is the last LayerNorm's: bias_residual_layernorm_scatter_kernel.)
constexpr int kCopyWarps = 8;

// The padded position this warp copies, or -1 past the last one.
__device__ __forceinline__ int64_t copy_position(int64_t positions) {
  const int64_t position = static_cast<int64_t>(blockIdx.x) * kCopyWarps + threadIdx.x / 32;
  return position < positions ? position : -1;
}

// Packs the real tokens' rows into packed[0, T) and zeros packed[T, packed_rows): a capture's rows past the
// real tokens (packed_rows is then its token capacity) must stay finite. Every such row is some position's
// index, since packed_rows <= positions, so the warp of position p zeros row p: no fill kernel, which in a
// CUDA graph is one more node (and 4.8 us at bert-base bs128 var).
template <typename unit_t>
__global__ void gather_rows_kernel(
    const unit_t* __restrict__ hidden, const int32_t* __restrict__ rank, const int32_t* __restrict__ cu_seqlens,
    int64_t positions, int64_t seq_len, int64_t units_per_row, int64_t packed_rows, unit_t* __restrict__ packed) {
  allow_dependent_grids();  // the first layer's QKV GEMM may start loading its weights
  const int64_t position = copy_position(positions);
  if (position < 0) return;
  if (position < packed_rows && position >= cu_seqlens[positions / seq_len]) {
    for (int64_t i = threadIdx.x % 32; i < units_per_row; i += 32) packed[position * units_per_row + i] = unit_t{};
  }
  const int32_t r = rank[position];
  if (r < 0) return;
  const int64_t dest = cu_seqlens[position / seq_len] + r;
  if (dest >= packed_rows) return;  // past a capture's row bound: see find_real_tokens
#pragma unroll 4
  for (int64_t i = threadIdx.x % 32; i < units_per_row; i += 32) {
    packed[dest * units_per_row + i] = hidden[position * units_per_row + i];
  }
}

int64_t copy_unit_bytes(int64_t row_bytes, const void* a, const void* b) {
  const auto addresses = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b);
  for (int64_t unit : {16, 8, 4}) {
    if (row_bytes % unit == 0 && addresses % unit == 0) return unit;
  }
  return 2;  // every storage dtype is at least 2 bytes wide
}

template <typename Fn>
void dispatch_copy_unit(int64_t unit_bytes, Fn&& fn) {
  switch (unit_bytes) {
    case 16: fn(uint4{}); break;
    case 8: fn(uint2{}); break;
    case 4: fn(uint32_t{}); break;
    default: fn(uint16_t{}); break;
  }
}

int64_t copy_blocks(int64_t positions) {
  return (positions + kCopyWarps - 1) / kCopyWarps;
}

// ---- fused elementwise stages -----------------------------------------------------------------------

template <typename scalar_t, Activation kAct>
__global__ void bias_activation_kernel(
    scalar_t* __restrict__ x, const scalar_t* __restrict__ bias, int64_t packs, int64_t width) {
  allow_dependent_grids();  // the next GEMM may start loading its weights
  constexpr int V = kVec<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = (i * V) % width;
    Pack<scalar_t> v = load_pack(x + i * V);
    const Pack<scalar_t> b = load_pack(bias + col);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      v.v[j] = static_cast<scalar_t>(activate<scalar_t, kAct>(static_cast<float>(v.v[j]) + static_cast<float>(b.v[j])));
    }
    store_pack(x + i * V, v);
  }
}

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32.
__device__ __forceinline__ float block_sum(float value) {
  __shared__ float warp_sums[32];
  __shared__ float total;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    if (lane == 0) total = value;
  }
  __syncthreads();
  return total;
}

// The threads that hold one row of a LayerNorm: the whole block (a row per block), or kLanes lanes of one warp
// (a row per warp or per half warp, no shared memory and no barrier, for narrow rows: see launch_rows).
struct BlockRow {
  __device__ int64_t row() const { return blockIdx.x; }
  __device__ int lane() const { return threadIdx.x; }
  __device__ int lanes() const { return blockDim.x; }
  __device__ float sum(float value) const { return block_sum(value); }
};

template <int kLanes>
struct LaneRow {
  static_assert(kLanes == 16 || kLanes == 32);
  __device__ int64_t row() const {
    return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  }
  __device__ int lane() const { return threadIdx.x % kLanes; }
  __device__ int lanes() const { return kLanes; }
  __device__ float sum(float value) const {
    // The mask names this row's lanes only (xor offsets below kLanes stay among them), so a half warp whose
    // other half is past the last row, and has returned, reduces alone.
    const unsigned mask = kLanes == 32 ? 0xffffffffu : 0xffffu << (threadIdx.x & 16);
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(mask, value, offset);
    return value;
  }
};

// Narrow rows take lanes of a warp each, not a block: a warp per row where that needs at most kMaxWarpRowPacks
// 16-byte packs per lane (float16 / bfloat16 rows of up to 512 values: MiniLM's 384), a half warp per row where
// half a warp takes it in at most kMaxHalfWarpRowPacks and there are more rows than the GPU holds warps at once. On
// an H100 at bs128 var from graphs, a warp per row took MiniLM's 12 LayerNorms from 0.142 to 0.101 ms and its
// embeddings from 0.024 to 0.020 (a block of 64 threads, 48 of them with a pack, per row before). Half a warp per
// MiniLM row (3 packs a lane) was 1.4% faster from graphs at bs128 var (9,088 rows), where a warp per row needs a
// second round of warps, and 4.8% slower at bs32 var (2,176 rows), where half as many warps, each with 3 loads in a
// row, hide less of the loads' latency (docs/benchmarks.md, "LayerNorm rows on half a warp"). Taking half warps
// only past the resident warps gave both: 0.783 / 0.785 ms at bs128 var and 0.341 / 0.347 at bs32 var
// (docs/benchmarks.md, "Half-warp rows past the resident warps"). At bert-base's 768 (3 packs per lane of a warp) a
// warp per row was no gain: its 24 LayerNorms took 0.292 against 0.316 ms eager at bs128 var, but 0.320 against
// 0.316 from graphs, and 0.105 / 0.109 against 0.097 / 0.090 ms at bs32 var (branch attempt/ln-warp-warm-tune).
constexpr int kMaxWarpRowPacks = 2;
constexpr int kMaxHalfWarpRowPacks = 3;
constexpr int kLaneRowThreads = 256;

// The warps the GPU holds at once by its SMs' thread limit: past this many rows, a warp per row runs in more
// than one round.
int resident_warps() {
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  return properties->multiProcessorCount * (properties->maxThreadsPerMultiProcessor / 32);
}

int64_t lane_row_blocks(int64_t rows, int lanes) {
  const int64_t rows_per_block = kLaneRowThreads / lanes;
  return (rows + rows_per_block - 1) / rows_per_block;
}

int block_row_threads(int64_t packs) {
  return static_cast<int>((packs + 31) / 32 * 32);
}

// The column of pack p of this thread's share of a row: packs interleave across the row's threads, so a
// warp's loads of one pack index are contiguous.
template <typename scalar_t, typename Row>
__device__ __forceinline__ int pack_column(const Row& row, int p) {
  return (p * row.lanes() + row.lane()) * kVec<scalar_t>;
}

// The first half of a LayerNorm's row: v = a + b + c in float, over this thread's packs of the row (those
// at or past `width` are left unset); returns the sum of what it set. a, b and c point at the row's start.
template <typename scalar_t, int kPacks, typename Row>
__device__ __forceinline__ float add_rows(
    float (&v)[kPacks][kVec<scalar_t>], const Row& row, int width, const scalar_t* __restrict__ a,
    const scalar_t* __restrict__ b, const scalar_t* __restrict__ c) {
  float sum = 0.0f;
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int col = pack_column<scalar_t>(row, p);
    if (col >= width) continue;
    const Pack<scalar_t> x = load_pack(a + col), y = load_pack(b + col), z = load_pack(c + col);
#pragma unroll
    for (int j = 0; j < kVec<scalar_t>; ++j) {
      v[p][j] = static_cast<float>(x.v[j]) + static_cast<float>(y.v[j]) + static_cast<float>(z.v[j]);
      sum += v[p][j];
    }
  }
  return sum;
}

// Launches launch(packs, row, blocks, threads) with the layout for `rows` rows of `width` values: a row per
// half warp, warp or block (kMaxWarpRowPacks), `packs` a std::integral_constant of the packs per thread and `row`
// a LaneRow or a BlockRow, for the kernel's template arguments.
template <typename scalar_t, typename Launch>
void launch_rows(int64_t rows, int64_t width, Launch&& launch) {
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Three = std::integral_constant<int, 3>;
  const int64_t packs = width / kVec<scalar_t>;
  if (packs <= 16 * kMaxHalfWarpRowPacks && rows > resident_warps()) {
    const int64_t blocks = lane_row_blocks(rows, 16);
    switch ((packs + 15) / 16) {
      case 1: return launch(One{}, LaneRow<16>{}, blocks, kLaneRowThreads);
      case 2: return launch(Two{}, LaneRow<16>{}, blocks, kLaneRowThreads);
      default: return launch(Three{}, LaneRow<16>{}, blocks, kLaneRowThreads);
    }
  }
  if (packs <= 32 * kMaxWarpRowPacks) {
    const int64_t blocks = lane_row_blocks(rows, 32);
    if (packs <= 32) return launch(One{}, LaneRow<32>{}, blocks, kLaneRowThreads);
    return launch(Two{}, LaneRow<32>{}, blocks, kLaneRowThreads);
  }
  return launch(One{}, BlockRow{}, rows, block_row_threads(packs));
}

// A pack's values, already rounded to scalar_t, times `inverse` and rounded to e4m3 codes (nearest,
// saturating at +-448): the FP8 FFN's input as fusedbert.reference.fp8_ffn rounds it.
template <typename scalar_t>
__device__ __forceinline__ void store_e4m3(uint8_t* __restrict__ codes, const Pack<scalar_t>& pack, float inverse) {
  constexpr int V = kVec<scalar_t>;
  struct alignas(V) E4m3Pack {
    __nv_fp8x2_storage_t pairs[V / 2];
  } out;
#pragma unroll
  for (int j = 0; j < V / 2; ++j) {
    const float2 pair = make_float2(static_cast<float>(pack.v[2 * j]) * inverse,
                                    static_cast<float>(pack.v[2 * j + 1]) * inverse);
    out.pairs[j] = __nv_cvt_float2_to_fp8x2(pair, __NV_SATFINITE, __NV_E4M3);  // .x in the low byte
  }
  *reinterpret_cast<E4m3Pack*>(codes) = out;
}

// The second half of a LayerNorm whose row is spread over `row`'s threads, kPacks 16-byte packs per thread
// at pack_column() (`v`, whose values this thread has added into `sum`; packs at or past `width` hold
// none): mean and centred variance in two passes over registers (the one-pass E[x^2] - E[x]^2 form loses
// digits on BERT's large-mean activations), then out_row[col...] = (v - mean) * rstd * gamma + beta, and
// into codes_row as e4m3(out * *code_inverse) when codes_row is given.
template <typename scalar_t, int kPacks, typename Row>
__device__ __forceinline__ void layernorm_and_store(
    const float (&v)[kPacks][kVec<scalar_t>], float sum, const Row& row, int width, float eps,
    const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta, scalar_t* __restrict__ out_row,
    uint8_t* __restrict__ codes_row = nullptr, const float* __restrict__ code_inverse = nullptr) {
  constexpr int V = kVec<scalar_t>;
  const float mean = row.sum(sum) / width;
  float squares = 0.0f;
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    if (pack_column<scalar_t>(row, p) >= width) continue;
#pragma unroll
    for (int j = 0; j < V; ++j) squares += (v[p][j] - mean) * (v[p][j] - mean);
  }
  const float rstd = rsqrtf(row.sum(squares) / width + eps);
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int col = pack_column<scalar_t>(row, p);
    if (col >= width) continue;
    const Pack<scalar_t> g = load_pack(gamma + col);
    const Pack<scalar_t> bt = load_pack(beta + col);
    Pack<scalar_t> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = static_cast<scalar_t>((v[p][j] - mean) * rstd * static_cast<float>(g.v[j]) + static_cast<float>(bt.v[j]));
    }
    store_pack(out_row + col, out);
    if (codes_row != nullptr) store_e4m3(codes_row + col, out, *code_inverse);
  }
}

// y[row] = LayerNorm(y[row] + bias + residual[row]), the row held in registers: a single read of y and
// residual and a single write (two with e4m3 codes: codes[row] = e4m3(y[row] * *code_inverse)).
template <typename scalar_t, int kPacks, typename Row>
__global__ void bias_residual_layernorm_kernel(
    scalar_t* __restrict__ y, const scalar_t* __restrict__ bias, const scalar_t* __restrict__ residual,
    const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta, int64_t rows, int width, float eps,
    uint8_t* __restrict__ codes, const float* __restrict__ code_inverse) {
  allow_dependent_grids();  // the next GEMM may start loading its weights
  constexpr int V = kVec<scalar_t>;
  const Row row;
  const int64_t r = row.row();
  if (r >= rows) return;  // lanes past the last row; never part of a row, so reductions stay whole
  const int64_t offset = r * width;
  float v[kPacks][V];
  const float sum = add_rows<scalar_t>(v, row, width, y + offset, bias, residual + offset);
  layernorm_and_store<scalar_t>(v, sum, row, width, eps, gamma, beta, y + offset,
                                codes != nullptr ? codes + offset : nullptr, code_inverse);
}

// The last layer's second LayerNorm written straight into the padded output, so that restoring the padded
// shape costs no pass of its own: out[p] = LayerNorm(y[src] + bias + residual[src]) for each padded position p,
// src its packed row (rows_are_packed) or p itself; zeros where p is padding or src is past y's row_count rows
// (a real token beyond a capture's row bound, as in find_real_tokens).
template <typename scalar_t, int kPacks, typename Row>
__global__ void bias_residual_layernorm_scatter_kernel(
    const scalar_t* __restrict__ y, const scalar_t* __restrict__ bias, const scalar_t* __restrict__ residual,
    const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta, const int32_t* __restrict__ rank,
    const int32_t* __restrict__ cu_seqlens, int64_t positions, int64_t seq_len, bool rows_are_packed,
    int64_t row_count, int width, float eps, scalar_t* __restrict__ out) {
  constexpr int V = kVec<scalar_t>;
  const Row row;
  const int64_t position = row.row();
  if (position >= positions) return;  // lanes past the last position, so reductions stay whole
  const int32_t r = rank[position];
  const int64_t src = r < 0 ? -1 : rows_are_packed ? cu_seqlens[position / seq_len] + r : position;
  scalar_t* dst = out + position * width;
  if (src < 0 || src >= row_count) {
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = pack_column<scalar_t>(row, p);
      if (col < width) store_pack(dst + col, Pack<scalar_t>{});
    }
    return;
  }
  float v[kPacks][V];
  const float sum = add_rows<scalar_t>(v, row, width, y + src * width, bias, residual + src * width);
  layernorm_and_store<scalar_t>(v, sum, row, width, eps, gamma, beta, dst);
}

// ---- embeddings -------------------------------------------------------------------------------------

// One index tensor of fusedbert::embeddings ([B, S] int64, any strides) and the rows of its table.
struct IndexView {
  const int64_t* data;
  int64_t batch_stride;
  int64_t seq_stride;
  int64_t table_rows;

  __device__ __forceinline__ int64_t row(int64_t b, int64_t s) const {
    const int64_t index = data[b * batch_stride + s * seq_stride];
    CUDA_KERNEL_ASSERT(index >= 0 && index < table_rows);  // as torch.nn.Embedding does on CUDA
    return index;
  }
};

IndexView index_view(const at::Tensor& ids, const at::Tensor& table) {
  return {ids.const_data_ptr<int64_t>(), ids.stride(0), ids.stride(1), table.size(0)};
}

// A token per row of threads (a warp or a block, as for the LayerNorm above): its word, token type and
// position rows added in float, kPacks 16-byte packs per thread, then normalized: three row reads and one
// write per token, no intermediate tensors.
template <typename scalar_t, int kPacks, typename Row>
__global__ void embeddings_kernel(
    IndexView ids, IndexView token_types, IndexView positions, int64_t tokens, int64_t seq_len,
    const scalar_t* __restrict__ word, const scalar_t* __restrict__ token_type, const scalar_t* __restrict__ position,
    const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta, scalar_t* __restrict__ out, int width,
    float eps) {
  constexpr int V = kVec<scalar_t>;
  const Row row;
  const int64_t token = row.row();
  if (token >= tokens) return;  // lanes past the last token
  const int64_t b = token / seq_len, s = token % seq_len;
  float v[kPacks][V];
  const float sum = add_rows<scalar_t>(v, row, width, word + ids.row(b, s) * width,
                                       token_type + token_types.row(b, s) * width,
                                       position + positions.row(b, s) * width);
  layernorm_and_store<scalar_t>(v, sum, row, width, eps, gamma, beta, out + token * width);
}

template <typename scalar_t>
bool pack_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % sizeof(Pack<scalar_t>) == 0;
}

// The LayerNorms' rows (the encoder's and the embeddings') are read and written in 16-byte packs, at most 1024
// of them (a block's threads). `width_name` and `buffers_name` say what the error message calls them.
template <typename scalar_t>
void check_layernorm_rows(int64_t width, std::initializer_list<const at::Tensor*> buffers,
                          const char* width_name = "fusedbert::encoder (CUDA): the hidden size",
                          const char* buffers_name = "buffers") {
  constexpr int V = kVec<scalar_t>;
  bool aligned = true;
  for (const at::Tensor* buffer : buffers) aligned = aligned && (buffer == nullptr || pack_aligned<uint8_t>(*buffer));
  TORCH_CHECK(width % V == 0 && width / V <= 1024 && aligned, width_name, " must be a multiple of ", V, " and at most ",
              1024 * V, " with 16-byte aligned ", buffers_name, "; got ", width);
}

}  // namespace

bool current_stream_is_capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

PackedBatch find_real_tokens(const at::Tensor& attention_mask, bool read_back, int64_t row_bound) {
  const at::Tensor mask = attention_mask.contiguous();
  const int64_t batch = mask.size(0), seq_len = mask.size(1);
  TORCH_CHECK(batch * seq_len < INT32_MAX, "fusedbert::encoder (CUDA): batch * seq_len must be below 2^31; got ",
              batch, " * ", seq_len);
  const auto int32 = mask.options().dtype(at::kInt);
  const auto int64 = mask.options().dtype(at::kLong);
  PackedBatch packed;
  packed.rank_in_sequence = at::empty({batch, seq_len}, int32);
  packed.cu_seqlens = at::empty({batch + 1}, int32);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // B * S < 2^31 (checked above), so every row count fits the int32 offsets.
  const int64_t row_limit = read_back || row_bound <= 0 ? batch * seq_len : std::min(row_bound, batch * seq_len);
  const bool own_offsets = batch > 0 && !read_back && batch * seq_len * mask.element_size() <= kOwnOffsetsMaxMaskBytes;
  // What summarize_kernel reads and writes, where it runs.
  at::Tensor seqlens, first_invalid, summary;
  if (!own_offsets) {
    seqlens = at::empty({batch}, int32);
    first_invalid = at::empty({batch}, int64);
    summary = at::empty({3}, int64);
  }
  auto* invalid_ptr = own_offsets ? nullptr : reinterpret_cast<long long*>(first_invalid.data_ptr<int64_t>());
  auto* seqlens_ptr = own_offsets ? nullptr : seqlens.data_ptr<int32_t>();
  auto rank = [&](auto mask_tag, auto own_offsets_tag) {
    using mask_t = decltype(mask_tag);
    rank_real_tokens_kernel<mask_t, decltype(own_offsets_tag)::value><<<batch, kRankThreads, 0, stream>>>(
        mask.data_ptr<mask_t>(), seq_len, packed.rank_in_sequence.data_ptr<int32_t>(), seqlens_ptr, invalid_ptr,
        static_cast<int32_t>(row_limit), packed.cu_seqlens.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto rank_mask = [&](auto own_offsets_tag) {
    switch (mask.scalar_type()) {
      case at::kBool: rank(bool{}, own_offsets_tag); break;
      case at::kByte: rank(uint8_t{}, own_offsets_tag); break;
      case at::kInt: rank(int32_t{}, own_offsets_tag); break;
      case at::kLong: rank(int64_t{}, own_offsets_tag); break;
      default: TORCH_CHECK(false, "fusedbert::encoder: attention_mask must be bool, uint8, int32 or int64; got ",
                           mask.scalar_type());
    }
  };
  if (own_offsets) {
    rank_mask(std::true_type{});
  } else {
    if (batch > 0) rank_mask(std::false_type{});
    summarize_kernel<<<1, kSummaryThreads, 0, stream>>>(
        seqlens_ptr, invalid_ptr, batch, static_cast<int32_t>(row_limit),
        packed.cu_seqlens.data_ptr<int32_t>(), reinterpret_cast<long long*>(summary.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  packed.read_back = read_back;
  if (!read_back) {
    packed.packed_rows = row_limit;
    packed.max_seqlen = seq_len;
    packed.first_invalid = -1;
    return packed;
  }
  const at::Tensor host = summary.cpu();  // the call's one host synchronization
  const int64_t* values = host.data_ptr<int64_t>();
  packed.packed_rows = values[0];
  packed.max_seqlen = values[1];
  packed.first_invalid = values[2] == LLONG_MAX ? -1 : values[2];
  return packed;
}

at::Tensor gather_real_tokens(const at::Tensor& hidden, const PackedBatch& packed) {
  const int64_t positions = hidden.size(0), width = hidden.size(1);
  at::Tensor out = at::empty({packed.packed_rows, width}, hidden.options());  // every row written by the gather
  if (packed.packed_rows == 0) return out;
  const int64_t row_bytes = width * hidden.element_size();
  const int64_t seq_len = packed.rank_in_sequence.size(1);
  dispatch_copy_unit(copy_unit_bytes(row_bytes, hidden.data_ptr(), out.data_ptr()), [&](auto unit_tag) {
    using unit_t = decltype(unit_tag);
    const int64_t units = row_bytes / static_cast<int64_t>(sizeof(unit_t));
    gather_rows_kernel<unit_t><<<copy_blocks(positions), 32 * kCopyWarps, 0, at::cuda::getCurrentCUDAStream()>>>(
        static_cast<const unit_t*>(hidden.data_ptr()), packed.rank_in_sequence.data_ptr<int32_t>(),
        packed.cu_seqlens.data_ptr<int32_t>(), positions, seq_len, units, packed.packed_rows,
        static_cast<unit_t*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void bias_activation_(at::Tensor& x, const at::Tensor& bias, Activation activation) {
  const int64_t width = x.size(1);
  if (x.numel() == 0) return;
  dispatch_storage_type(x.scalar_type(), "bias_activation", [&](auto tag) {
    using scalar_t = decltype(tag);
    TORCH_CHECK(width % kVec<scalar_t> == 0 && pack_aligned<scalar_t>(x) && pack_aligned<scalar_t>(bias),
                "fusedbert::encoder (CUDA): the intermediate size must be a multiple of ", kVec<scalar_t>,
                " with 16-byte aligned buffers; got ", width);
    const int64_t packs = x.numel() / kVec<scalar_t>;
    constexpr int threads = 256;
    const int64_t blocks = std::min<int64_t>((packs + threads - 1) / threads, int64_t{1} << 16);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    auto launch = [&](auto kernel) {
      kernel<<<blocks, threads, 0, stream>>>(x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), packs, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (activation) {
      case Activation::GeluErf: launch(bias_activation_kernel<scalar_t, Activation::GeluErf>); break;
      case Activation::GeluTanh: launch(bias_activation_kernel<scalar_t, Activation::GeluTanh>); break;
      case Activation::Relu: launch(bias_activation_kernel<scalar_t, Activation::Relu>); break;
    }
  });
}

void bias_residual_layernorm_(
    at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& gamma,
    const at::Tensor& beta, double eps, const E4m3Output& codes) {
  const int64_t rows = y.size(0), width = y.size(1);
  if (rows == 0) return;
  dispatch_storage_type(y.scalar_type(), "bias_residual_layernorm", [&](auto tag) {
    using scalar_t = decltype(tag);
    check_layernorm_rows<scalar_t>(width, {&y, &bias, &residual, &gamma, &beta, codes.codes});
    launch_rows<scalar_t>(rows, width, [&](auto packs, auto row, int64_t blocks, int threads) {
      bias_residual_layernorm_kernel<scalar_t, decltype(packs)::value, decltype(row)>
          <<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
              y.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
              gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), rows, static_cast<int>(width),
              static_cast<float>(eps), codes.codes ? static_cast<uint8_t*>(codes.codes->data_ptr()) : nullptr,
              codes.inverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor bias_residual_layernorm_scatter(
    const at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& gamma,
    const at::Tensor& beta, double eps, const PackedBatch& packed, bool rows_are_packed) {
  const int64_t batch = packed.rank_in_sequence.size(0), seq_len = packed.rank_in_sequence.size(1);
  const int64_t positions = batch * seq_len, width = y.size(1);
  at::Tensor out = at::empty({positions, width}, y.options());
  if (out.numel() == 0) return out;
  dispatch_storage_type(y.scalar_type(), "bias_residual_layernorm_scatter", [&](auto tag) {
    using scalar_t = decltype(tag);
    check_layernorm_rows<scalar_t>(width, {&y, &bias, &residual, &gamma, &beta, &out});
    launch_rows<scalar_t>(positions, width, [&](auto packs, auto row, int64_t blocks, int threads) {
      bias_residual_layernorm_scatter_kernel<scalar_t, decltype(packs)::value, decltype(row)>
          <<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
              y.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), residual.const_data_ptr<scalar_t>(),
              gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
              packed.rank_in_sequence.const_data_ptr<int32_t>(), packed.cu_seqlens.const_data_ptr<int32_t>(), positions,
              seq_len, rows_are_packed, y.size(0), static_cast<int>(width), static_cast<float>(eps),
              out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

void embeddings(const EmbeddingIndices& indices, const at::Tensor& word, const at::Tensor& token_type,
                const at::Tensor& position, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                at::Tensor& out) {
  if (out.numel() == 0) return;
  dispatch_storage_type(word.scalar_type(), "embeddings", [&](auto tag) {
    using scalar_t = decltype(tag);
    const int64_t width = indices.width;
    check_layernorm_rows<scalar_t>(width, {&word, &token_type, &position, &gamma, &beta, &out},
                                   "fusedbert::embeddings (CUDA): the embedding width", "tables");
    const int64_t tokens = indices.batch * indices.seq_len;
    launch_rows<scalar_t>(tokens, width, [&](auto packs, auto row, int64_t blocks, int threads) {
      embeddings_kernel<scalar_t, decltype(packs)::value, decltype(row)>
          <<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
              index_view(indices.input_ids, word), index_view(indices.token_type_ids, token_type),
              index_view(indices.position_ids, position), tokens, indices.seq_len, word.const_data_ptr<scalar_t>(),
              token_type.const_data_ptr<scalar_t>(), position.const_data_ptr<scalar_t>(),
              gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
              static_cast<int>(width), static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fusedbert::cuda
