// Declarations shared by the CPU and CUDA kernels of the DGE sparse ops.
//
// Packed ("varlen") layout: the queries of all samples are concatenated along
// dim 0, sample b owning rows [offsets[b], offsets[b+1]).  Within a sample the
// rows are the num_extra extra tokens, then the regions in raster order, then
// the k*k sub-patches of each region in raster order.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace dge {

// Patch-table columns of `rows` ([L, 4], int32): sample, y0, x0, step.
// Extra token e is stored as (sample, -(e + 1), 0, 1).
constexpr int64_t kRowColumns = 4;

// Largest split size the kernels accept: a region then holds at most 64 tokens
// per side, which keeps int32 row arithmetic far from overflow.
constexpr int64_t kMaxRegionSize = 64;

// Largest head dimension of the CUDA attention kernels (4 values per lane).
constexpr int64_t kMaxHeadDim = 128;

// CUDA limits: split sizes of one routing (the table kernel's fixed array) and
// heads (the attention grid's y dimension).  Split sizes divide the region size,
// so no valid routing can have more of them than a region size <= 64 has divisors.
constexpr int64_t kMaxSplitOptions = 16;
constexpr int64_t kMaxCudaHeads = 65535;

constexpr int64_t most_divisors(int64_t up_to) {
  int64_t most = 0;
  for (int64_t n = 1; n <= up_to; ++n) {
    int64_t count = 0;
    for (int64_t d = 1; d <= n; ++d) count += n % d == 0;
    most = count > most ? count : most;
  }
  return most;
}
static_assert(most_divisors(kMaxRegionSize) <= kMaxSplitOptions,
              "a region size <= kMaxRegionSize can have more split sizes than the CUDA table holds");

using Table = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// rows [L,4] int32, region_start [B,Hr,Wr] int32 (absolute packed row of the
// region's first sub-patch), region_k [B,Hr,Wr] int32 (sub-patches per side),
// offsets [B+1] int64 on the indices' device, lengths [B] int64 on the host.
// The token grid is grid_h x grid_w, Hr = ceil(grid_h / region_size) (likewise
// Wr): where the grid is not a multiple of the region size its last regions are
// cut by the border, a patch covers [y0, min(y0 + step, grid_h)) x [x0,
// min(x0 + step, grid_w)), and a region holds ceil(h / step) x ceil(w / step)
// sub-patches for its h x w part of the grid (k x k when whole).
Table route_to_patches_cpu(const at::Tensor& indices, at::IntArrayRef split_sizes,
                           int64_t region_size, int64_t num_extra, int64_t grid_h,
                           int64_t grid_w);

// out[l] = mean (average) or sum of the tokens covered by row l of `rows`.
// Both table forms are passed; each backend reads the one its loops need.
at::Tensor compress_cpu(const at::Tensor& x, const at::Tensor& rows,
                        const at::Tensor& region_start, const at::Tensor& region_k,
                        const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                        int64_t region_size, int64_t num_extra, bool average);

// out[b,n] = reference[b,n] + a * (src[p] - subtract[p]) with p the row
// covering token n and a = 1 / area(p) when divide_by_area, else 1.
// `subtract` and `reference` are optional.
at::Tensor decompress_cpu(const at::Tensor& src, const c10::optional<at::Tensor>& subtract,
                          const c10::optional<at::Tensor>& reference,
                          const at::Tensor& region_start, const at::Tensor& region_k,
                          const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                          int64_t region_size, int64_t num_extra, bool divide_by_area);

// out [L,h,d] = per-sample softmax(scale q k^T) v; lse [L,h] (float32 for
// reduced precision, else the input dtype) when return_lse, else empty.
std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    double scale, bool return_lse);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& offsets, double scale);

// The segmentation-scoring protocol of every map [M, H, W] (float32/float64)
// against its bool mask: counts [M, 3] int64 (predicted foreground on mask
// foreground, predicted foreground, mask foreground), ap [M] float64, and
// histograms [M, 2, bins] int64 of the foreground score over mask foreground
// (row 0) and background (row 1).  CPU only.
std::tuple<at::Tensor, at::Tensor, at::Tensor> segmentation_scores_cpu(const at::Tensor& maps,
                                                                      const at::Tensor& masks,
                                                                      int64_t bins);

// Deformable point attention (DPVT): every query row l of sample b (offsets
// [B+1] give each sample's rows) and head h samples value [B, H, W, h, d]
// bilinearly, zero outside [0, H) x [0, W), at its P points locations [L, h, P, 2]
// = (x, y) in pixel-index coordinates (integer = pixel centre), and sums the
// samples with weights [L, h, P]: out [L, h, d].  Non-finite locations sample 0.
at::Tensor deformable_attention_forward_cpu(const at::Tensor& value, const at::Tensor& locations,
                                            const at::Tensor& weights, const at::Tensor& offsets);

// (grad_value [B, H, W, h, d], grad_locations [L, h, P, 2], grad_weights [L, h, P]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> deformable_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& locations,
    const at::Tensor& weights, const at::Tensor& offsets);

#ifdef DGE_WITH_CUDA
Table route_to_patches_cuda(const at::Tensor& indices, at::IntArrayRef split_sizes,
                            int64_t region_size, int64_t num_extra, int64_t grid_h,
                            int64_t grid_w);
at::Tensor compress_cuda(const at::Tensor& x, const at::Tensor& rows,
                         const at::Tensor& region_start, const at::Tensor& region_k,
                         const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                         int64_t region_size, int64_t num_extra, bool average);
at::Tensor decompress_cuda(const at::Tensor& src, const c10::optional<at::Tensor>& subtract,
                           const c10::optional<at::Tensor>& reference,
                           const at::Tensor& region_start, const at::Tensor& region_k,
                           const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                           int64_t region_size, int64_t num_extra, bool divide_by_area);
std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    double scale, bool return_lse);
std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& offsets, double scale);
at::Tensor deformable_attention_forward_cuda(const at::Tensor& value, const at::Tensor& locations,
                                             const at::Tensor& weights, const at::Tensor& offsets);
std::tuple<at::Tensor, at::Tensor, at::Tensor> deformable_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& locations,
    const at::Tensor& weights, const at::Tensor& offsets);
#endif

// Contract checks shared by both backends (the Python wrappers validate user
// input first; these guard the kernels against misuse from C++).
void check_route_args(const at::Tensor& indices, at::IntArrayRef split_sizes,
                      int64_t region_size, int64_t num_extra, int64_t grid_h, int64_t grid_w);
void check_compress_args(const at::Tensor& x, const at::Tensor& rows,
                         const at::Tensor& region_start, const at::Tensor& region_k,
                         const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                         int64_t region_size, int64_t num_extra);
void check_decompress_args(const at::Tensor& src, const c10::optional<at::Tensor>& subtract,
                           const c10::optional<at::Tensor>& reference,
                           const at::Tensor& region_start, const at::Tensor& region_k,
                           const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                           int64_t region_size, int64_t num_extra);
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& offsets);
// value [B,H,W,h,d], locations [L,h,P,2], weights [L,h,P] contiguous, one dtype
// and device; offsets int64 [B+1] on that device; grad_out (optional) [L,h,d].
void check_deformable_args(const at::Tensor& value, const at::Tensor& locations,
                           const at::Tensor& weights, const at::Tensor& offsets,
                           const at::Tensor* grad_out);
// lse_type: the dtype the backend's forward gives lse.
void check_attention_grad_args(const at::Tensor& q, const at::Tensor& grad_out,
                               const at::Tensor& out, const at::Tensor& lse,
                               at::ScalarType lse_type);

}  // namespace dge
