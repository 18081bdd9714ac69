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
#include <type_traits>
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

// row = LayerNorm(row) * gamma + beta, in place, in float. Two passes (mean, then centred squares): the
// one-pass E[x^2] - E[x]^2 form loses digits on BERT's large-mean activations.
void normalize_row_(float* row, const float* gamma, const float* beta, int64_t width, float eps) {
  Vec sum_v(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= width; i += kLanes) sum_v = sum_v + Vec::loadu(row + i);
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum_v);
  for (; i < width; ++i) sum += row[i];
  const float mean = sum / static_cast<float>(width);
  const Vec mean_v(mean);
  Vec sq_v(0.0f);
  for (i = 0; i + kLanes <= width; i += kLanes) {
    const Vec d = Vec::loadu(row + i) - mean_v;
    sq_v = at::vec::fmadd(d, d, sq_v);
  }
  float sq = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sq_v);
  for (; i < width; ++i) sq += (row[i] - mean) * (row[i] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(width) + eps);
  const Vec rstd_v(rstd);
  for (i = 0; i + kLanes <= width; i += kLanes) {
    const Vec v = (Vec::loadu(row + i) - mean_v) * rstd_v;
    at::vec::fmadd(v, Vec::loadu(gamma + i), Vec::loadu(beta + i)).store(row + i);
  }
  for (; i < width; ++i) row[i] = (row[i] - mean) * rstd * gamma[i] + beta[i];
}

template <typename scalar_t>
std::vector<float> float_copy(const at::Tensor& t) {
  std::vector<float> values(t.numel());
  to_float(t.data_ptr<scalar_t>(), values.data(), t.numel());
  return values;
}

template <typename scalar_t>
void bias_residual_layernorm_kernel(
    at::Tensor& y, const at::Tensor& bias, const at::Tensor& residual, const at::Tensor& gamma,
    const at::Tensor& beta, double eps) {
  const int64_t rows = y.size(0), width = y.size(1);
  scalar_t* y_data = y.data_ptr<scalar_t>();
  const scalar_t* res_data = residual.data_ptr<scalar_t>();
  const std::vector<float> bias_f = float_copy<scalar_t>(bias), gamma_f = float_copy<scalar_t>(gamma),
                           beta_f = float_copy<scalar_t>(beta);
  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<float> row(width), res(width);
    for (int64_t r = begin; r < end; ++r) {
      to_float(y_data + r * width, row.data(), width);
      to_float(res_data + r * width, res.data(), width);
      int64_t i = 0;
      for (; i + kLanes <= width; i += kLanes) {
        (Vec::loadu(row.data() + i) + Vec::loadu(bias_f.data() + i) + Vec::loadu(res.data() + i)).store(row.data() + i);
      }
      for (; i < width; ++i) row[i] += bias_f[i] + res[i];
      normalize_row_(row.data(), gamma_f.data(), beta_f.data(), width, static_cast<float>(eps));
      from_float(row.data(), y_data + r * width, width);
    }
  });
}

// Every index of `ids` ([B, S], any strides) within [0, rows), or an error naming the first that is not.
void check_index_range(const at::Tensor& ids, int64_t rows, const char* ids_name, const char* table_name) {
  const auto a = ids.accessor<int64_t, 2>();
  for (int64_t b = 0; b < ids.size(0); ++b) {
    for (int64_t s = 0; s < ids.size(1); ++s) {
      TORCH_CHECK(a[b][s] >= 0 && a[b][s] < rows, "fusedbert::embeddings: ", ids_name, "[", b, ", ", s, "] = ",
                  a[b][s], " is out of range for ", table_name, " (", rows, " rows)");
    }
  }
}

