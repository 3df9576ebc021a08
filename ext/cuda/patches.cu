// CUDA kernels of the routing table, compress and decompress.  Everything runs
// on the caller's current stream; the only host synchronisation is the copy of
// the per-sample lengths that the allocation of the [L, 4] table needs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../dge_ops.h"
#include "common.cuh"

namespace dge {
namespace {

constexpr int kThreads = 256;

struct SplitSizes {
  int32_t k[kMaxSplitOptions];
  int32_t count;
};

__global__ void count_regions_kernel(const int64_t* __restrict__ indices, int64_t n,
                                     SplitSizes splits, int32_t* __restrict__ region_k,
                                     int64_t* __restrict__ counts, int32_t* __restrict__ bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t choice = indices[i];
    int32_t k = 1;
    if (choice < 0 || choice >= splits.count) {
      atomicAdd(bad, 1);
    } else {
      k = splits.k[choice];
    }
    region_k[i] = k;
    counts[i] = static_cast<int64_t>(k) * k;
  }
}

__global__ void write_rows_kernel(const int32_t* __restrict__ region_start,
                                  const int32_t* __restrict__ region_k,
                                  const int64_t* __restrict__ offsets, int64_t batch,
                                  int64_t region_w, int64_t regions, int64_t region_size,
                                  int64_t num_extra, int32_t* __restrict__ rows) {
  const int64_t items = num_extra + regions;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < batch * items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / items, item = i % items;
    if (item < num_extra) {
      int32_t* row = rows + (offsets[b] + item) * kRowColumns;
      row[0] = static_cast<int32_t>(b);
      row[1] = static_cast<int32_t>(-(item + 1));
      row[2] = 0;
      row[3] = 1;
      continue;
    }
    const int64_t r = item - num_extra;
    const int64_t k = region_k[b * regions + r];
    const int64_t step = region_size / k;
    const int64_t y_base = (r / region_w) * region_size, x_base = (r % region_w) * region_size;
    int32_t* row = rows + static_cast<int64_t>(region_start[b * regions + r]) * kRowColumns;
    for (int64_t j = 0; j < k * k; ++j, row += kRowColumns) {
      row[0] = static_cast<int32_t>(b);
      row[1] = static_cast<int32_t>(y_base + (j / k) * step);
      row[2] = static_cast<int32_t>(x_base + (j % k) * step);
      row[3] = static_cast<int32_t>(step);
    }
  }
}

template <typename scalar_t>
__global__ void compress_kernel(const scalar_t* __restrict__ x, const int32_t* __restrict__ rows,
                                int64_t total, int64_t tokens, int64_t channels, int64_t grid_w,
                                int64_t num_extra, bool average, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total * channels;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = i / channels, c = i % channels;
    const int32_t* row = rows + l * kRowColumns;
    const int64_t b = row[0], y0 = row[1], x0 = row[2], step = row[3];
    const scalar_t* sample = x + b * tokens * channels + c;
    if (y0 < 0) {
      out[i] = sample[(-y0 - 1) * channels];
      continue;
    }
    acc_t sum = 0;
    for (int64_t dy = 0; dy < step; ++dy)
      for (int64_t dx = 0; dx < step; ++dx)
        sum += static_cast<acc_t>(sample[(num_extra + (y0 + dy) * grid_w + x0 + dx) * channels]);
    out[i] = static_cast<scalar_t>(average ? sum / static_cast<acc_t>(step * step) : sum);
  }
}

template <typename scalar_t>
__global__ void decompress_kernel(const scalar_t* __restrict__ src,
                                  const scalar_t* __restrict__ subtract,
                                  const scalar_t* __restrict__ reference,
                                  const int32_t* __restrict__ region_start,
                                  const int32_t* __restrict__ region_k,
                                  const int64_t* __restrict__ offsets, int64_t batch,
                                  int64_t tokens, int64_t channels, int64_t grid_w,
                                  int64_t region_h, int64_t region_w, int64_t region_size,
                                  int64_t num_extra, bool divide_by_area,
                                  scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < batch * tokens * channels; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / channels, c = i % channels;
    const int64_t b = t / tokens, n = t % tokens;
    int64_t row;
    int64_t area = 1;
    if (n < num_extra) {
      row = offsets[b] + n;
    } else {
      const int64_t y = (n - num_extra) / grid_w, x = (n - num_extra) % grid_w;
      const int64_t region = (b * region_h + y / region_size) * region_w + x / region_size;
      const int64_t k = region_k[region];
      const int64_t step = region_size / k;
      row = region_start[region] + ((y % region_size) / step) * k + (x % region_size) / step;
      area = step * step;
    }
    acc_t value = static_cast<acc_t>(src[row * channels + c]);
    if (subtract != nullptr) value -= static_cast<acc_t>(subtract[row * channels + c]);
    if (divide_by_area) value /= static_cast<acc_t>(area);
    if (reference != nullptr) value += static_cast<acc_t>(reference[i]);
    out[i] = static_cast<scalar_t>(value);
  }
}

}  // namespace

