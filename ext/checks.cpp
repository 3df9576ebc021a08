// Contract checks of the kernels.  They raise ValueError (TORCH_CHECK_VALUE)
// naming the argument and its shape, so a misuse from C++ reads like a misuse
// from the Python wrappers.
#include "dge_ops.h"

namespace dge {
namespace {

void check_region_size(int64_t region_size) {
  TORCH_CHECK_VALUE(region_size >= 1 && region_size <= kMaxRegionSize,
                    "region_size must be in [1, ", kMaxRegionSize, "], got ", region_size);
}

void check_table(const at::Tensor& region_start, const at::Tensor& region_k,
                 const at::Tensor& offsets, int64_t grid_h, int64_t grid_w, int64_t region_size,
                 const at::Device& device) {
  TORCH_CHECK_VALUE(region_start.dim() == 3 && region_k.sizes() == region_start.sizes() &&
                        region_start.scalar_type() == at::kInt &&
                        region_k.scalar_type() == at::kInt,
                    "region_start/region_k must be int32 [B, Hr, Wr], got ",
                    region_start.sizes(), " and ", region_k.sizes());
  check_region_size(region_size);
  // the last region row / column may be cut short by the grid's border
  TORCH_CHECK_VALUE(grid_h > 0 && grid_w > 0 &&
                        region_k.size(1) == (grid_h + region_size - 1) / region_size &&
                        region_k.size(2) == (grid_w + region_size - 1) / region_size,
                    "grid ", grid_h, "x", grid_w, " does not tile into region grid ",
                    region_k.size(1), "x", region_k.size(2), " of ", region_size, "x",
                    region_size, " regions");
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == region_k.size(0) + 1 &&
                        offsets.scalar_type() == at::kLong,
                    "offsets must be int64 [B+1] = [", region_k.size(0) + 1, "], got ",
                    offsets.sizes());
  TORCH_CHECK_VALUE(region_k.device() == device && region_start.device() == device &&
                        offsets.device() == device,
                    "table on ", region_k.device(), " but the data on ", device);
}

}  // namespace

void check_route_args(const at::Tensor& indices, at::IntArrayRef split_sizes,
                      int64_t region_size, int64_t num_extra, int64_t grid_h, int64_t grid_w) {
  TORCH_CHECK_VALUE(indices.dim() == 3, "indices must be [B, Hr, Wr], got shape ",
                    indices.sizes());
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong, "indices must be int64, got ",
                    indices.scalar_type());
  TORCH_CHECK_VALUE(!split_sizes.empty(), "split_sizes must not be empty");
  check_region_size(region_size);
  TORCH_CHECK_VALUE(grid_h > 0 && grid_w > 0 &&
                        indices.size(1) == (grid_h + region_size - 1) / region_size &&
                        indices.size(2) == (grid_w + region_size - 1) / region_size,
                    "indices ", indices.sizes(), " do not tile the token grid ", grid_h, "x",
                    grid_w, " in ", region_size, "x", region_size, " regions");
  for (int64_t k : split_sizes) {
    TORCH_CHECK_VALUE(k >= 1 && region_size % k == 0, "split_sizes ", split_sizes,
                      " must divide region_size ", region_size);
  }
  TORCH_CHECK_VALUE(num_extra >= 0, "num_extra must be >= 0, got ", num_extra);
}

void check_compress_args(const at::Tensor& x, const at::Tensor& rows,
                         const at::Tensor& region_start, const at::Tensor& region_k,
                         const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                         int64_t region_size, int64_t num_extra) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x must be [B, N, C], got shape ", x.sizes());
  TORCH_CHECK_VALUE(rows.dim() == 2 && rows.size(1) == kRowColumns &&
                        rows.scalar_type() == at::kInt,
                    "rows must be an int32 [L, 4] table, got ", rows.scalar_type(), " ",
                    rows.sizes());
  check_table(region_start, region_k, offsets, grid_h, grid_w, region_size, x.device());
  TORCH_CHECK_VALUE(rows.device() == x.device(), "rows on ", rows.device(), " but x on ",
                    x.device());
  TORCH_CHECK_VALUE(x.size(0) == region_k.size(0) && x.size(1) == num_extra + grid_h * grid_w,
                    "x ", x.sizes(), " does not match the table: [", region_k.size(0), ", ",
                    num_extra + grid_h * grid_w, ", C]");
}

void check_decompress_args(const at::Tensor& src, const c10::optional<at::Tensor>& subtract,
                           const c10::optional<at::Tensor>& reference,
                           const at::Tensor& region_start, const at::Tensor& region_k,
                           const at::Tensor& offsets, int64_t grid_h, int64_t grid_w,
                           int64_t region_size, int64_t num_extra) {
  TORCH_CHECK_VALUE(src.dim() == 2, "src must be [L, C], got shape ", src.sizes());
  if (subtract.has_value()) {
    TORCH_CHECK_VALUE(subtract->sizes() == src.sizes() &&
                          subtract->scalar_type() == src.scalar_type() &&
                          subtract->device() == src.device(),
                      "subtract ", subtract->sizes(), " must match src ", src.sizes());
  }
  check_table(region_start, region_k, offsets, grid_h, grid_w, region_size, src.device());
  const int64_t batch = region_k.size(0);
  if (reference.has_value()) {
    TORCH_CHECK_VALUE(reference->dim() == 3 && reference->size(0) == batch &&
                          reference->size(1) == num_extra + grid_h * grid_w &&
                          reference->size(2) == src.size(1) &&
                          reference->scalar_type() == src.scalar_type() &&
                          reference->device() == src.device(),
                      "reference ", reference->sizes(), " must be [", batch, ", ",
                      num_extra + grid_h * grid_w, ", ", src.size(1), "] like src");
  }
}