template <typename scalar_t>
void embeddings_kernel(const EmbeddingIndices& indices, const at::Tensor& word, const at::Tensor& token_type,
                       const at::Tensor& position, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                       at::Tensor& out) {
  const int64_t seq_len = indices.seq_len, width = indices.width;
  const auto ids = indices.input_ids.accessor<int64_t, 2>();
  const auto types = indices.token_type_ids.accessor<int64_t, 2>();
  const auto positions = indices.position_ids.accessor<int64_t, 2>();
  const scalar_t* word_data = word.data_ptr<scalar_t>();
  const scalar_t* type_data = token_type.data_ptr<scalar_t>();
  const scalar_t* position_data = position.data_ptr<scalar_t>();
  const std::vector<float> gamma_f = float_copy<scalar_t>(gamma), beta_f = float_copy<scalar_t>(beta);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  at::parallel_for(0, indices.batch * seq_len, row_grain(width), [&](int64_t begin, int64_t end) {
    std::vector<float> row(width);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / seq_len, s = t % seq_len;
      const scalar_t* w = word_data + ids[b][s] * width;
      const scalar_t* k = type_data + types[b][s] * width;
      const scalar_t* p = position_data + positions[b][s] * width;
      int64_t i = 0;
      if constexpr (std::is_same_v<scalar_t, float>) {  // bfloat16 rows go through the scalar loop's conversions
        for (; i + kLanes <= width; i += kLanes) {
          (Vec::loadu(w + i) + Vec::loadu(k + i) + Vec::loadu(p + i)).store(row.data() + i);
        }
      }
      for (; i < width; ++i) row[i] = static_cast<float>(w[i]) + static_cast<float>(k[i]) + static_cast<float>(p[i]);
      normalize_row_(row.data(), gamma_f.data(), beta_f.data(), width, static_cast<float>(eps));
      from_float(row.data(), out_data + t * width, width);
    }
  });
}

// softmax(q K^T) V for kQueries consecutive query rows of one head, into out ([kQueries, d]). Scratch
// layouts as attention_by_head prepares them: q [*, d] scaled, k_t [d, keys] (zero past len), v [len, d],
// scores [kQueries, keys]. Each K^T or V vector loaded serves all kQueries rows, and their kQueries
// independent accumulators keep the FMA pipes full (one row alone is a chain of dependent FMAs).
template <int kQueries>
void attend_rows(const float* q, const float* k_t, const float* v, const bool* key_real, int64_t len, int64_t keys,
                 int64_t head_dim, float* scores, float* out) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < keys; j += kLanes) {
    Vec s[kQueries];
    for (int r = 0; r < kQueries; ++r) s[r] = Vec(0.0f);
    for (int64_t t = 0; t < head_dim; ++t) {
      const Vec k = Vec::loadu(k_t + t * keys + j);
      for (int r = 0; r < kQueries; ++r) s[r] = at::vec::fmadd(Vec(q[r * head_dim + t]), k, s[r]);
    }
    for (int r = 0; r < kQueries; ++r) s[r].store(scores + r * keys + j);
  }
  for (int r = 0; r < kQueries; ++r) {
    float* row = scores + r * keys;
    for (int64_t j = len; j < keys; ++j) row[j] = neg_inf;
    if (key_real) {
      for (int64_t j = 0; j < len; ++j) if (!key_real[j]) row[j] = neg_inf;
    }
    Vec row_max(neg_inf);
    for (int64_t j = 0; j < keys; j += kLanes) row_max = at::vec::maximum(row_max, Vec::loadu(row + j));
    const Vec max_v(at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, row_max));
    Vec sum_v(0.0f);
    for (int64_t j = 0; j < keys; j += kLanes) {
      const Vec p = (Vec::loadu(row + j) - max_v).exp();  // exp(-inf) = 0 at masked keys
      p.store(row + j);
      sum_v = sum_v + p;
    }
    const float inverse = 1.0f / at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum_v);
    for (int64_t j = 0; j < len; ++j) row[j] *= inverse;
  }
  for (int64_t t = 0; t < head_dim; t += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, head_dim - t);
    Vec acc[kQueries];
    for (int r = 0; r < kQueries; ++r) acc[r] = Vec(0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const Vec value = Vec::loadu(v + j * head_dim + t, n);
      for (int r = 0; r < kQueries; ++r) acc[r] = at::vec::fmadd(Vec(scores[r * keys + j]), value, acc[r]);
    }
    for (int r = 0; r < kQueries; ++r) acc[r].store(out + r * head_dim + t, n);
  }
}

