// Bilinear sampling with zero padding, shared by the CPU and CUDA kernels of
// the deformable point attention: the four corners of a point (x, y) in
// pixel-index coordinates of an H x W map, their weights and the weights'
// derivatives in x and y.  A corner outside the map gets index -1.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DGE_HOST_DEVICE __host__ __device__
#else
#define DGE_HOST_DEVICE
#endif

namespace dge {

template <typename T>
struct Corners {
  int64_t index[4];  // y * W + x of corners (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
  T weight[4];
  T d_x[4];  // d weight / dx
  T d_y[4];
};

// False where no corner lies inside the map (non-finite points included, since
// every comparison with NaN fails): such a point samples 0 with zero gradients.
template <typename T>
DGE_HOST_DEVICE inline bool bilinear_corners(T x, T y, int64_t height, int64_t width,
                                             Corners<T>& c) {
  if (!(x > T(-1) && x < T(width) && y > T(-1) && y < T(height))) return false;
  const T fx0 = std::floor(x), fy0 = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const T ax = x - fx0, ay = y - fy0;
  const T wx[2] = {T(1) - ax, ax}, wy[2] = {T(1) - ay, ay};
  const T dwx[2] = {T(-1), T(1)}, dwy[2] = {T(-1), T(1)};
  for (int corner = 0; corner < 4; ++corner) {
    const int i = corner & 1, j = corner >> 1;
    const int64_t cx = x0 + i, cy = y0 + j;
    const bool inside = cx >= 0 && cx < width && cy >= 0 && cy < height;
    c.index[corner] = inside ? cy * width + cx : -1;
    c.weight[corner] = wx[i] * wy[j];
    c.d_x[corner] = dwx[i] * wy[j];
    c.d_y[corner] = wx[i] * dwy[j];
  }
  return true;
}

}  // namespace dge
