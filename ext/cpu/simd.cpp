#include "simd.h"

#include <algorithm>

namespace dge {
namespace simd {
namespace {

constexpr int kLanes = 16;

// exp(v) for v <= 0 (softmax arguments): Cody-Waite range reduction and the
// Cephes minimax polynomial, ~1 ulp; branch-free so that it vectorises.
inline float exp_nonpositive(float v) {
  v = v < -87.0f ? -87.0f : v;
  const float t = std::floor(v * 1.44269504088896341f + 0.5f);
  const float r = v - t * 0.693359375f + t * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(t) + 127) << 23;
  float two_t;
  std::memcpy(&two_t, &bits, sizeof(two_t));
  return p * two_t;
}

}  // namespace

#define DGE_ELEMENTWISE(T)                                                                  \
  template <>                                                                               \
  DGE_SIMD_CLONES void copy<T>(T* __restrict__ dst, const T* __restrict__ src, int64_t n) { \
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];                                        \
  }                                                                                         \
  template <>                                                                               \
  DGE_SIMD_CLONES void scale<T>(T* __restrict__ x, T a, int64_t n) {                       \
    for (int64_t i = 0; i < n; ++i) x[i] *= a;                                              \
  }                                                                                         \
  template <>                                                                               \
  DGE_SIMD_CLONES T max<T>(const T* __restrict__ x, int64_t n) {                           \
    T part[kLanes];                                                                         \
    for (int l = 0; l < kLanes; ++l) part[l] = x[0];                                        \
    int64_t i = 0;                                                                          \
    for (; i + kLanes <= n; i += kLanes)                                                    \
      for (int l = 0; l < kLanes; ++l) part[l] = part[l] > x[i + l] ? part[l] : x[i + l];   \
    T best = part[0];                                                                       \
    for (int l = 1; l < kLanes; ++l) best = std::max(best, part[l]);                        \
    for (; i < n; ++i) best = std::max(best, x[i]);                                         \
    return best;                                                                            \
  }                                                                                         \
  template <>                                                                               \
  DGE_SIMD_CLONES T dot<T>(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {  \
    T part[kLanes] = {};                                                                    \
    int64_t i = 0;                                                                          \
    for (; i + kLanes <= n; i += kLanes)                                                    \
      for (int l = 0; l < kLanes; ++l) part[l] += a[i + l] * b[i + l];                      \
    T total = 0;                                                                            \
    for (int l = 0; l < kLanes; ++l) total += part[l];                                      \
    for (; i < n; ++i) total += a[i] * b[i];                                                \
    return total;                                                                           \
  }                                                                                         \
  template <>                                                                               \
  DGE_SIMD_CLONES void sub_mul<T>(T* __restrict__ x, T shift, const T* __restrict__ y,     \
                                  int64_t n) {                                              \
    for (int64_t i = 0; i < n; ++i) x[i] = (x[i] - shift) * y[i];                           \
  }

DGE_ELEMENTWISE(float)
DGE_ELEMENTWISE(double)
#undef DGE_ELEMENTWISE

template <>
DGE_SIMD_CLONES float exp_shifted<float>(float* __restrict__ x, float shift, int64_t n) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      x[i + l] = exp_nonpositive(x[i + l] - shift);
      part[l] += x[i + l];
    }
  }
  float total = 0;
  for (int l = 0; l < kLanes; ++l) total += part[l];
  for (; i < n; ++i) {
    x[i] = exp_nonpositive(x[i] - shift);
    total += x[i];
  }
  return total;
}

// float64 is the precision of the gradient checks, not a fast path: libm exp.
template <>
double exp_shifted<double>(double* __restrict__ x, double shift, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

}  // namespace simd
}  // namespace dge
