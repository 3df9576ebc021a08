// CUDA varlen attention over packed queries: one warp per query row (forward,
// dQ) or per key row (dK, dV).  Keys are taken 32 at a time, one per lane, from
// a transposed shared-memory tile (stride 33: conflict-free on write and
// read); the softmax is online, accumulated in opmath (float32 for half and
// bfloat16).  Everything runs on the current stream; no atomics, no scratch of
// [h, L, Nk], and the incoming gradient is only read.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../dge_ops.h"
#include "common.cuh"

namespace dge {
namespace {

constexpr int kTileStride = kWarp + 1;
constexpr int kValuesPerLane = kMaxHeadDim / kWarp;
constexpr int64_t kDefaultSharedBytes = 48 * 1024;

template <typename scalar_t>
struct AttentionArgs {
  const scalar_t* q;  // [L, h, d], strides (q_row, q_head, 1)
  int64_t q_row, q_head;
  const scalar_t* k;  // [B, h, Nk, d], strides (k_batch, k_head, k_key, 1)
  int64_t k_batch, k_head, k_key;
  const scalar_t* v;
  int64_t v_batch, v_head, v_key;
  const int64_t* offsets;  // [B + 1] on the device
  int64_t batch, total, heads, keys, dim;
  double scale;
};

// Sample b with offsets[b] <= row < offsets[b + 1] (empty samples skipped).
__device__ __forceinline__ int64_t sample_of(const int64_t* offsets, int64_t batch, int64_t row) {
  int64_t lo = 0, hi = batch;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= row) lo = mid; else hi = mid;
  }
  return lo;
}

// tile[d * 33 + j] = scale * rows[j][d] for j < count.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_transposed(acc_t* tile, const scalar_t* first, int64_t row_stride,
                                                int count, int dim, acc_t scale, int lane) {
  for (int j = 0; j < count; ++j) {
    const scalar_t* row = first + j * row_stride;
    for (int d = lane; d < dim; d += kWarp) tile[d * kTileStride + j] = scale * static_cast<acc_t>(row[d]);
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_row(acc_t* dst, const scalar_t* row, int dim, acc_t scale, int lane) {
  for (int d = lane; d < dim; d += kWarp) dst[d] = scale * static_cast<acc_t>(row[d]);
}

// Dot product of the shared vector `vec` with column `lane` of a transposed tile.
template <typename acc_t>
__device__ __forceinline__ acc_t column_dot(const acc_t* vec, const acc_t* tile, int dim, int lane) {
  acc_t dot = 0;
  for (int d = 0; d < dim; ++d) dot += vec[d] * tile[d * kTileStride + lane];
  return dot;
}

template <typename scalar_t, typename acc_t>
__global__ void attention_forward_kernel(AttentionArgs<scalar_t> a, scalar_t* __restrict__ out,
                                         acc_t* __restrict__ lse) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;
  const int64_t head = blockIdx.y;
  if (row >= a.total) return;  // whole warps leave together
  const int dim = static_cast<int>(a.dim);
  acc_t* k_tile = reinterpret_cast<acc_t*>(shared_raw) + warp * (dim * kTileStride + dim);
  acc_t* q_vec = k_tile + dim * kTileStride;

  const int64_t b = sample_of(a.offsets, a.batch, row);
  load_row(q_vec, a.q + row * a.q_row + head * a.q_head, dim, static_cast<acc_t>(a.scale), lane);
  const scalar_t* k_base = a.k + b * a.k_batch + head * a.k_head;
  const scalar_t* v_base = a.v + b * a.v_batch + head * a.v_head;

  acc_t acc[kValuesPerLane] = {};
  acc_t run_max = -INFINITY, run_sum = 0;
  for (int64_t j0 = 0; j0 < a.keys; j0 += kWarp) {
    const int count = static_cast<int>(min(static_cast<int64_t>(kWarp), a.keys - j0));
    __syncwarp();
    load_transposed(k_tile, k_base + j0 * a.k_key, a.k_key, count, dim, acc_t(1), lane);
    __syncwarp();
    const acc_t score = lane < count ? column_dot(q_vec, k_tile, dim, lane) : acc_t(-INFINITY);
    const acc_t new_max = max(run_max, warp_max(score));
    const acc_t prob = lane < count ? exp(score - new_max) : acc_t(0);
    const acc_t correction = exp(run_max - new_max);
    run_sum = run_sum * correction + warp_sum(prob);
#pragma unroll
    for (int i = 0; i < kValuesPerLane; ++i) acc[i] *= correction;
    for (int j = 0; j < count; ++j) {
      const acc_t p = __shfl_sync(kFullMask, prob, j);
      const scalar_t* v_row = v_base + (j0 + j) * a.v_key;
#pragma unroll
      for (int i = 0; i < kValuesPerLane; ++i) {
        const int d = lane + i * kWarp;
        if (d < dim) acc[i] += p * static_cast<acc_t>(v_row[d]);
      }
    }
    run_max = new_max;
  }
  scalar_t* out_row = out + (row * a.heads + head) * dim;
#pragma unroll
  for (int i = 0; i < kValuesPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < dim) out_row[d] = static_cast<scalar_t>(acc[i] / run_sum);
  }
  if (lse != nullptr && lane == 0) lse[row * a.heads + head] = run_max + log(run_sum);
}