void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(q.dim() == 3, "q must be [L, h, d], got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 4 && v.sizes() == k.sizes(), "k and v must be [B, h, Nk, d], got ",
                    k.sizes(), " and ", v.sizes());
  TORCH_CHECK_VALUE(k.size(1) == q.size(1) && k.size(3) == q.size(2), "q ", q.sizes(),
                    " and k ", k.sizes(), " disagree on heads or head dim");
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == k.size(0) + 1 &&
                        offsets.scalar_type() == at::kLong,
                    "offsets must be int64 [B+1] = [", k.size(0) + 1, "], got ", offsets.sizes());
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                    "q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                    v.scalar_type());
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device() &&
                        offsets.device() == q.device(),
                    "q, k, v and offsets must share a device");
  TORCH_CHECK_VALUE(q.size(2) > 0, "q ", q.sizes(), " has an empty head dim");
  TORCH_CHECK_VALUE(q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                    "q, k, v need a unit stride on the head dim");
  // The kernels index q by these bounds: on CUDA the check costs one copy of B + 1
  // integers to the host (and a synchronisation), the price of never reading past q.
  const at::Tensor host = offsets.is_cpu() ? offsets.contiguous() : offsets.to(at::kCPU);
  const int64_t* off = host.data_ptr<int64_t>();
  const int64_t batch = k.size(0), total = q.size(0);
  TORCH_CHECK_VALUE(off[0] == 0 && off[batch] == total, "offsets must run from 0 to L = ", total,
                    ", got ", off[0], " .. ", off[batch]);
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK_VALUE(off[b] <= off[b + 1], "offsets must be non-decreasing, got ", off[b],
                      " then ", off[b + 1]);
}

void check_attention_grad_args(const at::Tensor& q, const at::Tensor& grad_out,
                               const at::Tensor& out, const at::Tensor& lse,
                               at::ScalarType lse_type) {
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out ",
                    grad_out.sizes(), " and out ", out.sizes(), " must match q ", q.sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
                    "grad_out and out must have q's dtype ", q.scalar_type());
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                        lse.scalar_type() == lse_type,
                    "lse must be ", lse_type, " [L, h] = [", q.size(0), ", ", q.size(1), "], got ",
                    lse.scalar_type(), " ", lse.sizes());
  TORCH_CHECK_VALUE(grad_out.device() == q.device() && out.device() == q.device() &&
                        lse.device() == q.device(),
                    "grad_out, out and lse must be on q's device ", q.device());
}

void check_deformable_args(const at::Tensor& value, const at::Tensor& locations,
                           const at::Tensor& weights, const at::Tensor& offsets,
                           const at::Tensor* grad_out) {
  TORCH_CHECK_VALUE(value.dim() == 5, "value must be [B, H, W, h, d], got shape ", value.sizes());
  TORCH_CHECK_VALUE(locations.dim() == 4 && locations.size(3) == 2 &&
                        locations.size(1) == value.size(3),
                    "locations must be [L, h, P, 2] with h = ", value.size(3), ", got ",
                    locations.sizes());
  TORCH_CHECK_VALUE(weights.dim() == 3 && weights.size(0) == locations.size(0) &&
                        weights.size(1) == locations.size(1) && weights.size(2) == locations.size(2),
                    "weights must be [L, h, P] = [", locations.size(0), ", ", locations.size(1),
                    ", ", locations.size(2), "], got ", weights.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == value.size(0) + 1 &&
                        offsets.scalar_type() == at::kLong,
                    "offsets must be int64 [B+1] = [", value.size(0) + 1, "], got ",
                    offsets.scalar_type(), " ", offsets.sizes());
  TORCH_CHECK_VALUE(locations.scalar_type() == value.scalar_type() &&
                        weights.scalar_type() == value.scalar_type(),
                    "locations (", locations.scalar_type(), ") and weights (",
                    weights.scalar_type(), ") must have value's dtype ", value.scalar_type());
  TORCH_CHECK_VALUE(locations.device() == value.device() && weights.device() == value.device() &&
                        offsets.device() == value.device(),
                    "locations, weights and offsets must be on value's device ", value.device());
  TORCH_CHECK_VALUE(value.is_contiguous() && locations.is_contiguous() && weights.is_contiguous(),
                    "value, locations and weights must be contiguous");
  TORCH_CHECK_VALUE(value.size(1) < (int64_t(1) << 30) && value.size(2) < (int64_t(1) << 30),
                    "value map ", value.size(1), "x", value.size(2), " is too large");
  if (grad_out != nullptr) {
    TORCH_CHECK_VALUE(grad_out->dim() == 3 && grad_out->size(0) == locations.size(0) &&
                          grad_out->size(1) == value.size(3) && grad_out->size(2) == value.size(4),
                      "grad_out must be [L, h, d] = [", locations.size(0), ", ", value.size(3), ", ",
                      value.size(4), "], got ", grad_out->sizes());
    TORCH_CHECK_VALUE(grad_out->scalar_type() == value.scalar_type() &&
                          grad_out->device() == value.device() && grad_out->is_contiguous(),
                      "grad_out must be a contiguous ", value.scalar_type(), " tensor on ",
                      value.device());
  }
}

}  // namespace dge
