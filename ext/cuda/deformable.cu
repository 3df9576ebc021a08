// CUDA deformable point attention (DPVT).  One warp per (query row, head)
// item, its lanes over the head's channels: the P points' corners are computed
// by every lane (cheap, no divergence), the value reads are coalesced over
// channels.  The backward's value gradient is a scatter with atomics, into an
// fp32 buffer for half and bfloat16; the location and weight gradients are warp
// sums.  Everything runs on the caller's current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdint>

#include "../bilinear.h"
#include "../dge_ops.h"
#include "common.cuh"

namespace dge {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

struct Shape {
  int64_t batch, height, width, heads, dim, rows, points;
};

Shape shape_of(const at::Tensor& value, const at::Tensor& locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), value.size(4),
          locations.size(0), locations.size(2)};
}

__device__ __forceinline__ int64_t sample_of(const int64_t* offsets, int64_t batch, int64_t row) {
  int64_t low = 0, high = batch - 1;  // the last b with offsets[b] <= row
  while (low < high) {
    const int64_t middle = (low + high + 1) / 2;
    if (offsets[middle] <= row) low = middle; else high = middle - 1;
  }
  return low;
}

template <typename scalar_t>
__global__ void deformable_forward_kernel(const scalar_t* __restrict__ value,
                                          const scalar_t* __restrict__ locations,
                                          const scalar_t* __restrict__ weights,
                                          const int64_t* __restrict__ offsets, Shape s,
                                          scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = s.heads * s.dim;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       item < s.rows * s.heads; item += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t row = item / s.heads, head = item % s.heads;
    const scalar_t* map =
        value + sample_of(offsets, s.batch, row) * s.height * s.width * stride + head * s.dim;
    const scalar_t* loc = locations + item * s.points * 2;
    const scalar_t* w = weights + item * s.points;
    for (int64_t ch0 = 0; ch0 < s.dim; ch0 += kWarp) {
      const int64_t ch = ch0 + lane;
      acc_t acc = 0;
      for (int64_t point = 0; point < s.points; ++point) {
        Corners<acc_t> c;
        if (!bilinear_corners<acc_t>(loc[2 * point], loc[2 * point + 1], s.height, s.width, c))
          continue;
        const acc_t weight = w[point];
        for (int corner = 0; corner < 4; ++corner) {
          if (c.index[corner] >= 0 && ch < s.dim)
            acc += weight * c.weight[corner] * static_cast<acc_t>(map[c.index[corner] * stride + ch]);
        }
      }
      if (ch < s.dim) out[item * s.dim + ch] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename scalar_t>
__global__ void deformable_backward_kernel(const scalar_t* __restrict__ grad,
                                           const scalar_t* __restrict__ value,
                                           const scalar_t* __restrict__ locations,
                                           const scalar_t* __restrict__ weights,
                                           const int64_t* __restrict__ offsets, Shape s,
                                           at::opmath_type<scalar_t>* __restrict__ grad_value,
                                           scalar_t* __restrict__ grad_locations,
                                           scalar_t* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = s.heads * s.dim;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
       item < s.rows * s.heads; item += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t row = item / s.heads, head = item % s.heads;
    const int64_t map_start =
        sample_of(offsets, s.batch, row) * s.height * s.width * stride + head * s.dim;
    const scalar_t* g = grad + item * s.dim;
    const scalar_t* loc = locations + item * s.points * 2;
    const scalar_t* w = weights + item * s.points;
    for (int64_t point = 0; point < s.points; ++point) {
      acc_t sampled = 0, d_x = 0, d_y = 0;
      Corners<acc_t> c;
      if (bilinear_corners<acc_t>(loc[2 * point], loc[2 * point + 1], s.height, s.width, c)) {
        const acc_t weight = w[point];
        for (int corner = 0; corner < 4; ++corner) {
          if (c.index[corner] < 0) continue;
          const int64_t at = map_start + c.index[corner] * stride;
          acc_t dot = 0;
          for (int64_t ch = lane; ch < s.dim; ch += kWarp) {
            const acc_t g_ch = g[ch];
            dot += g_ch * static_cast<acc_t>(value[at + ch]);
            atomicAdd(grad_value + at + ch, weight * c.weight[corner] * g_ch);
          }
          dot = warp_sum(dot);
          sampled += c.weight[corner] * dot;
          d_x += c.d_x[corner] * dot;
          d_y += c.d_y[corner] * dot;
        }
      }
      if (lane == 0) {
        grad_weights[item * s.points + point] = static_cast<scalar_t>(sampled);
        grad_locations[(item * s.points + point) * 2] = static_cast<scalar_t>(w[point] * d_x);
        grad_locations[(item * s.points + point) * 2 + 1] = static_cast<scalar_t>(w[point] * d_y);
      }
    }
  }
}

}  // namespace

at::Tensor deformable_attention_forward_cuda(const at::Tensor& value, const at::Tensor& locations,
                                             const at::Tensor& weights, const at::Tensor& offsets) {
  check_deformable_args(value, locations, weights, offsets, nullptr);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Shape s = shape_of(value, locations);
  auto out = at::empty({s.rows, s.heads, s.dim}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "dge_deformable_forward_cuda", [&] {
    deformable_forward_kernel<scalar_t><<<blocks_for(s.rows * s.heads * kWarp, kThreads), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), locations.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
        offsets.data_ptr<int64_t>(), s, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deformable_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& locations,
    const at::Tensor& weights, const at::Tensor& offsets) {
  check_deformable_args(value, locations, weights, offsets, &grad_out);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Shape s = shape_of(value, locations);
  const auto accumulate = at::toOpMathType(value.scalar_type());
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(accumulate));
  auto grad_locations = at::empty_like(locations);
  auto grad_weights = at::empty_like(weights);
  if (s.rows * s.heads * s.points > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                    "dge_deformable_backward_cuda", [&] {
      deformable_backward_kernel<scalar_t><<<blocks_for(s.rows * s.heads * kWarp, kThreads), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), locations.data_ptr<scalar_t>(),
          weights.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(), s,
          grad_value.data_ptr<at::opmath_type<scalar_t>>(), grad_locations.data_ptr<scalar_t>(),
          grad_weights.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
}

}  // namespace dge
