// CUDA kernels of the routing table, compress and decompress.  Everything runs
// on the caller's current stream.  The table costs two kernels and two small
// copies: the per-sample row counts come to the host (the [L, 4] allocation
// needs them) and the offsets computed there go back.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "../dge_ops.h"
#include "common.cuh"

namespace dge {
namespace {

constexpr int kThreads = 256;
constexpr size_t kPackBytes = 16;

struct SplitSizes {
  int32_t k[kMaxSplitOptions];
  int32_t count;
};

// Sub-patches along one side of a region at `offset` (a multiple of the region
// size) of a grid side `extent` long: the region is cut short where the grid ends
// (ragged borders), and only the sub-patches that meet the grid exist.
__device__ __forceinline__ int64_t sub_patches(int64_t offset, int64_t region_size,
                                               int64_t extent, int64_t step) {
  const int64_t length = region_size < extent - offset ? region_size : extent - offset;
  return (length + step - 1) / step;
}

// N scalars of one token moved by a single (up to 16-byte) load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// One block per sample: each region's gate gives its split size k, and a block
// scan of the k*k rows per region gives the region's first row in the sample.
// status[b] = rows of sample b; status[B + b] = its invalid gates.
__global__ void scan_regions_kernel(const int64_t* __restrict__ indices, int64_t regions,
                                    SplitSizes splits, int64_t num_extra, int64_t region_w,
                                    int64_t region_size, int64_t grid_h, int64_t grid_w,
                                    int32_t* __restrict__ region_k,
                                    int32_t* __restrict__ region_start,
                                    int64_t* __restrict__ status) {
  extern __shared__ int64_t partial[];  // blockDim.x running sums, then the invalid-gate count
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x, width = blockDim.x;
  unsigned long long* invalid = reinterpret_cast<unsigned long long*>(partial + width);
  if (lane == 0) *invalid = 0;
  __syncthreads();
  int64_t carry = num_extra;
  for (int64_t first = 0; first < regions; first += width) {
    const int64_t r = first + lane;
    int64_t count = 0;
    if (r < regions) {
      const int64_t choice = indices[b * regions + r];
      int32_t k = 1;
      if (choice < 0 || choice >= splits.count) {
        atomicAdd(invalid, 1ull);
      } else {
        k = splits.k[choice];
      }
      region_k[b * regions + r] = k;
      const int64_t step = region_size / k;
      count = sub_patches((r / region_w) * region_size, region_size, grid_h, step) *
              sub_patches((r % region_w) * region_size, region_size, grid_w, step);
    }
    partial[lane] = count;
    __syncthreads();
    for (int step = 1; step < width; step <<= 1) {
      const int64_t left = lane >= step ? partial[lane - step] : 0;
      __syncthreads();
      partial[lane] += left;
      __syncthreads();
    }
    if (r < regions) region_start[b * regions + r] = static_cast<int32_t>(carry + partial[lane] - count);
    carry += partial[width - 1];
    __syncthreads();  // every lane has read the sums before the next chunk overwrites them
  }
  if (lane == 0) {
    status[b] = carry;
    status[gridDim.x + b] = static_cast<int64_t>(*invalid);
  }
}

// One thread per (sample, extra token or region): the region's rows, and its
// first row made absolute by the sample's offset.
__global__ void write_rows_kernel(int32_t* __restrict__ region_start,
                                  const int32_t* __restrict__ region_k,
                                  const int64_t* __restrict__ offsets, int64_t batch,
                                  int64_t region_w, int64_t regions, int64_t region_size,
                                  int64_t grid_h, int64_t grid_w, int64_t num_extra,
                                  int32_t* __restrict__ rows) {
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
    const int64_t region = b * regions + item - num_extra, r = item - num_extra;
    const int64_t start = region_start[region] + offsets[b];
    region_start[region] = static_cast<int32_t>(start);
    const int32_t step = static_cast<int32_t>(region_size) / region_k[region];
    const int32_t y_base = static_cast<int32_t>((r / region_w) * region_size);
    const int32_t x_base = static_cast<int32_t>((r % region_w) * region_size);
    const int32_t k_y = static_cast<int32_t>(sub_patches(y_base, region_size, grid_h, step));
    const int32_t k_x = static_cast<int32_t>(sub_patches(x_base, region_size, grid_w, step));
    int32_t* row = rows + start * kRowColumns;
    for (int32_t j = 0; j < k_y * k_x; ++j, row += kRowColumns) {
      row[0] = static_cast<int32_t>(b);
      row[1] = y_base + (j / k_x) * step;
      row[2] = x_base + (j % k_x) * step;
      row[3] = step;
    }
  }
}

// One token per block row (threadIdx.y), its channels as packs across the row's
// threads: the token's table entry is read once, every access is a full pack.
template <typename scalar_t, int N, typename index_t>
__global__ void compress_kernel(const scalar_t* __restrict__ x, const int32_t* __restrict__ rows,
                                index_t total, index_t tokens, index_t packs, index_t grid_h,
                                index_t grid_w, index_t num_extra, bool average,
                                scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  using pack_t = Pack<scalar_t, N>;
  const pack_t* in = reinterpret_cast<const pack_t*>(x);
  pack_t* result = reinterpret_cast<pack_t*>(out);
  for (index_t l = blockIdx.x * blockDim.y + threadIdx.y; l < total; l += gridDim.x * blockDim.y) {
    const int32_t* row = rows + l * kRowColumns;
    const index_t b = row[0], y0 = row[1], x0 = row[2], step = row[3];
    const pack_t* sample = in + b * tokens * packs;
    pack_t* target = result + l * packs;
    if (y0 < 0) {
      for (index_t c = threadIdx.x; c < packs; c += blockDim.x) target[c] = sample[(-y0 - 1) * packs + c];
      continue;
    }
    // a patch at a ragged border keeps the part of it inside the grid
    const index_t patch_h = step < grid_h - y0 ? step : grid_h - y0;
    const index_t patch_w = step < grid_w - x0 ? step : grid_w - x0;
    const acc_t scale = average ? acc_t(1) / static_cast<acc_t>(patch_h * patch_w) : acc_t(1);
    const pack_t* corner = sample + (num_extra + y0 * grid_w + x0) * packs;
    for (index_t c = threadIdx.x; c < packs; c += blockDim.x) {
      acc_t sum[N] = {};
      for (index_t dy = 0; dy < patch_h; ++dy) {
        for (index_t dx = 0; dx < patch_w; ++dx) {
          const pack_t token = corner[(dy * grid_w + dx) * packs + c];
#pragma unroll
          for (int j = 0; j < N; ++j) sum[j] += static_cast<acc_t>(token.v[j]);
        }
      }
      pack_t mean;
#pragma unroll
      for (int j = 0; j < N; ++j) mean.v[j] = static_cast<scalar_t>(sum[j] * scale);
      target[c] = mean;
    }
  }
}

// One output token per block row: its packed row and area found once, then
// out = reference + (src - subtract) / area over the channel packs.
template <typename scalar_t, int N, typename index_t>
__global__ void decompress_kernel(const scalar_t* __restrict__ src,
                                  const scalar_t* __restrict__ subtract,
                                  const scalar_t* __restrict__ reference,
                                  const int32_t* __restrict__ region_start,
                                  const int32_t* __restrict__ region_k,
                                  const int64_t* __restrict__ offsets, index_t batch,
                                  index_t tokens, index_t packs, index_t grid_h,
                                  index_t grid_w, index_t region_h, index_t region_w,
                                  index_t region_size, index_t num_extra, bool divide_by_area,
                                  scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  using pack_t = Pack<scalar_t, N>;
  const pack_t* values = reinterpret_cast<const pack_t*>(src);
  const pack_t* minus = reinterpret_cast<const pack_t*>(subtract);
  const pack_t* base = reinterpret_cast<const pack_t*>(reference);
  pack_t* result = reinterpret_cast<pack_t*>(out);
  for (index_t t = blockIdx.x * blockDim.y + threadIdx.y; t < batch * tokens; t += gridDim.x * blockDim.y) {
    const index_t b = t / tokens, n = t % tokens;
    index_t row;
    acc_t scale = 1;
    if (n < num_extra) {
      row = static_cast<index_t>(offsets[b]) + n;
    } else {
      const index_t y = (n - num_extra) / grid_w, x = (n - num_extra) % grid_w;
      const index_t region = (b * region_h + y / region_size) * region_w + x / region_size;
      const index_t step = region_size / region_k[region];
      // sub-patches per line of this region: fewer where the grid's right border cuts it
      const index_t x_base = x - x % region_size;
      const index_t k_x = static_cast<index_t>(sub_patches(x_base, region_size, grid_w, step));
      row = region_start[region] + ((y % region_size) / step) * k_x + (x % region_size) / step;
      if (divide_by_area) {
        const index_t y0 = y - y % step, x0 = x - x % step;
        const index_t patch_h = step < grid_h - y0 ? step : grid_h - y0;
        const index_t patch_w = step < grid_w - x0 ? step : grid_w - x0;
        scale = acc_t(1) / static_cast<acc_t>(patch_h * patch_w);
      }
    }
    for (index_t c = threadIdx.x; c < packs; c += blockDim.x) {
      const pack_t value = values[row * packs + c];
      acc_t sum[N];
#pragma unroll
      for (int j = 0; j < N; ++j) sum[j] = static_cast<acc_t>(value.v[j]);
      if (minus != nullptr) {
        const pack_t other = minus[row * packs + c];
#pragma unroll
        for (int j = 0; j < N; ++j) sum[j] -= static_cast<acc_t>(other.v[j]);
      }
      pack_t restored;
      const pack_t offset = base != nullptr ? base[t * packs + c] : pack_t{};
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const acc_t value_j = sum[j] * scale;
        restored.v[j] = static_cast<scalar_t>(base != nullptr ? value_j + static_cast<acc_t>(offset.v[j]) : value_j);
      }
      result[t * packs + c] = restored;
    }
  }
}