Table route_to_patches_cuda(const at::Tensor& indices, at::IntArrayRef split_sizes,
                            int64_t region_size, int64_t num_extra) {
  check_route_args(indices, split_sizes, region_size, num_extra);
  TORCH_CHECK_VALUE(static_cast<int64_t>(split_sizes.size()) <= kMaxSplitOptions,
                    "at most ", kMaxSplitOptions, " split sizes are supported, got ", split_sizes);
  const c10::cuda::CUDAGuard guard(indices.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto idx = indices.contiguous();
  const int64_t batch = idx.size(0), rh = idx.size(1), rw = idx.size(2), regions = rh * rw;
  SplitSizes splits{};
  splits.count = static_cast<int32_t>(split_sizes.size());
  for (size_t i = 0; i < split_sizes.size(); ++i) splits.k[i] = static_cast<int32_t>(split_sizes[i]);

  const auto int_opts = idx.options().dtype(at::kInt);
  auto region_k = at::empty({batch, rh, rw}, int_opts);
  auto counts = at::empty({batch, regions}, idx.options());
  auto bad = at::zeros({1}, int_opts);
  if (batch * regions > 0) {
    count_regions_kernel<<<blocks_for(batch * regions, kThreads), kThreads, 0, stream>>>(
        idx.data_ptr<int64_t>(), batch * regions, splits, region_k.data_ptr<int32_t>(),
        counts.data_ptr<int64_t>(), bad.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto inclusive = counts.cumsum(1);
  auto lengths = regions > 0 ? inclusive.select(1, regions - 1) + num_extra
                             : at::full({batch}, num_extra, idx.options());
  auto offsets = at::zeros({batch + 1}, idx.options());
  offsets.narrow(0, 1, batch).copy_(lengths.cumsum(0));
  auto region_start =
      (inclusive - counts + num_extra + offsets.narrow(0, 0, batch).unsqueeze(1))
          .to(at::kInt)
          .view({batch, rh, rw});

  // One device-to-host copy serves both the allocation size and the check.
  const auto host = at::cat({lengths, bad.to(at::kLong)}).cpu();
  const int64_t* host_p = host.data_ptr<int64_t>();
  if (host_p[batch] != 0) {
    const auto where = ((idx < 0) | (idx >= splits.count)).nonzero().select(0, 0).cpu();
    const int64_t* at_p = where.data_ptr<int64_t>();
    const int64_t value = idx.select(0, at_p[0]).select(0, at_p[1]).select(0, at_p[2]).item<int64_t>();
    TORCH_CHECK_VALUE(false, "indices", idx.sizes(), " holds gate index ", value, " at sample ",
                      at_p[0], ", region (", at_p[1], ", ", at_p[2], "); valid indices are 0..",
                      splits.count - 1);
  }
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) total += host_p[b];
  TORCH_CHECK_VALUE(total < std::numeric_limits<int32_t>::max(), "table of ", total,
                    " rows exceeds the int32 row index");

  auto rows = at::empty({total, kRowColumns}, int_opts);
  const int64_t items = batch * (num_extra + regions);
  if (items > 0) {
    write_rows_kernel<<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
        region_start.data_ptr<int32_t>(), region_k.data_ptr<int32_t>(),
        offsets.data_ptr<int64_t>(), batch, rw, regions, region_size, num_extra,
        rows.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {rows, region_start, region_k, offsets, host.narrow(0, 0, batch).clone()};
}

at::Tensor compress_cuda(const at::Tensor& x_in, const at::Tensor& rows_in,
                         const at::Tensor& region_start, const at::Tensor& region_k,
                         const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                         int64_t num_extra, bool average) {
  // One thread per (row, channel): the [L, 4] rows give each thread its patch.
  check_compress_args(x_in, rows_in, region_start, region_k, offsets, grid_h, grid_w, num_extra);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto x = x_in.contiguous();
  const auto rows = rows_in.contiguous();
  const int64_t total = rows.size(0), tokens = x.size(1), channels = x.size(2);
  auto out = at::empty({total, channels}, x.options());
  if (total * channels == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dge_compress_cuda", [&] {
    compress_kernel<scalar_t><<<blocks_for(total * channels, kThreads), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), rows.data_ptr<int32_t>(), total, tokens, channels, grid_w,
        num_extra, average, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor decompress_cuda(const at::Tensor& src_in, const c10::optional<at::Tensor>& subtract_in,
                           const c10::optional<at::Tensor>& reference_in,
                           const at::Tensor& region_start_in, const at::Tensor& region_k_in,
                           const at::Tensor& offsets_in, int64_t grid_h, int64_t grid_w,
                           int64_t num_extra, bool divide_by_area) {
  check_decompress_args(src_in, subtract_in, reference_in, region_start_in, region_k_in,
                        offsets_in, grid_h, grid_w, num_extra);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto src = src_in.contiguous();
  const auto region_start = region_start_in.contiguous();
  const auto region_k = region_k_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  at::Tensor subtract, reference;
  if (subtract_in.has_value()) subtract = subtract_in->contiguous();
  if (reference_in.has_value()) reference = reference_in->contiguous();
  const int64_t batch = region_k.size(0), rh = region_k.size(1), rw = region_k.size(2);
  const int64_t tokens = num_extra + grid_h * grid_w, channels = src.size(1);
  auto out = at::empty({batch, tokens, channels}, src.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "dge_decompress_cuda", [&] {
    decompress_kernel<scalar_t><<<blocks_for(out.numel(), kThreads), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), subtract.defined() ? subtract.data_ptr<scalar_t>() : nullptr,
        reference.defined() ? reference.data_ptr<scalar_t>() : nullptr,
        region_start.data_ptr<int32_t>(), region_k.data_ptr<int32_t>(),
        offsets.data_ptr<int64_t>(), batch, tokens, channels, grid_w, rh, rw, grid_h / rh,
        num_extra, divide_by_area, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace dge
