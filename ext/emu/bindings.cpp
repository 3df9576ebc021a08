// The CUDA kernels' host build against the emulation, registered for CPU
// tensors as torch.ops.dge_explain_emu.* (tests only: built by tests/emulation.py).
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(dge_explain_emu, m) { dge::define_ops(m); }

TORCH_LIBRARY_IMPL(dge_explain_emu, CPU, m) { dge::impl_cuda_kernels(m); }
