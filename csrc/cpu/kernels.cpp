// Vectorized with ATen's Vectorized<float>. setup.py compiles this file for AVX2+FMA on x86-64 (every
// server CPU of the last decade); the GEMMs around these kernels pick AVX-512 / AVX512-BF16 / AMX at run
// time inside MKL and oneDNN, so the ISA chosen here only affects the elementwise stages and attention.
#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include "kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fusedbert::cpu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void from_float(const float* src, scalar_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

inline Vec gelu_erf(const Vec& x) {
  const Vec half(0.5f), one(1.0f), inv_sqrt2(static_cast<float>(M_SQRT1_2));
  return half * x * (one + (x * inv_sqrt2).erf());
}

inline Vec gelu_tanh(const Vec& x) {
  const Vec half(0.5f), one(1.0f), k0(0.7978845608028654f), k1(0.044715f);
  return half * x * (one + (k0 * (x + k1 * x * x * x)).tanh());
}

inline Vec relu(const Vec& x) {
  return at::vec::maximum(x, Vec(0.0f));
}

// Rows per parallel task: enough elements that scheduling cost disappears, few enough to balance.
inline int64_t row_grain(int64_t row_width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_width));
}

template <typename scalar_t>
void bias_activation_kernel(at::Tensor& x, const at::Tensor& bias, Activation activation) {
  const int64_t rows = x.size(0), width = x.size(1);
  scalar_t* data = x.data_ptr<scalar_t>();
  std::vector<float> bias_f(width);
  to_float(bias.data_ptr<scalar_t>(), bias_f.data(), width);
  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<float> row(width);
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* out = data + r * width;
      to_float(out, row.data(), width);
      int64_t i = 0;
      auto apply = [&](const Vec& v) {
        switch (activation) {
          case Activation::GeluErf: return gelu_erf(v);
          case Activation::GeluTanh: return gelu_tanh(v);
          case Activation::Relu: return relu(v);
        }
        return v;
      };
      for (; i + kLanes <= width; i += kLanes) {
        apply(Vec::loadu(row.data() + i) + Vec::loadu(bias_f.data() + i)).store(row.data() + i);
      }
      if (i < width) {
        const int64_t n = width - i;
        apply(Vec::loadu(row.data() + i, n) + Vec::loadu(bias_f.data() + i, n)).store(row.data() + i, n);
      }
      from_float(row.data(), out, width);
    }
  });
}

template <typename scalar_t>
void bias_residual_layernorm_kernel(
    at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& gamma,
    const at::Tensor& beta, double eps) {
  const int64_t rows = y.size(0), width = y.size(1);
  scalar_t* y_data = y.data_ptr<scalar_t>();
  const scalar_t* res_data = residual.data_ptr<scalar_t>();
  std::vector<float> bias_f(width), gamma_f(width), beta_f(width);
  to_float(bias.data_ptr<scalar_t>(), bias_f.data(), width);
  to_float(gamma.data_ptr<scalar_t>(), gamma_f.data(), width);
  to_float(beta.data_ptr<scalar_t>(), beta_f.data(), width);
  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<float> row(width), res(width);
    for (int64_t r = begin; r < end; ++r) {
      to_float(y_data + r * width, row.data(), width);
      to_float(res_data + r * width, res.data(), width);
      // Two passes (mean, then centred squares) in float: the one-pass E[x^2]-E[x]^2 form loses
      // digits on BERT's large-mean activations.
      Vec sum_v(0.0f);
      int64_t i = 0;
      for (; i + kLanes <= width; i += kLanes) {
        Vec v = Vec::loadu(row.data() + i) + Vec::loadu(bias_f.data() + i) + Vec::loadu(res.data() + i);
        v.store(row.data() + i);
        sum_v = sum_v + v;
      }
      float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum_v);
      for (; i < width; ++i) {
        row[i] += bias_f[i] + res[i];
        sum += row[i];
      }
      const float mean = sum / static_cast<float>(width);
      const Vec mean_v(mean);
      Vec sq_v(0.0f);
      for (i = 0; i + kLanes <= width; i += kLanes) {
        const Vec d = Vec::loadu(row.data() + i) - mean_v;
        sq_v = at::vec::fmadd(d, d, sq_v);
      }
      float sq = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sq_v);
      for (; i < width; ++i) sq += (row[i] - mean) * (row[i] - mean);
      const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(width) + static_cast<float>(eps));
      const Vec rstd_v(rstd);
      for (i = 0; i + kLanes <= width; i += kLanes) {
        const Vec v = (Vec::loadu(row.data() + i) - mean_v) * rstd_v;
        at::vec::fmadd(v, Vec::loadu(gamma_f.data() + i), Vec::loadu(beta_f.data() + i)).store(row.data() + i);
      }
      for (; i < width; ++i) row[i] = (row[i] - mean) * rstd * gamma_f[i] + beta_f[i];
      from_float(row.data(), y_data + r * width, width);
    }
  });
}

// One task per sequence: its rows of qkv, in float32 with the bias added, become [3, heads, L, d] views;
// two batched GEMMs over the heads (MKL) and a float softmax give the context. Inside at::parallel_for
// the ATen calls run single-threaded, so sequences, not GEMMs, share the cores.
void attention_by_sequence(
    const at::Tensor& qkv, const at::Tensor& qkv_bias, at::Tensor& context, const int64_t* cu_seqlens,
    int64_t batch, int64_t num_heads, const bool* key_is_real) {
  const int64_t width = context.size(1);
  const int64_t head_dim = width / num_heads;
  const at::Tensor bias_f = qkv_bias.to(at::kFloat);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = cu_seqlens[b], len = cu_seqlens[b + 1] - cu_seqlens[b];
      if (len == 0) continue;
      const at::Tensor rows = qkv.narrow(0, start, len).to(at::kFloat).add_(bias_f);
      const at::Tensor heads = rows.view({len, 3, num_heads, head_dim}).permute({1, 2, 0, 3});
      at::Tensor scores = at::bmm(heads[0] * scale, heads[1].transpose(1, 2));  // [heads, L, L]
      if (key_is_real) {
        const at::Tensor keys = at::from_blob(const_cast<bool*>(key_is_real + start), {len}, at::kBool);
        if (!keys.any().item<bool>()) {  // no real key: this (padding) sequence's rows are zeros
          context.narrow(0, start, len).zero_();
          continue;
        }
        scores.masked_fill_(keys.logical_not().view({1, 1, len}), -std::numeric_limits<float>::infinity());
      }
      const at::Tensor probs = at::_softmax(scores, -1, false);
      const at::Tensor ctx = at::bmm(probs, heads[2]);  // [heads, L, d]
      context.narrow(0, start, len).copy_(ctx.permute({1, 0, 2}).reshape({len, width}));
    }
  });
}

}  // namespace

void bias_activation_(at::Tensor& x, const at::Tensor& bias, Activation activation) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fusedbert_bias_activation", [&] {
    bias_activation_kernel<scalar_t>(x, bias, activation);
  });
}

void bias_residual_layernorm_(
    at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& gamma,
    const at::Tensor& beta, double eps) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "fusedbert_bias_residual_layernorm", [&] {
    bias_residual_layernorm_kernel<scalar_t>(y, bias, residual, gamma, beta, eps);
  });
}

void packed_attention(
    const at::Tensor& qkv, const at::Tensor& qkv_bias, at::Tensor& context, const int64_t* cu_seqlens,
    int64_t batch, int64_t num_heads, const bool* key_is_real) {
  attention_by_sequence(qkv, qkv_bias, context, cu_seqlens, batch, num_heads, key_is_real);
}

}  // namespace fusedbert::cpu
