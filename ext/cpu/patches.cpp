// CPU kernels of the routing table, compress and decompress.
//
// All three parallelise with at::parallel_for over samples or region rows;
// the innermost loop always runs over a contiguous channel vector.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../dge_ops.h"
#include "simd.h"

#include <cstring>

namespace dge {
namespace {

// Rows per parallel task: enough channel work to amortise task start-up.  Waking
// a second thread costs about what 64K elements of this work take, and at small
// inputs (DeiT at 224 px: 197 x 192 values) every op of a block is a parallel
// region whose wait on the slower thread adds up; below that the op runs inline.
int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kTargetWork = 1 << 16;
  return std::max<int64_t>(1, kTargetWork / std::max<int64_t>(1, work_per_item));
}

// Per-region-row kernels: plain loops, instantiated per ISA below so that the
// compiler vectorises them for the running CPU.  Coarse patches are summed in
// registers (each packed value is stored once per grid line or once), never
// token by token in memory.  STEP > 0 fixes the patch side at compile time so
// that the token loops unroll; STEP == 0 is the generic case.
//
// Walk order.  Region order touches each region's packed rows once and in
// order, and reads or writes the dense side as region_size streams (one per
// grid line), switching stream after each region's segment of a line.  Line
// order streams the dense side but visits a slice of every region's packed
// block per line (docs/results/bench-ops.txt has the measurements).  Decompress,
// both orders interleaved in one process over 9 shapes: region order up to 1.5x
// faster (C = 64), at most 1.1x slower (plain decompress of DeiT-S at 256 px on
// one thread, the fused restore with segments over 5 KB).  Compress, interleaved
// in one process over 15 shapes: line order up to 1.6x faster while a segment is
// shorter than a page; beyond, region order up to 1.3x faster on most shapes,
// though not all (PVT stage 3, 5 KB segments: line order 1.27x faster on two
// threads, equal on one).
constexpr int64_t kLineOrderSegmentBytes = 4096;

// Ragged borders: a region in the last region row (column) of a grid that is not
// a multiple of the region size holds only `lines` grid lines (`width` tokens per
// line); its sub-patches that meet the grid are ceil(lines / step) x
// ceil(width / step), and those cut by the border are averaged over their own tokens.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// dst = ((first ? 0 : dst) + the sum of `n` consecutive tokens) * scale.
template <int STEP, typename T>
inline void pool_line(T* __restrict__ dst, const T* __restrict__ token, int64_t n_tokens,
                      int64_t channels, bool first, T scale) {
  const int64_t n = STEP > 0 ? STEP : n_tokens;
  for (int64_t c = 0; c < channels; ++c) {
    T sum = token[c];
    for (int64_t dx = 1; dx < n; ++dx) sum += token[dx * channels + c];
    dst[c] = (first ? sum : dst[c] + sum) * scale;
  }
}

// Line order: the region row's grid lines are read one after another as single
// sequential streams; each line adds its part to the packed rows it meets.
template <typename T>
inline void compress_by_lines_impl(const T* __restrict__ x, T* __restrict__ out,
                                   const int32_t* __restrict__ start,
                                   const int32_t* __restrict__ k_of, int64_t region_w,
                                   int64_t region_size, int64_t lines, int64_t grid_w,
                                   int64_t channels, bool average) {
  for (int64_t y_in = 0; y_in < lines; ++y_in) {
    const T* token = x + y_in * grid_w * channels;
    for (int64_t rx = 0; rx < region_w; ++rx) {
      const int64_t step = region_size / k_of[rx];
      const int64_t width = std::min(region_size, grid_w - rx * region_size);
      const int64_t k_x = ceil_div(width, step);
      T* dst = out + (start[rx] + (y_in / step) * k_x) * channels;
      if (step == 1) {  // finest: the line's tokens are the rows, one contiguous block
        for (int64_t c = 0; c < width * channels; ++c) dst[c] = token[c];
        token += width * channels;
        continue;
      }
      const bool first = y_in % step == 0;
      const int64_t patch_h = std::min(step, lines - (y_in / step) * step);
      // the patch's last line turns the sum into a mean while it is in cache
      const bool last = y_in % step == patch_h - 1;
      for (int64_t sx = 0; sx < k_x; ++sx, dst += channels) {
        const int64_t patch_w = std::min(step, width - sx * step);
        const T scale = average && last ? T(1) / static_cast<T>(patch_h * patch_w) : T(1);
        switch (patch_w) {
          case 2: pool_line<2>(dst, token, patch_w, channels, first, scale); break;
          case 4: pool_line<4>(dst, token, patch_w, channels, first, scale); break;
          default: pool_line<0>(dst, token, patch_w, channels, first, scale);
        }
        token += patch_w * channels;
      }
    }
  }
}

// dst = the sum of one patch_h x patch_w patch of tokens * scale (STEP > 0: a
// whole STEP x STEP patch, unrolled).
template <int STEP, typename T>
inline void pool_patch(T* __restrict__ dst, const T* __restrict__ patch, int64_t patch_h,
                       int64_t patch_w, int64_t line_stride, int64_t channels, T scale) {
  const int64_t n_y = STEP > 0 ? STEP : patch_h, n_x = STEP > 0 ? STEP : patch_w;
  for (int64_t c = 0; c < channels; ++c) {
    T sum = T(0);
    for (int64_t dy = 0; dy < n_y; ++dy)
      for (int64_t dx = 0; dx < n_x; ++dx) sum += patch[dy * line_stride + dx * channels + c];
    dst[c] = sum * scale;
  }
}

// Region order: each region's packed rows are written once and in order, while
// its grid lines are read as that many streams.
template <typename T>
inline void compress_by_regions_impl(const T* __restrict__ x, T* __restrict__ out,
                                     const int32_t* __restrict__ start,
                                     const int32_t* __restrict__ k_of, int64_t region_w,
                                     int64_t region_size, int64_t lines, int64_t grid_w,
                                     int64_t channels, bool average) {
  const int64_t line_stride = grid_w * channels;
  for (int64_t rx = 0; rx < region_w; ++rx) {
    const int64_t step = region_size / k_of[rx];
    const int64_t width = std::min(region_size, grid_w - rx * region_size);
    const int64_t k_x = ceil_div(width, step), k_y = ceil_div(lines, step);
    const T* region = x + rx * region_size * channels;
    T* dst = out + start[rx] * channels;
    if (step == 1) {  // finest: each grid line of the region is `width` consecutive rows
      for (int64_t y = 0; y < lines; ++y, dst += width * channels)
        for (int64_t c = 0; c < width * channels; ++c) dst[c] = region[y * line_stride + c];
      continue;
    }
    for (int64_t sy = 0; sy < k_y; ++sy) {
      const int64_t patch_h = std::min(step, lines - sy * step);
      for (int64_t sx = 0; sx < k_x; ++sx, dst += channels) {
        const int64_t patch_w = std::min(step, width - sx * step);
        const T scale = average ? T(1) / static_cast<T>(patch_h * patch_w) : T(1);
        const T* patch = region + (sy * step * grid_w + sx * step) * channels;
        const bool whole = patch_h == step && patch_w == step;
        switch (whole ? step : 0) {
          case 2: pool_patch<2>(dst, patch, patch_h, patch_w, line_stride, channels, scale); break;
          case 4: pool_patch<4>(dst, patch, patch_h, patch_w, line_stride, channels, scale); break;
          default: pool_patch<0>(dst, patch, patch_h, patch_w, line_stride, channels, scale);
        }
      }
    }
  }
}

// Every region writes its tokens the same way whatever its granularity: patch by
// patch along each grid line, the packed row advancing once per patch.
template <typename T>
inline void decompress_region_row_impl(T* __restrict__ out, const T* __restrict__ src,
                                       const T* __restrict__ subtract,
                                       const T* __restrict__ reference,
                                       const int32_t* __restrict__ start,
                                       const int32_t* __restrict__ k_of, int64_t region_w,
                                       int64_t region_size, int64_t lines, int64_t grid_w,
                                       int64_t channels, bool divide_by_area) {
  const int64_t line_stride = grid_w * channels;
  for (int64_t rx = 0; rx < region_w; ++rx) {
    const int64_t step = region_size / k_of[rx];
    const int64_t width = std::min(region_size, grid_w - rx * region_size);
    const int64_t k_x = ceil_div(width, step);
    for (int64_t y = 0; y < lines; ++y) {
      const int64_t at = y * line_stride + rx * region_size * channels;
      T* o = out + at;
      const T* r = reference != nullptr ? reference + at : nullptr;
      const int64_t first_row = start[rx] + (y / step) * k_x;
      const int64_t patch_h = std::min(step, lines - (y / step) * step);
      for (int64_t sx = 0; sx < k_x; ++sx) {
        const int64_t patch_w = std::min(step, width - sx * step);
        const T a = divide_by_area ? T(1) / static_cast<T>(patch_h * patch_w) : T(1);
        const T* s = src + (first_row + sx) * channels;
        const T* m = subtract != nullptr ? subtract + (first_row + sx) * channels : nullptr;
        for (int64_t t = 0; t < patch_w; ++t, o += channels) {
          if (r != nullptr) {
            if (m != nullptr) {
              for (int64_t c = 0; c < channels; ++c) o[c] = a * (s[c] - m[c]) + r[c];
            } else {
              for (int64_t c = 0; c < channels; ++c) o[c] = a * s[c] + r[c];
            }
            r += channels;
          } else if (m != nullptr) {
            for (int64_t c = 0; c < channels; ++c) o[c] = a * (s[c] - m[c]);
          } else {
            for (int64_t c = 0; c < channels; ++c) o[c] = a * s[c];
          }
        }
      }
    }
  }
}

#define DGE_REGION_ROW_KERNELS(T, ATTRIBUTES)                                                  \
  ATTRIBUTES void compress_region_row(const T* x, T* out, const int32_t* start,               \
                                      const int32_t* k_of, int64_t region_w,                  \
                                      int64_t region_size, int64_t lines, int64_t grid_w,     \
                                      int64_t channels, bool average, bool by_lines) {        \
    if (by_lines) {                                                                           \
      compress_by_lines_impl(x, out, start, k_of, region_w, region_size, lines, grid_w,       \
                             channels, average);                                              \
    } else {                                                                                  \
      compress_by_regions_impl(x, out, start, k_of, region_w, region_size, lines, grid_w,     \
                               channels, average);                                            \
    }                                                                                         \
  }                                                                                           \
  ATTRIBUTES void decompress_region_row(T* out, const T* src, const T* subtract,              \
                                        const T* reference, const int32_t* start,             \
                                        const int32_t* k_of, int64_t region_w,                \
                                        int64_t region_size, int64_t lines, int64_t grid_w,   \
                                        int64_t channels, bool divide_by_area) {              \
    decompress_region_row_impl(out, src, subtract, reference, start, k_of, region_w,          \
                               region_size, lines, grid_w, channels, divide_by_area);         \
  }

DGE_REGION_ROW_KERNELS(float, DGE_SIMD_CLONES)
DGE_REGION_ROW_KERNELS(double, )
#undef DGE_REGION_ROW_KERNELS

}  // namespace

