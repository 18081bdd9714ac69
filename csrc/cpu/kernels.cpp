// Vectorized with ATen's Vectorized<float>. setup.py compiles this file for AVX2+FMA on x86-64 (every
// server CPU of the last decade); the GEMMs around these kernels pick AVX-512 / AVX512-BF16 / AMX at run
// time inside MKL and oneDNN, so the ISA chosen here only affects the elementwise stages and attention.
#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include "kernels.h"

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

// dst[i] = op(dst[i]) over n floats: vector body, scalar tail through the same op on a padded vector.
template <typename Op>
inline void map_inplace(float* dst, int64_t n, const Op& op) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) op(Vec::loadu(dst + i)).store(dst + i);
  if (i < n) op(Vec::loadu(dst + i, n - i)).store(dst + i, n - i);
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

// One (sequence, head) task: gather this head's Q (pre-scaled), K transposed and V into float buffers
// with the bias added, then for each query row softmax(q K^T) V. K is transposed so that both inner loops
// (scores over keys, context over head_dim) are unit-stride axpys that vectorize for any head_dim.
template <typename scalar_t>
void attention_kernel(
    const at::Tensor& qkv, const at::Tensor& qkv_bias, at::Tensor& context, const int64_t* cu_seqlens,
    int64_t batch, int64_t num_heads, const bool* key_is_real) {
  const int64_t width = context.size(1);
  const int64_t head_dim = width / num_heads;
  const scalar_t* qkv_data = qkv.data_ptr<scalar_t>();
  scalar_t* ctx_data = context.data_ptr<scalar_t>();
  std::vector<float> bias_f(3 * width);
  to_float(qkv_bias.data_ptr<scalar_t>(), bias_f.data(), 3 * width);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  at::parallel_for(0, batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q, kt, v, scores, acc(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_heads, h = task % num_heads;
      const int64_t start = cu_seqlens[b], len = cu_seqlens[b + 1] - cu_seqlens[b];
      if (len == 0) continue;
      q.resize(len * head_dim);
      kt.resize(head_dim * len);
      v.resize(len * head_dim);
      scores.resize(len);
      const float* bq = bias_f.data() + h * head_dim;
      const float* bk = bq + width;
      const float* bv = bk + width;
      for (int64_t j = 0; j < len; ++j) {
        const scalar_t* row = qkv_data + (start + j) * 3 * width + h * head_dim;
        for (int64_t c = 0; c < head_dim; ++c) {
          q[j * head_dim + c] = (static_cast<float>(row[c]) + bq[c]) * scale;
          kt[c * len + j] = static_cast<float>(row[width + c]) + bk[c];
          v[j * head_dim + c] = static_cast<float>(row[2 * width + c]) + bv[c];
        }
      }
      for (int64_t i = 0; i < len; ++i) {
        std::fill(scores.begin(), scores.end(), 0.0f);
        for (int64_t c = 0; c < head_dim; ++c) {
          const Vec qc(q[i * head_dim + c]);
          const float* krow = kt.data() + c * len;
          int64_t j = 0;
          for (; j + kLanes <= len; j += kLanes) {
            at::vec::fmadd(qc, Vec::loadu(krow + j), Vec::loadu(scores.data() + j)).store(scores.data() + j);
          }
          for (; j < len; ++j) scores[j] += q[i * head_dim + c] * krow[j];
        }
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < len; ++j) {
          if (key_is_real && !key_is_real[start + j]) scores[j] = -std::numeric_limits<float>::infinity();
          max_score = std::max(max_score, scores[j]);
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float denom = 0.0f;
        if (max_score != -std::numeric_limits<float>::infinity()) {  // else every key is masked: zeros
          const Vec max_v(max_score);
          map_inplace(scores.data(), len, [&](const Vec& s) { return (s - max_v).exp(); });
          for (int64_t j = 0; j < len; ++j) {
            const float p = scores[j];
            if (p == 0.0f) continue;
            denom += p;
            const Vec p_v(p);
            const float* vrow = v.data() + j * head_dim;
            int64_t c = 0;
            for (; c + kLanes <= head_dim; c += kLanes) {
              at::vec::fmadd(p_v, Vec::loadu(vrow + c), Vec::loadu(acc.data() + c)).store(acc.data() + c);
            }
            for (; c < head_dim; ++c) acc[c] += p * vrow[c];
          }
        }
        const float inv = denom > 0.0f ? 1.0f / denom : 0.0f;
        scalar_t* out = ctx_data + (start + i) * width + h * head_dim;
        for (int64_t c = 0; c < head_dim; ++c) out[c] = static_cast<scalar_t>(acc[c] * inv);
      }
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
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "fusedbert_packed_attention", [&] {
    attention_kernel<scalar_t>(qkv, qkv_bias, context, cu_seqlens, batch, num_heads, key_is_real);
  });
}

}  // namespace fusedbert::cpu
