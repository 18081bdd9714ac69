// Self-attention over packed sequences for float16 / bfloat16: the encoder's attention on real tokens.
//
// Why not ATen's varlen flash attention: BERT batches are many short sequences, and flash's 128-query
// tiles spend most of their work on rows past a short sequence's end (the profile showed 47 us per
// bert-base layer at 128 sequences of 8..128 tokens, 15% of the forward). Here a CTA takes 64 queries
// of one head of one sequence, steps over that sequence's keys 64 at a time with an online softmax
// (tensor-core mma.sync, float32 accumulation and softmax; the next 64 keys load while these are used),
// and never touches another sequence's rows.
#include "kernels.h"

#include "dependent_launch.cuh"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace fusedbert::cuda {
namespace {

constexpr int kTile = 64;               // queries per CTA; keys per step
constexpr int kWarps = kTile / 16;      // each warp owns 16 query rows (one mma row block)
constexpr int kThreads = kWarps * 32;
constexpr int kStaticSharedLimit = 48 * 1024;

// ---- PTX wrappers ----------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without a register round trip; zero-filled when !valid (src is not read).
__device__ __forceinline__ void copy_16_async(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void commit_async_copies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `kPending` of the committed groups are still in flight (the newest ones).
template <int kPending>
__device__ __forceinline__ void wait_async_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 16-bit matrices from shared memory; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

// c[16x8] += a[16x16] @ b[16x8], float32 accumulation, in the fragment layouts of mma.m16n8k16.
template <typename scalar_t>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to the storage type, packed in one register (lower address in the low half).
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// ---- the kernel ------------------------------------------------------------------------------------
//
// Grid (query tiles, heads, sequences). Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * g + t;
// an accumulator tile c[16x8] holds rows g and g + 8, columns 2t and 2t + 1 of each. So every thread
// owns two query rows, and its softmax statistics are reduced over the 4 lanes of its group.
//
// Head size 64 is compiled for 4 CTAs per SM (128 registers; unbounded, ptxas takes 167 and 3 fit). The
// kernel is latency-bound, and on an H200 the fourth CTA took one bert-base layer at 128 sequences of
// 8..128 tokens from 36.0 to 33.2 us (32 sequences: 12.4 to 10.7). Asking for 5 or 6 (one K/V buffer,
// 80 to 96 registers with spills) was slower, and so was 6 at head size 32 for MiniLM at 32 sequences.
// Skipping the blocks of keys past a sequence's end in its last step with an early break in the QK^T and PV
// loops was slower, on an H100: 34.7 -> 37.6 us per bert-base layer at 128 sequences of 8..128 tokens.
// Skipping them with the block count as a template argument (attend_step) is faster: 34.0 -> 32.8-33.1 us
// there, MiniLM 24.7 -> 23.0-23.3, 32 sequences 10.9 -> 10.5-10.6 and 8.8 -> 8.3 (H100, two runs of
// benchmarks.attention each; Nsight Compute had found the kernel short of eligible warps, not bytes).
// Storing the output through shared memory, 16 bytes a lane instead of 4, gained nothing more.
// Giving a CTA several heads in turn, the next head's rows loading while this one's are used (two stages of
// Q, K and V), was slower: on an H100 at 128 sequences, 36.7 us with one head per CTA, 39.9 with 2, 43.8
// with 3, 47.6 with 4, 52.9 with 6, flash varlen 46-47 throughout. More CTAs in flight beat overlap in one.
// Head size 32 stays unbounded (113 registers, 4 CTAs): compiled for 5 (96 registers), MiniLM's layer went
// from 24.5 to 23.1 us at 128 sequences but from 8.8 to 9.1 at 32 (H100, one run each). The order in which
// sequences' CTAs start (blockIdx.z, batch order) was probed too: longest first changed nothing for
// bert-base; shortest first was 6% faster at 128 sequences and 6% slower at 32 (docs/benchmarks.md).
template <int kHeadDim>
constexpr int kMinBlocksPerSm = kHeadDim == 64 ? 4 : 1;

template <typename scalar_t, int kHeadDim>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm<kHeadDim>) packed_attention_kernel(
    const scalar_t* __restrict__ qkv, const int32_t* __restrict__ cu_seqlens, int num_heads, float scale_log2,
    scalar_t* __restrict__ context) {
  allow_dependent_grids();  // the output projection may start loading its weights
  constexpr int kPitch = kHeadDim + 8;  // shared row pitch: 16 bytes of slack keep ldmatrix rows in distinct banks
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  extern __shared__ uint4 shared_storage[];
  scalar_t* q_tile = reinterpret_cast<scalar_t*>(shared_storage);
  // Two buffers of keys and values: the next step's rows load while this step's are used.
  scalar_t* const kv_tiles = q_tile + kTile * kPitch;  // [buffer][K, V][kTile][kPitch]

  const int start = cu_seqlens[blockIdx.z];
  const int len = cu_seqlens[blockIdx.z + 1] - start;
  const int q0 = blockIdx.x * kTile;
  if (q0 >= len) return;  // grid sized by the longest sequence

  const int width = num_heads * kHeadDim;
  const int64_t pitch = 3 * static_cast<int64_t>(width);  // qkv row: [Q | K | V], heads side by side in each
  const scalar_t* q_rows = qkv + start * pitch + blockIdx.y * kHeadDim;
  const scalar_t* k_rows = q_rows + width;
  const scalar_t* v_rows = k_rows + width;
  // Rows past the sequence's end are zero-filled: a padding key then scores exp(-inf) = 0 against a
  // finite value row (a stale row could hold NaN, and 0 * NaN poisons the sum).
  auto load_rows = [&](scalar_t* tile, const scalar_t* rows, int first) {
    for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
      const int r = i / kChunks, chunk = i % kChunks;
      const bool valid = first + r < len;
      copy_16_async(tile + r * kPitch + chunk * 8, valid ? rows + (first + r) * pitch + chunk * 8 : rows, valid);
    }
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const int warp_row = warp * 16;
  const bool warp_has_rows = q0 + warp_row < len;

  uint32_t q_frag[kHeadDim / 16][4];
  float out[kHeadDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this thread's share; the group's lanes are summed at the end

  auto load_step = [&](int step) {
    scalar_t* k_tile = kv_tiles + (step % 2) * 2 * kTile * kPitch;
    load_rows(k_tile, k_rows, step * kTile);
    load_rows(k_tile + kTile * kPitch, v_rows, step * kTile);
    commit_async_copies();
  };

  // This warp's 16 queries against the keys [k0, k0 + 16 * kKeyBlocks) of the sequence, folded into out /
  // row_max / row_sum. A step covers only the 16-key blocks that hold real keys: the last step of a sequence
  // usually holds fewer than 64, and its blocks past the end would add exp(-inf) = 0. The block count is a
  // template argument (std::integral_constant), so that every loop stays unrolled and the fragments stay in
  // registers; an early break on a runtime count was slower (see above).
  auto attend_step = [&](auto key_blocks, const scalar_t* k_tile, const scalar_t* v_tile, int k0) {
    constexpr int kKeyBlocks = decltype(key_blocks)::value;
    constexpr int kScoreTiles = 2 * kKeyBlocks;  // 8 keys each
    if (k0 == 0) {
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        load_matrices(q_frag[kk], q_tile + (warp_row + lane % 16) * kPitch + kk * 16 + (lane / 16) * 8);
      }
    }

    // scores[16 x 16 * kKeyBlocks] = Q K^T for this warp's rows: K's rows are the mma's column-major B
    // operand as stored.
    float scores[kScoreTiles][4] = {};
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
      for (int n = 0; n < kScoreTiles; n += 2) {
        uint32_t k_frag[4];
        load_matrices(k_frag, k_tile + (n * 8 + lane % 8 + (lane / 16) * 8) * kPitch + kk * 16 + (lane / 8 % 2) * 8);
        mma_16x8x16<scalar_t>(scores[n], q_frag[kk], k_frag[0], k_frag[1]);
        mma_16x8x16<scalar_t>(scores[n + 1], q_frag[kk], k_frag[2], k_frag[3]);
      }
    }

    // Online softmax: rescale what came before by exp(old max - new max).
    // Keys past the sequence's end score -inf. (Masking only in a step that holds the end, behind a branch,
    // spilled registers at head size 64.)
    const int keys_here = len - k0;
    float step_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (n * 8 + 2 * t + e % 2 >= keys_here) scores[n][e] = -INFINITY;
        step_max[e / 2] = fmaxf(step_max[e / 2], scores[n][e]);
      }
    }
    float rescale[2], scaled_max[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(0xffffffffu, step_max[r], 1));
      step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(0xffffffffu, step_max[r], 2));
      const float new_max = fmaxf(row_max[r], step_max[r]);  // finite: this step holds a real key
      rescale[r] = exp2f((row_max[r] - new_max) * scale_log2);
      row_max[r] = new_max;
      scaled_max[r] = new_max * scale_log2;
      row_sum[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        scores[n][e] = exp2f(fmaf(scores[n][e], scale_log2, -scaled_max[e / 2]));  // one FFMA, not FADD + FMUL
        row_sum[e / 2] += scores[n][e];
      }
    }
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) {
      out[d][0] *= rescale[0];
      out[d][1] *= rescale[0];
      out[d][2] *= rescale[1];
      out[d][3] *= rescale[1];
    }

    // out += P V: two adjacent score tiles are, rounded, the A fragment of 16 keys; V's rows are the
    // row-major B operand, so they are loaded transposed.