// One task per (sequence, head): the head's rows of qkv, in float32 with the bias added, are copied into
// scratch as Q (scaled by 1/sqrt(d)), K transposed and V, then attend_rows takes the queries four at a
// time. K^T puts a query's scores against kLanes keys in one vector, built by FMAs with no horizontal
// sums. Tasks over heads keep every core busy on a single sequence, and nothing here goes through ATen's
// dispatcher, whose per-call cost (a dozen calls per sequence with batched GEMMs) dominated short sequences.
template <typename scalar_t>
void attention_by_head(
    const at::Tensor& qkv, const at::Tensor& qkv_bias, at::Tensor& context, const int64_t* cu_seqlens,
    int64_t batch, int64_t num_heads, const bool* key_is_real) {
  constexpr int kQueries = 4;
  TORCH_INTERNAL_ASSERT(qkv.is_contiguous() && context.is_contiguous());
  const int64_t width = context.size(1), head_dim = width / num_heads, pitch = 3 * width;
  const scalar_t* rows = qkv.data_ptr<scalar_t>();
  scalar_t* out_rows = context.data_ptr<scalar_t>();
  std::vector<float> bias(3 * width);
  to_float(qkv_bias.data_ptr<scalar_t>(), bias.data(), 3 * width);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));

  at::parallel_for(0, batch * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_heads, column = (task % num_heads) * head_dim;
      const int64_t start = cu_seqlens[b], len = cu_seqlens[b + 1] - start;
      if (len == 0) continue;
      const bool* key_real = key_is_real ? key_is_real + start : nullptr;
      if (key_real && std::none_of(key_real, key_real + len, [](bool real) { return real; })) {
        // No real key (a padding sequence in padded mode): its rows are zeros.
        for (int64_t i = 0; i < len; ++i) std::fill_n(out_rows + (start + i) * width + column, head_dim, scalar_t(0));
        continue;
      }
      const int64_t keys = (len + kLanes - 1) / kLanes * kLanes;  // K^T's row pitch: whole vectors
      scratch.assign(2 * len * head_dim + head_dim * keys + kQueries * (keys + head_dim), 0.0f);
      float* q = scratch.data();              // [len, d], scaled
      float* v = q + len * head_dim;          // [len, d]
      float* k_t = v + len * head_dim;        // [d, keys], zero past len
      float* scores = k_t + head_dim * keys;  // [kQueries, keys]
      float* out = scores + kQueries * keys;  // [kQueries, d]
      for (int64_t r = 0; r < len; ++r) {
        const scalar_t* row = rows + (start + r) * pitch + column;
        for (int64_t t = 0; t < head_dim; ++t) {
          q[r * head_dim + t] = (static_cast<float>(row[t]) + bias[column + t]) * scale;
          k_t[t * keys + r] = static_cast<float>(row[width + t]) + bias[width + column + t];
          v[r * head_dim + t] = static_cast<float>(row[2 * width + t]) + bias[2 * width + column + t];
        }
      }
      int64_t i = 0;
      auto write = [&](int64_t first, int count) {
        for (int r = 0; r < count; ++r) from_float(out + r * head_dim, out_rows + (start + first + r) * width + column, head_dim);
      };
      for (; i + kQueries <= len; i += kQueries) {
        attend_rows<kQueries>(q + i * head_dim, k_t, v, key_real, len, keys, head_dim, scores, out);
        write(i, kQueries);
      }
      for (; i < len; ++i) {
        attend_rows<1>(q + i * head_dim, k_t, v, key_real, len, keys, head_dim, scores, out);
        write(i, 1);
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

void embeddings(const EmbeddingIndices& indices, const at::Tensor& word, const at::Tensor& token_type,
                const at::Tensor& position, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                at::Tensor& out) {
  check_index_range(indices.input_ids, word.size(0), "input_ids", "word_embeddings");
  check_index_range(indices.token_type_ids, token_type.size(0), "token_type_ids", "token_type_embeddings");
  check_index_range(indices.position_ids, position.size(0), "position_ids", "position_embeddings");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, word.scalar_type(), "fusedbert_embeddings", [&] {
    embeddings_kernel<scalar_t>(indices, word, token_type, position, gamma, beta, eps, out);
  });
}

void packed_attention(
    const at::Tensor& qkv, const at::Tensor& qkv_bias, at::Tensor& context, const int64_t* cu_seqlens,
    int64_t batch, int64_t num_heads, const bool* key_is_real) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "fusedbert_packed_attention", [&] {
    attention_by_head<scalar_t>(qkv, qkv_bias, context, cu_seqlens, batch, num_heads, key_is_real);
  });
}

}  // namespace fusedbert::cpu