// Calls body(pack width, index type): 16-byte packs where the channel count and
// every pointer allow them, else single scalars; 32-bit indices where every
// index (and a grid-stride step past the last) stays far below 2^31.
template <typename scalar_t, typename Body>
void with_layout(int64_t channels, int64_t largest_index, std::initializer_list<const void*> data,
                 const Body& body) {
  constexpr int width = static_cast<int>(kPackBytes / sizeof(scalar_t));
  bool packed = channels % width == 0;
  for (const void* pointer : data)
    packed = packed && reinterpret_cast<uintptr_t>(pointer) % kPackBytes == 0;
  const bool narrow = largest_index <= std::numeric_limits<int32_t>::max() / 2;
  if (packed && narrow) body(std::integral_constant<int, width>{}, int32_t{});
  else if (packed) body(std::integral_constant<int, width>{}, int64_t{});
  else if (narrow) body(std::integral_constant<int, 1>{}, int32_t{});
  else body(std::integral_constant<int, 1>{}, int64_t{});
}

// Threads along x cover one token's packs, block rows (y) cover tokens.
std::pair<dim3, dim3> token_rows_launch(int64_t tokens, int64_t packs) {
  const int64_t lanes = std::min<int64_t>(kThreads, (packs + kWarp - 1) / kWarp * kWarp);
  const int64_t rows_per_block = kThreads / lanes;
  return {dim3(blocks_for(tokens, static_cast<int>(rows_per_block))),
          dim3(static_cast<unsigned>(lanes), static_cast<unsigned>(rows_per_block))};
}

}  // namespace

