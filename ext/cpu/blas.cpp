#include "blas.h"

#include <ATen/ATen.h>

#include <limits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace dge {
namespace blas {
namespace {

bool fits_int(int64_t value) { return value <= std::numeric_limits<int>::max(); }

template <typename T>
at::Tensor view(const T* data, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  const auto dtype = std::is_same<T, float>::value ? at::kFloat : at::kDouble;
  auto matrix = at::from_blob(const_cast<T*>(data), transposed ? at::IntArrayRef{cols, rows}
                                                               : at::IntArrayRef{rows, cols},
                              {ld, 1}, at::TensorOptions().dtype(dtype));
  return transposed ? matrix.t() : matrix;
}

template <typename T>
void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  auto out = view(c, m, n, ldc, false);
  at::addmm_out(out, out, view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, alpha);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap operands.
template <typename T, typename Fn>
void fortran_gemm(Fn fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                  const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  fn(&tb, &ta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

template <typename T, typename Fn>
void gemm_with(Fn fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (fn != nullptr && k > 0 && fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) &&
      fits_int(ldb) && fits_int(ldc)) {
    fortran_gemm(fn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    aten_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  gemm_with(sgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                  const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                  double* c, int64_t ldc) {
  gemm_with(dgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

const char* backend_name() {
  return sgemm_ != nullptr && dgemm_ != nullptr ? "sgemm_/dgemm_ of torch's BLAS"
                                                : "ATen addmm (no BLAS symbols exported)";
}

}  // namespace blas
}  // namespace dge
