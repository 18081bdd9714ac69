// Process-wide switches set from Python through ops of their own (csrc/ops.cpp) and read by the CUDA
// encoder: both serve CUDA graph capture (fusedbert/cuda_graphs.py), and neither affects the CPU path.
#pragma once

#include <cstdint>

namespace fusedbert {

// While on, a GEMM shape met for the first time (outside a CUDA graph capture) times cuBLASLt's
// candidate algorithms once and keeps the fastest, instead of taking the heuristic's first choice.
bool gemm_autotuning_enabled();

// Rows the encoder packs real tokens into while a stream is being captured (where it cannot read the real
// token count back); 0 means the bound batch * seq_len. Whoever replays the graph guarantees that no batch
// has more real tokens than this.
int64_t capture_token_capacity();

}  // namespace fusedbert
