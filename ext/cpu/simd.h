// Row kernels of the CPU attention, vectorised by the compiler.  On x86-64 Linux each
// float kernel is compiled for AVX-512, AVX2+FMA and the baseline, and the
// loader picks the best the CPU has (GCC/Clang target_clones); elsewhere only
// the baseline is built.  Reductions keep 16 partial results so that they
// vectorise without -ffast-math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define DGE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DGE_SIMD_CLONES
#endif

namespace dge {
namespace simd {

// dst = src (n values)
template <typename T>
void copy(T* __restrict__ dst, const T* __restrict__ src, int64_t n);
// x *= a
template <typename T>
void scale(T* __restrict__ x, T a, int64_t n);
// max of x (n > 0)
template <typename T>
T max(const T* __restrict__ x, int64_t n);
// x = exp(x - shift), returns the sum of the new x
template <typename T>
T exp_shifted(T* __restrict__ x, T shift, int64_t n);
// sum of a * b
template <typename T>
T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n);
// x = (x - shift) * y, elementwise with y
template <typename T>
void sub_mul(T* __restrict__ x, T shift, const T* __restrict__ y, int64_t n);

}  // namespace simd
}  // namespace dge
