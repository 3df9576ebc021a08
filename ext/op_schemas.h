// The schemas of the DGE ops and the list of their CUDA kernels, shared by the
// extension (torch.ops.dge_explain) and by the CUDA emulation's test build
// (torch.ops.dge_explain_emu, which registers the CUDA kernels for CPU tensors).
#pragma once

#include <torch/library.h>

#include "dge_ops.h"

namespace dge {

inline void define_ops(torch::Library& m) {
  m.def(
      "route_to_patches(Tensor indices, int[] split_sizes, int region_size, int num_extra,"
      " int grid_h, int grid_w)"
      " -> (Tensor rows, Tensor region_start, Tensor region_k, Tensor offsets, Tensor lengths)");
  m.def(
      "compress(Tensor x, Tensor rows, Tensor region_start, Tensor region_k, Tensor offsets,"
      " int grid_h, int grid_w, int region_size, int num_extra, bool average) -> Tensor");
  m.def(
      "decompress(Tensor src, Tensor? subtract, Tensor? reference, Tensor region_start,"
      " Tensor region_k, Tensor offsets, int grid_h, int grid_w, int region_size,"
      " int num_extra, bool divide_by_area) -> Tensor");
  m.def(
      "varlen_attention_forward(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale,"
      " bool return_lse) -> (Tensor out, Tensor lse)");
  m.def(
      "varlen_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out,"
      " Tensor lse, Tensor offsets, float scale) -> (Tensor grad_q, Tensor grad_k,"
      " Tensor grad_v)");
  m.def(
      "deformable_attention_forward(Tensor value, Tensor locations, Tensor weights,"
      " Tensor offsets) -> Tensor");
  m.def(
      "deformable_attention_backward(Tensor grad_out, Tensor value, Tensor locations,"
      " Tensor weights, Tensor offsets) -> (Tensor grad_value, Tensor grad_locations,"
      " Tensor grad_weights)");
  m.def(
      "segmentation_scores(Tensor maps, Tensor masks, int bins)"
      " -> (Tensor counts, Tensor ap, Tensor histograms)");
}

#ifdef DGE_WITH_CUDA
inline void impl_cuda_kernels(torch::Library& m) {
  m.impl("route_to_patches", &route_to_patches_cuda);
  m.impl("compress", &compress_cuda);
  m.impl("decompress", &decompress_cuda);
  m.impl("varlen_attention_forward", &varlen_attention_forward_cuda);
  m.impl("varlen_attention_backward", &varlen_attention_backward_cuda);
  m.impl("deformable_attention_forward", &deformable_attention_forward_cuda);
  m.impl("deformable_attention_backward", &deformable_attention_backward_cuda);
}
#endif

}  // namespace dge
