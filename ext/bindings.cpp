// Registers the DGE ops with the PyTorch dispatcher (torch.ops.dge_explain.*),
// one kernel per backend, and exposes how the extension was built.
#include <Python.h>
#include <torch/library.h>

#include "cpu/blas.h"
#include "dge_ops.h"
#include "op_schemas.h"

TORCH_LIBRARY(dge_explain, m) { dge::define_ops(m); }

TORCH_LIBRARY_IMPL(dge_explain, CPU, m) {
  m.impl("route_to_patches", &dge::route_to_patches_cpu);
  m.impl("compress", &dge::compress_cpu);
  m.impl("decompress", &dge::decompress_cpu);
  m.impl("varlen_attention_forward", &dge::varlen_attention_forward_cpu);
  m.impl("varlen_attention_backward", &dge::varlen_attention_backward_cpu);
  m.impl("deformable_attention_forward", &dge::deformable_attention_forward_cpu);
  m.impl("deformable_attention_backward", &dge::deformable_attention_backward_cpu);
  m.impl("segmentation_scores", &dge::segmentation_scores_cpu);
}

#ifdef DGE_WITH_CUDA
TORCH_LIBRARY_IMPL(dge_explain, CUDA, m) { dge::impl_cuda_kernels(m); }
#endif

namespace {

#ifdef DGE_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

#define DGE_STRINGIFY_INNER(x) #x
#define DGE_STRINGIFY(x) DGE_STRINGIFY_INNER(x)

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "Compiled DGE ops; the ops live in torch.ops.dge_explain.", -1,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  PyModule_AddObject(module, "with_cuda", PyBool_FromLong(kWithCuda));
#ifdef DGE_CUDA_VERSION
  PyModule_AddStringConstant(module, "cuda_version", DGE_STRINGIFY(DGE_CUDA_VERSION));
#else
  PyModule_AddObject(module, "cuda_version", Py_None);
  Py_INCREF(Py_None);
#endif
  PyModule_AddStringConstant(module, "torch_version", DGE_STRINGIFY(DGE_TORCH_VERSION));
  PyModule_AddStringConstant(module, "cpu_gemm", dge::blas::backend_name());
  PyModule_AddIntConstant(module, "cuda_max_head_dim", dge::kMaxHeadDim);
  PyModule_AddIntConstant(module, "cuda_max_heads", dge::kMaxCudaHeads);
  return module;
}