Table route_to_patches_cpu(const at::Tensor& indices, at::IntArrayRef split_sizes,
                           int64_t region_size, int64_t num_extra, int64_t grid_h,
                           int64_t grid_w) {
  check_route_args(indices, split_sizes, region_size, num_extra, grid_h, grid_w);
  const auto idx = indices.contiguous();
  const int64_t batch = idx.size(0), rh = idx.size(1), rw = idx.size(2);
  const int64_t regions = rh * rw;
  const int64_t options = static_cast<int64_t>(split_sizes.size());
  const std::vector<int64_t> splits(split_sizes.begin(), split_sizes.end());

  auto int_opts = idx.options().dtype(at::kInt);
  auto region_k = at::empty({batch, rh, rw}, int_opts);
  auto region_start = at::empty({batch, rh, rw}, int_opts);
  auto lengths = at::empty({batch}, idx.options());
  auto offsets = at::empty({batch + 1}, idx.options());
  const int64_t* idx_p = idx.data_ptr<int64_t>();
  int32_t* k_p = region_k.data_ptr<int32_t>();
  int32_t* start_p = region_start.data_ptr<int32_t>();
  int64_t* len_p = lengths.data_ptr<int64_t>();
  int64_t* off_p = offsets.data_ptr<int64_t>();

  // Pass 1: sub-patch count per region and the per-sample row offsets.
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t rows_so_far = num_extra;
      for (int64_t r = 0; r < regions; ++r) {
        const int64_t choice = idx_p[b * regions + r];
        TORCH_CHECK_VALUE(choice >= 0 && choice < options, "indices", idx.sizes(),
                          " holds gate index ", choice, " at sample ", b, ", region (",
                          r / rw, ", ", r % rw, "); valid indices are 0..", options - 1);
        const int64_t k = splits[choice], step = region_size / k;
        k_p[b * regions + r] = static_cast<int32_t>(k);
        start_p[b * regions + r] = static_cast<int32_t>(rows_so_far);
        rows_so_far += ceil_div(std::min(region_size, grid_h - (r / rw) * region_size), step) *
                       ceil_div(std::min(region_size, grid_w - (r % rw) * region_size), step);
      }
      len_p[b] = rows_so_far;
    }
  });
  off_p[0] = 0;
  for (int64_t b = 0; b < batch; ++b) off_p[b + 1] = off_p[b] + len_p[b];
  const int64_t total = off_p[batch];
  TORCH_CHECK_VALUE(total < std::numeric_limits<int32_t>::max(), "table of ", total,
                    " rows exceeds the int32 row index");

  // Pass 2: absolute region starts and the rows themselves.
  auto rows = at::empty({total, kRowColumns}, int_opts);
  int32_t* rows_p = rows.data_ptr<int32_t>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t base = off_p[b];
      for (int64_t e = 0; e < num_extra; ++e) {
        int32_t* row = rows_p + (base + e) * kRowColumns;
        row[0] = static_cast<int32_t>(b);
        row[1] = static_cast<int32_t>(-(e + 1));
        row[2] = 0;
        row[3] = 1;
      }
      for (int64_t r = 0; r < regions; ++r) {
        const int64_t start = base + start_p[b * regions + r];
        start_p[b * regions + r] = static_cast<int32_t>(start);
        const int64_t step = region_size / k_p[b * regions + r];
        const int64_t y_base = (r / rw) * region_size, x_base = (r % rw) * region_size;
        const int64_t k_y = ceil_div(std::min(region_size, grid_h - y_base), step);
        const int64_t k_x = ceil_div(std::min(region_size, grid_w - x_base), step);
        for (int64_t j = 0; j < k_y * k_x; ++j) {
          int32_t* row = rows_p + (start + j) * kRowColumns;
          row[0] = static_cast<int32_t>(b);
          row[1] = static_cast<int32_t>(y_base + (j / k_x) * step);
          row[2] = static_cast<int32_t>(x_base + (j % k_x) * step);
          row[3] = static_cast<int32_t>(step);
        }
      }
    }
  });
  return {rows, region_start, region_k, offsets, lengths};
}