// dQ_i = scale * sum_j P_ij (dP_ij - D_i) K_j with dP_ij = dO_i . V_j.
template <typename scalar_t, typename acc_t>
__global__ void attention_grad_q_kernel(AttentionArgs<scalar_t> a, const scalar_t* __restrict__ grad_out,
                                        const acc_t* __restrict__ lse,
                                        const acc_t* __restrict__ row_dot,
                                        scalar_t* __restrict__ grad_q) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;
  const int64_t head = blockIdx.y;
  if (row >= a.total) return;
  const int dim = static_cast<int>(a.dim);
  acc_t* k_tile = reinterpret_cast<acc_t*>(shared_raw) + warp * (2 * dim * kTileStride + 2 * dim);
  acc_t* v_tile = k_tile + dim * kTileStride;
  acc_t* q_vec = v_tile + dim * kTileStride;
  acc_t* do_vec = q_vec + dim;

  const int64_t b = sample_of(a.offsets, a.batch, row);
  const acc_t scale = static_cast<acc_t>(a.scale);
  load_row(q_vec, a.q + row * a.q_row + head * a.q_head, dim, scale, lane);
  load_row(do_vec, grad_out + (row * a.heads + head) * dim, dim, acc_t(1), lane);
  const acc_t row_lse = lse[row * a.heads + head], row_d = row_dot[row * a.heads + head];
  const scalar_t* k_base = a.k + b * a.k_batch + head * a.k_head;
  const scalar_t* v_base = a.v + b * a.v_batch + head * a.v_head;

  acc_t acc[kValuesPerLane] = {};
  for (int64_t j0 = 0; j0 < a.keys; j0 += kWarp) {
    const int count = static_cast<int>(min(static_cast<int64_t>(kWarp), a.keys - j0));
    __syncwarp();
    load_transposed(k_tile, k_base + j0 * a.k_key, a.k_key, count, dim, acc_t(1), lane);
    load_transposed(v_tile, v_base + j0 * a.v_key, a.v_key, count, dim, acc_t(1), lane);
    __syncwarp();
    acc_t ds = 0;
    if (lane < count) {
      const acc_t p = exp(column_dot(q_vec, k_tile, dim, lane) - row_lse);
      ds = p * (column_dot(do_vec, v_tile, dim, lane) - row_d);
    }
    for (int j = 0; j < count; ++j) {
      const acc_t ds_j = __shfl_sync(kFullMask, ds, j);
#pragma unroll
      for (int i = 0; i < kValuesPerLane; ++i) {
        const int d = lane + i * kWarp;
        if (d < dim) acc[i] += ds_j * k_tile[d * kTileStride + j];
      }
    }
  }
  scalar_t* dq_row = grad_q + (row * a.heads + head) * dim;