#pragma unroll
    for (int kk = 0; kk < kKeyBlocks; ++kk) {
      const uint32_t p[4] = {
          pack_pair<scalar_t>(scores[2 * kk][0], scores[2 * kk][1]),
          pack_pair<scalar_t>(scores[2 * kk][2], scores[2 * kk][3]),
          pack_pair<scalar_t>(scores[2 * kk + 1][0], scores[2 * kk + 1][1]),
          pack_pair<scalar_t>(scores[2 * kk + 1][2], scores[2 * kk + 1][3]),
      };
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; d += 2) {
        uint32_t v_frag[4];
        load_matrices_transposed(
            v_frag, v_tile + (kk * 16 + lane % 8 + (lane / 8 % 2) * 8) * kPitch + d * 8 + (lane / 16) * 8);
        mma_16x8x16<scalar_t>(out[d], p, v_frag[0], v_frag[1]);
        mma_16x8x16<scalar_t>(out[d + 1], p, v_frag[2], v_frag[3]);
      }
    }
  };

  const int steps = (len + kTile - 1) / kTile;
  load_rows(q_tile, q_rows, q0);
  load_step(0);  // one group with Q
  if (steps > 1) load_step(1);
  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      wait_async_copies<1>();  // this step's group has landed; the next one may still be in flight
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    const scalar_t* k_tile = kv_tiles + (step % 2) * 2 * kTile * kPitch;
    if (warp_has_rows) {  // all warps reach each barrier
      const scalar_t* v_tile = k_tile + kTile * kPitch;
      const int k0 = step * kTile;
      static_assert(kTile == 64, "the dispatch below counts 16-key blocks of a 64-key step");
      switch ((min(len - k0, kTile) + 15) / 16) {
        case 1: attend_step(std::integral_constant<int, 1>{}, k_tile, v_tile, k0); break;
        case 2: attend_step(std::integral_constant<int, 2>{}, k_tile, v_tile, k0); break;
        case 3: attend_step(std::integral_constant<int, 3>{}, k_tile, v_tile, k0); break;
        default: attend_step(std::integral_constant<int, 4>{}, k_tile, v_tile, k0); break;
      }
    }
    if (step + 2 < steps) {
      __syncthreads();  // every warp is done with this buffer before it is refilled
      load_step(step + 2);
    }
  }
  if (!warp_has_rows) return;

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    const int q = q0 + warp_row + lane / 4 + 8 * r;
    if (q >= len) continue;
    const float inverse = 1.0f / row_sum[r];
    scalar_t* dst = context + (start + q) * static_cast<int64_t>(width) + blockIdx.y * kHeadDim + 2 * t;
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) {
      *reinterpret_cast<uint32_t*>(dst + d * 8) =
          pack_pair<scalar_t>(out[d][2 * r] * inverse, out[d][2 * r + 1] * inverse);
    }
  }
}

