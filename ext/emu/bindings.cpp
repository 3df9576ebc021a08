// The CUDA kernels' host build against the emulation, registered for CPU
// tensors as torch.ops.dge_explain_emu.* (tests only: tests/test_cuda_emulation.py).
#include <torch/library.h>

#include "dge_ops.h"
#include "op_schemas.h"

TORCH_LIBRARY(dge_explain_emu, m) { dge::define_ops(m); }

TORCH_LIBRARY_IMPL(dge_explain_emu, CPU, m) {
  m.impl("route_to_patches", &dge::route_to_patches_cuda);
  m.impl("compress", &dge::compress_cuda);
  m.impl("decompress", &dge::decompress_cuda);
  m.impl("varlen_attention_forward", &dge::varlen_attention_forward_cuda);
  m.impl("varlen_attention_backward", &dge::varlen_attention_backward_cuda);
}
