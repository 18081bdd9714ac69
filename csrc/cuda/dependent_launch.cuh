// Programmatic dependent launch (Hopper): a kernel launched with programmatic stream serialization may
// start while the kernel before it on the stream is still running, once every CTA of that kernel has
// called allow_dependent_grids() (or exited). It must call wait_for_prior_grids() before touching anything
// the earlier kernel writes or reads; what does not depend on it (a GEMM's weights) it can load before.
//
// Why: at a small batch each of the encoder's ~100 kernels is short, and a GEMM spends most of its time
// waiting for its weights to arrive from HBM; issuing those loads while the LayerNorm or attention before
// it finishes hides that latency. On GPUs before sm_90 both calls compile to nothing and launches are
// ordinary.
#pragma once

#include <cuda_runtime.h>

namespace fusedbert::cuda {

__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream launch early; that kernel still waits for this one's completion and
// memory before it reads what this one writes.
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

}  // namespace fusedbert::cuda