template <typename scalar_t, int kHeadDim>
void launch(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads,
            at::Tensor& context) {
  const auto kernel = packed_attention_kernel<scalar_t, kHeadDim>;
  constexpr int shared_bytes = 5 * kTile * (kHeadDim + 8) * sizeof(scalar_t);  // Q, then K and V twice
  if constexpr (shared_bytes > kStaticSharedLimit) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  }
  const dim3 grid((max_seqlen + kTile - 1) / kTile, num_heads, cu_seqlens.size(0) - 1);
  const float scale_log2 = static_cast<float>(M_LOG2E / std::sqrt(static_cast<double>(kHeadDim)));
  kernel<<<grid, kThreads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      qkv.data_ptr<scalar_t>(), cu_seqlens.data_ptr<int32_t>(), static_cast<int>(num_heads), scale_log2,
      context.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void dispatch_head_dim(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads,
                       int64_t head_dim, at::Tensor& context) {
  switch (head_dim) {
    case 32: launch<scalar_t, 32>(qkv, cu_seqlens, max_seqlen, num_heads, context); break;
    case 64: launch<scalar_t, 64>(qkv, cu_seqlens, max_seqlen, num_heads, context); break;
    case 128: launch<scalar_t, 128>(qkv, cu_seqlens, max_seqlen, num_heads, context); break;
    default: TORCH_CHECK(false, "fusedbert packed attention: head size ", head_dim, " is not 32, 64 or 128");
  }
}

}  // namespace

