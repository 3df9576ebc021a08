// Row-major GEMM on raw strided pointers: C[m,n] = alpha op(A) op(B) + beta C.
//
// Calls the BLAS that libtorch_cpu links (MKL/OpenBLAS sgemm_/dgemm_, resolved
// as weak symbols) when it exports one, so that a small tile costs no
// dispatcher round trip; otherwise falls back to at::addmm_out on views.
// Callers inside at::parallel_for get a single-threaded BLAS (MKL/OpenMP
// nesting), which is what tile-level parallelism wants.
#pragma once

#include <cstdint>

namespace dge {
namespace blas {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Name of the implementation gemm uses ("sgemm_/dgemm_ from torch's BLAS" or ATen).
const char* backend_name();

}  // namespace blas
}  // namespace dge