#pragma unroll
  for (int i = 0; i < kValuesPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < dim) dq_row[d] = static_cast<scalar_t>(scale * acc[i]);
  }
}

// dV_j = sum_i P_ij dO_i and dK_j = scale * sum_i dS_ij Q_i over the queries
// of key j's sample; each warp owns one (sample, head, key) output row.
template <typename scalar_t, typename acc_t>
__global__ void attention_grad_kv_kernel(AttentionArgs<scalar_t> a, const scalar_t* __restrict__ grad_out,
                                         const acc_t* __restrict__ lse,
                                         const acc_t* __restrict__ row_dot,
                                         scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t key_row = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarp) + warp;
  const int64_t head = blockIdx.y;
  if (key_row >= a.batch * a.keys) return;
  const int dim = static_cast<int>(a.dim);
  acc_t* q_tile = reinterpret_cast<acc_t*>(shared_raw) + warp * (2 * dim * kTileStride + 2 * dim);
  acc_t* do_tile = q_tile + dim * kTileStride;
  acc_t* k_vec = do_tile + dim * kTileStride;
  acc_t* v_vec = k_vec + dim;

  const int64_t b = key_row / a.keys, j = key_row % a.keys;
  const acc_t scale = static_cast<acc_t>(a.scale);
  load_row(k_vec, a.k + b * a.k_batch + head * a.k_head + j * a.k_key, dim, acc_t(1), lane);
  load_row(v_vec, a.v + b * a.v_batch + head * a.v_head + j * a.v_key, dim, acc_t(1), lane);
  const int64_t first = a.offsets[b], last = a.offsets[b + 1];

  acc_t dk[kValuesPerLane] = {}, dv[kValuesPerLane] = {};
  for (int64_t i0 = first; i0 < last; i0 += kWarp) {
    const int count = static_cast<int>(min(static_cast<int64_t>(kWarp), last - i0));
    __syncwarp();
    load_transposed(q_tile, a.q + i0 * a.q_row + head * a.q_head, a.q_row, count, dim, scale, lane);
    load_transposed(do_tile, grad_out + (i0 * a.heads + head) * dim, a.heads * dim, count, dim,
                    acc_t(1), lane);
    __syncwarp();
    acc_t p = 0, ds = 0;
    if (lane < count) {
      const int64_t i = i0 + lane;
      p = exp(column_dot(k_vec, q_tile, dim, lane) - lse[i * a.heads + head]);
      ds = p * (column_dot(v_vec, do_tile, dim, lane) - row_dot[i * a.heads + head]);
    }
    for (int i = 0; i < count; ++i) {
      const acc_t p_i = __shfl_sync(kFullMask, p, i);
      const acc_t ds_i = __shfl_sync(kFullMask, ds, i);
#pragma unroll
      for (int t = 0; t < kValuesPerLane; ++t) {
        const int d = lane + t * kWarp;
        if (d < dim) {
          dv[t] += p_i * do_tile[d * kTileStride + i];
          dk[t] += ds_i * q_tile[d * kTileStride + i];
        }
      }
    }
  }
  const int64_t out_row = ((b * a.heads + head) * a.keys + j) * dim;
#pragma unroll
  for (int t = 0; t < kValuesPerLane; ++t) {
    const int d = lane + t * kWarp;
    if (d < dim) {
      grad_k[out_row + d] = static_cast<scalar_t>(dk[t]);
      grad_v[out_row + d] = static_cast<scalar_t>(dv[t]);
    }
  }
}

template <typename scalar_t>
AttentionArgs<scalar_t> make_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& offsets, double scale) {
  return {q.data_ptr<scalar_t>(), q.stride(0), q.stride(1),
          k.data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.stride(2),
          v.data_ptr<scalar_t>(), v.stride(0), v.stride(1), v.stride(2),
          offsets.data_ptr<int64_t>(), k.size(0), q.size(0), q.size(1), k.size(2), q.size(2),
          scale};
}