at::Tensor compress_cpu(const at::Tensor& x_in, const at::Tensor& rows,
                        const at::Tensor& region_start_in, const at::Tensor& region_k_in,
                        const at::Tensor& offsets_in, int64_t grid_h, int64_t grid_w,
                        int64_t region_size, int64_t num_extra, bool average) {
  check_compress_args(x_in, rows, region_start_in, region_k_in, offsets_in, grid_h, grid_w,
                      region_size, num_extra);
  const auto x = x_in.contiguous();
  const auto region_start = region_start_in.contiguous();
  const auto region_k = region_k_in.contiguous();
  const auto offsets = offsets_in.contiguous();
  const int64_t batch = region_k.size(0), rh = region_k.size(1), rw = region_k.size(2);
  const int64_t tokens = x.size(1), channels = x.size(2);
  auto out = at::empty({rows.size(0), channels}, x.options());
  const int32_t* start_p = region_start.data_ptr<int32_t>();
  const int32_t* k_p = region_k.data_ptr<int32_t>();
  const int64_t* off_p = offsets.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dge_compress_cpu", [&] {
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    // Items: the region rows of every sample, plus one per sample for its
    // extra tokens; each item owns a disjoint block of output rows.
    const int64_t items = rh + 1;
    const bool by_lines = region_size * channels * static_cast<int64_t>(sizeof(scalar_t)) <
                          kLineOrderSegmentBytes;
    at::parallel_for(0, batch * items, grain_for(region_size * grid_w * channels),
                     [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / items, ry = i % items;
        const scalar_t* sample = x_p + b * tokens * channels;
        if (ry == rh) {
          std::memcpy(out_p + off_p[b] * channels, sample, num_extra * channels * sizeof(scalar_t));
          continue;
        }
        const int64_t region = (b * rh + ry) * rw;
        compress_region_row(sample + (num_extra + ry * region_size * grid_w) * channels, out_p,
                            start_p + region, k_p + region, rw, region_size,
                            std::min(region_size, grid_h - ry * region_size), grid_w, channels,
                            average, by_lines);
      }
    });
  });
  return out;
}

