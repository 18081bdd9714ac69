// The CPU encoder's GEMMs: oneDNN's inner product on weights it keeps in its own blocked layout, with
// at::mm as the fallback where torch has no oneDNN or oneDNN cannot run the dtype here.
#pragma once

#include <ATen/core/Tensor.h>

namespace fusedbert::cpu {

// y = x w^T without bias (the kernels after each GEMM add it). x: [T, in] contiguous; w: [out, in]
// contiguous (nn.Linear's layout), x's dtype (float32 or bfloat16). Returns [T, out].
//
// The first call with a weight packs a copy of it into oneDNN's layout and keeps that copy while the
// weight's storage lives; a weight written in place is packed again, as its version counter shows. Writes
// that bypass the version counter (through `.data`, numpy or a raw pointer) are not seen: write through
// the tensor itself (`with torch.no_grad(): w.copy_(new)`) or replace it. Inference tensors have no
// version counter and run on their plain layout, unpacked.
at::Tensor linear_no_bias(const at::Tensor& x, const at::Tensor& w);

}  // namespace fusedbert::cpu