// Warps per block and dynamic shared bytes for `per_warp` bytes of tiles;
// opts the kernel into more than 48 KiB when one warp needs it.
template <typename Kernel>
std::pair<int, int64_t> launch_shape(Kernel kernel, int64_t per_warp) {
  const int warps = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(4, kDefaultSharedBytes / per_warp)));
  const int64_t bytes = warps * per_warp;
  if (bytes > kDefaultSharedBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
  return {warps, bytes};
}

void check_cuda_attention(const at::Tensor& q, const at::Tensor& k) {
  TORCH_CHECK_VALUE(q.size(2) <= kMaxHeadDim, "varlen_attention on CUDA supports head dim <= ",
                    kMaxHeadDim, ", got q ", q.sizes());
  TORCH_CHECK_VALUE(q.size(1) <= kMaxCudaHeads, "varlen_attention on CUDA supports at most ",
                    kMaxCudaHeads, " heads, got q ", q.sizes());
  TORCH_CHECK_VALUE(k.size(2) > 0 || q.size(0) == 0,
                    "varlen_attention needs at least one key per sample");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets_in,
    double scale, bool return_lse) {
  check_attention_args(q, k, v, offsets_in);
  check_cuda_attention(q, k);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto offsets = offsets_in.contiguous();
  const int64_t total = q.size(0), heads = q.size(1), dim = q.size(2);
  auto out = at::empty({total, heads, dim}, q.options());
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto lse = return_lse ? at::empty({total, heads}, q.options().dtype(acc_type))
                        : at::empty({0}, q.options().dtype(acc_type));
  if (total == 0 || heads == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dge_attention_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = attention_forward_kernel<scalar_t, acc_t>;
    const auto [warps, bytes] = launch_shape(kernel, (dim * kTileStride + dim) * sizeof(acc_t));
    const dim3 grid(static_cast<unsigned>((total + warps - 1) / warps), static_cast<unsigned>(heads));
    kernel<<<grid, warps * kWarp, bytes, stream>>>(
        make_args<scalar_t>(q, k, v, offsets, scale), out.data_ptr<scalar_t>(),
        return_lse ? lse.data_ptr<acc_t>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse_in, const at::Tensor& offsets_in, double scale) {
  check_attention_args(q, k, v, offsets_in);
  check_cuda_attention(q, k);
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_attention_grad_args(q, grad_out_in, out, lse_in, acc_type);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto offsets = offsets_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  const auto lse = lse_in.contiguous();
  const auto row_dot = (grad_out.to(acc_type) * out.to(acc_type)).sum(-1).contiguous();
  const int64_t total = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t batch = k.size(0), keys = k.size(2);
  auto grad_q = at::empty({total, heads, dim}, q.options());
  auto grad_k = at::empty({batch, heads, keys, dim}, k.options());
  auto grad_v = at::empty({batch, heads, keys, dim}, v.options());
  if (heads == 0 || dim == 0) return {grad_q, grad_k, grad_v};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dge_attention_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto args = make_args<scalar_t>(q, k, v, offsets, scale);
    const int64_t per_warp = (2 * dim * kTileStride + 2 * dim) * sizeof(acc_t);
    if (total > 0) {
      auto kernel = attention_grad_q_kernel<scalar_t, acc_t>;
      const auto [warps, bytes] = launch_shape(kernel, per_warp);
      const dim3 grid(static_cast<unsigned>((total + warps - 1) / warps), static_cast<unsigned>(heads));
      kernel<<<grid, warps * kWarp, bytes, stream>>>(args, grad_out.data_ptr<scalar_t>(),
                                                     lse.data_ptr<acc_t>(), row_dot.data_ptr<acc_t>(),
                                                     grad_q.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (batch * keys > 0) {
      auto kernel = attention_grad_kv_kernel<scalar_t, acc_t>;
      const auto [warps, bytes] = launch_shape(kernel, per_warp);
      const dim3 grid(static_cast<unsigned>((batch * keys + warps - 1) / warps), static_cast<unsigned>(heads));
      kernel<<<grid, warps * kWarp, bytes, stream>>>(args, grad_out.data_ptr<scalar_t>(),
                                                     lse.data_ptr<acc_t>(), row_dot.data_ptr<acc_t>(),
                                                     grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace dge