at::Tensor decompress_cpu(const at::Tensor& src_in, const c10::optional<at::Tensor>& subtract_in,
                          const c10::optional<at::Tensor>& reference_in,
                          const at::Tensor& region_start_in, const at::Tensor& region_k_in,
                          const at::Tensor& offsets_in, int64_t grid_h, int64_t grid_w,
                          int64_t region_size, int64_t num_extra, bool divide_by_area) {
  check_decompress_args(src_in, subtract_in, reference_in, region_start_in, region_k_in,
                        offsets_in, grid_h, grid_w, region_size, num_extra);
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
  const int32_t* start_p = region_start.data_ptr<int32_t>();
  const int32_t* k_p = region_k.data_ptr<int32_t>();
  const int64_t* off_p = offsets.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "dge_decompress_cpu", [&] {
    const scalar_t* src_p = src.data_ptr<scalar_t>();
    const scalar_t* sub_p = subtract.defined() ? subtract.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ref_p = reference.defined() ? reference.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_p = out.data_ptr<scalar_t>();
    // Items: the region rows of every sample, plus one per sample for its extra
    // tokens (an extra token is a region of one token: same kernel).
    const int64_t items = rh + 1;
    at::parallel_for(0, batch * items, grain_for(region_size * grid_w * channels),
                     [&](int64_t i0, int64_t i1) {
      const int32_t one = 1;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / items, ry = i % items;
        const int64_t first_token = ry == rh ? 0 : num_extra + ry * region_size * grid_w;
        const int64_t at = (b * tokens + first_token) * channels;
        const scalar_t* ref_row = ref_p != nullptr ? ref_p + at : nullptr;
        if (ry == rh) {
          for (int64_t e = 0; e < num_extra; ++e) {
            const int32_t row = static_cast<int32_t>(off_p[b] + e);
            decompress_region_row(out_p + at + e * channels, src_p, sub_p,
                                  ref_row != nullptr ? ref_row + e * channels : nullptr, &row,
                                  &one, 1, 1, 1, 1, channels, divide_by_area);
          }
          continue;
        }
        const int64_t region = (b * rh + ry) * rw;
        decompress_region_row(out_p + at, src_p, sub_p, ref_row, start_p + region, k_p + region,
                              rw, region_size, std::min(region_size, grid_h - ry * region_size),
                              grid_w, channels, divide_by_area);
      }
    });
  });
  return out;
}

}  // namespace dge