Table route_to_patches_cuda(const at::Tensor& indices, at::IntArrayRef split_sizes,
                            int64_t region_size, int64_t num_extra, int64_t grid_h,
                            int64_t grid_w) {
  check_route_args(indices, split_sizes, region_size, num_extra, grid_h, grid_w);
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
  auto region_start = at::empty({batch, rh, rw}, int_opts);
  auto status = at::empty({2 * batch}, idx.options());
  TORCH_CHECK_VALUE(batch <= std::numeric_limits<int32_t>::max(), "indices", idx.sizes(),
                    ": at most 2^31 - 1 samples (one block each)");
  if (batch > 0) {
    const int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(
        kWarp, (regions + kWarp - 1) / kWarp * kWarp)));
    scan_regions_kernel<<<static_cast<unsigned>(batch), threads, (threads + 1) * sizeof(int64_t), stream>>>(
        idx.data_ptr<int64_t>(), regions, splits, num_extra, rw, region_size, grid_h, grid_w,
        region_k.data_ptr<int32_t>(),
        region_start.data_ptr<int32_t>(), status.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto host = status.cpu();
  const int64_t* host_p = host.data_ptr<int64_t>();
  int64_t invalid = 0;
  for (int64_t b = 0; b < batch; ++b) invalid += host_p[batch + b];
  if (invalid != 0) {
    const auto where = ((idx < 0) | (idx >= splits.count)).nonzero().select(0, 0).cpu();
    const int64_t* at_p = where.data_ptr<int64_t>();
    const int64_t value = idx.select(0, at_p[0]).select(0, at_p[1]).select(0, at_p[2]).item<int64_t>();
    TORCH_CHECK_VALUE(false, "indices", idx.sizes(), " holds gate index ", value, " at sample ",
                      at_p[0], ", region (", at_p[1], ", ", at_p[2], "); valid indices are 0..",
                      splits.count - 1);
  }
  auto host_offsets = at::empty({batch + 1}, at::kLong);
  int64_t* offsets_p = host_offsets.data_ptr<int64_t>();
  offsets_p[0] = 0;
  for (int64_t b = 0; b < batch; ++b) offsets_p[b + 1] = offsets_p[b] + host_p[b];
  const int64_t total = offsets_p[batch];
  TORCH_CHECK_VALUE(total < std::numeric_limits<int32_t>::max(), "table of ", total,
                    " rows exceeds the int32 row index");
  // From pinned memory the upload is queued on the stream instead of waiting for it
  // (the caching host allocator keeps the buffer until the copy has run).
  const auto offsets = (idx.is_cuda() ? host_offsets.pin_memory() : host_offsets).to(idx.device(), true);

  auto rows = at::empty({total, kRowColumns}, int_opts);
  const int64_t items = batch * (num_extra + regions);
  if (items > 0) {
    write_rows_kernel<<<blocks_for(items, kThreads), kThreads, 0, stream>>>(
        region_start.data_ptr<int32_t>(), region_k.data_ptr<int32_t>(),
        offsets.data_ptr<int64_t>(), batch, rw, regions, region_size, grid_h, grid_w, num_extra,
        rows.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {rows, region_start, region_k, offsets, host.narrow(0, 0, batch).clone()};
}

at::Tensor compress_cuda(const at::Tensor& x_in, const at::Tensor& rows_in,
                         const at::Tensor& region_start, const at::Tensor& region_k,
                         const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                         int64_t region_size, int64_t num_extra, bool average) {
  check_compress_args(x_in, rows_in, region_start, region_k, offsets, grid_h, grid_w, region_size,
                      num_extra);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto x = x_in.contiguous();
  const auto rows = rows_in.contiguous();
  const int64_t total = rows.size(0), tokens = x.size(1), channels = x.size(2);
  auto out = at::empty({total, channels}, x.options());
  if (total * channels == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dge_compress_cuda", [&] {
    with_layout<scalar_t>(channels, std::max(x.numel(), out.numel()), {x.data_ptr(), out.data_ptr()},
                          [&](auto width, auto index) {
      using index_t = decltype(index);
      constexpr int N = decltype(width)::value;
      const int64_t packs = channels / N;
      const auto [grid, block] = token_rows_launch(total, packs);
      compress_kernel<scalar_t, N, index_t><<<grid, block, 0, stream>>>(
          x.data_ptr<scalar_t>(), rows.data_ptr<int32_t>(), total, tokens, packs, grid_h, grid_w,
          num_extra, average, out.data_ptr<scalar_t>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor decompress_cuda(const at::Tensor& src_in, const c10::optional<at::Tensor>& subtract_in,
                           const c10::optional<at::Tensor>& reference_in,
                           const at::Tensor& region_start_in, const at::Tensor& region_k_in,
                           const at::Tensor& offsets_in, int64_t grid_h, int64_t grid_w,
                           int64_t region_size, int64_t num_extra, bool divide_by_area) {
  check_decompress_args(src_in, subtract_in, reference_in, region_start_in, region_k_in,
                        offsets_in, grid_h, grid_w, region_size, num_extra);
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
    const scalar_t* subtract_p = subtract.defined() ? subtract.data_ptr<scalar_t>() : nullptr;
    const scalar_t* reference_p = reference.defined() ? reference.data_ptr<scalar_t>() : nullptr;
    with_layout<scalar_t>(channels, std::max(src.numel(), out.numel()),
                          {src.data_ptr(), subtract_p, reference_p, out.data_ptr()},
                          [&](auto width, auto index) {
      using index_t = decltype(index);
      constexpr int N = decltype(width)::value;
      const int64_t packs = channels / N;
      const auto [grid, block] = token_rows_launch(batch * tokens, packs);
      decompress_kernel<scalar_t, N, index_t><<<grid, block, 0, stream>>>(
          src.data_ptr<scalar_t>(), subtract_p, reference_p, region_start.data_ptr<int32_t>(),
          region_k.data_ptr<int32_t>(), offsets.data_ptr<int64_t>(), batch, tokens, packs, grid_h,
          grid_w, rh, rw, region_size, num_extra, divide_by_area, out.data_ptr<scalar_t>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace dge