bool packed_attention_supports(at::ScalarType dtype, int64_t head_dim) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) && (head_dim == 32 || head_dim == 64 || head_dim == 128);
}

at::Tensor packed_attention(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                            int64_t num_heads) {
  const int64_t rows = qkv.size(0), width = qkv.size(1) / 3, batch = cu_seqlens.size(0) - 1;
  const int64_t head_dim = width / num_heads;
  TORCH_CHECK(packed_attention_supports(qkv.scalar_type(), head_dim), "fusedbert packed attention: needs float16 or "
              "bfloat16 with a head size of 32, 64 or 128; got ", qkv.scalar_type(), ", head size ", head_dim);
  TORCH_CHECK(qkv.is_contiguous() && reinterpret_cast<uintptr_t>(qkv.data_ptr()) % 16 == 0,
              "fusedbert packed attention: qkv must be contiguous and 16-byte aligned");
  TORCH_CHECK(batch < 65536, "fusedbert packed attention: at most 65535 sequences per call; got ", batch);
  at::Tensor context = at::empty({rows, width}, qkv.options());
  if (rows == 0 || batch == 0 || max_seqlen == 0) return context;
  if (qkv.scalar_type() == at::kHalf) {
    dispatch_head_dim<at::Half>(qkv, cu_seqlens, max_seqlen, num_heads, head_dim, context);
  } else {
    dispatch_head_dim<at::BFloat16>(qkv, cu_seqlens, max_seqlen, num_heads, head_dim, context);
  }
  return context;
}

}  // namespace fusedbert::cuda
