// CPU varlen attention: per-sample softmax(scale * Q_b K_b^T) V_b over packed
// queries, without padding to the longest sample.
//
// Work is split into (sample, head, query tile) units run by at::parallel_for.
// A unit streams the keys in blocks with an online softmax (FlashAttention
// style), so its scores stay in cache: GEMMs on strided pointers into the
// packed tensors (no copies of q, k or v), vectorised exp and row reductions.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "../dge_ops.h"
#include "blas.h"
#include "simd.h"

namespace dge {
namespace {

constexpr int64_t kKeyBlock = 512;
constexpr int64_t kBackwardTile = 64;

struct Unit {
  int64_t sample, head, row0, rows;
};

// Raw view of q [L,h,d], k/v [B,h,Nk,d] (unit last stride) and the offsets.
template <typename T>
struct Problem {
  const T *q, *k, *v;
  int64_t q_row, q_head, k_batch, k_head, k_key, v_batch, v_head, v_key;
  int64_t heads, keys, dim;
  const int64_t* offsets;
  int64_t batch, total;
  T scale;

  Problem(const at::Tensor& tq, const at::Tensor& tk, const at::Tensor& tv, const int64_t* off,
          double s)
      : q(tq.data_ptr<T>()), k(tk.data_ptr<T>()), v(tv.data_ptr<T>()),
        q_row(tq.stride(0)), q_head(tq.stride(1)),
        k_batch(tk.stride(0)), k_head(tk.stride(1)), k_key(tk.stride(2)),
        v_batch(tv.stride(0)), v_head(tv.stride(1)), v_key(tv.stride(2)),
        heads(tq.size(1)), keys(tk.size(2)), dim(tq.size(2)), offsets(off), batch(tk.size(0)),
        total(tq.size(0)), scale(static_cast<T>(s)) {}

  const T* q_at(int64_t row, int64_t head) const { return q + row * q_row + head * q_head; }
  const T* k_at(int64_t b, int64_t head, int64_t key) const {
    return k + b * k_batch + head * k_head + key * k_key;
  }
  const T* v_at(int64_t b, int64_t head, int64_t key) const {
    return v + b * v_batch + head * v_head + key * v_key;
  }
};

void check_cpu_attention(const at::Tensor& q, const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                    "varlen_attention on CPU supports float32 and float64, got ",
                    q.scalar_type());
  TORCH_CHECK_VALUE(offsets.is_cpu(), "offsets must be on the CPU with q");
}

// Query rows per unit, as in PyTorch's CPU flash attention: larger tiles for
// longer key sequences; smaller when needed to give every thread work.
int64_t query_tile(int64_t total_rows, int64_t heads, int64_t keys) {
  int64_t tile = keys >= 768 ? 256 : (keys >= 192 ? 64 : 32);
  const int64_t threads = at::get_num_threads();
  while (tile > 16 && (total_rows * heads) / tile < 2 * threads) tile /= 2;
  return tile;
}

template <typename T>
void forward_unit(const Problem<T>& p, const Unit& u, T* out, int64_t out_row, T* lse,
                  std::vector<T>& scores, std::vector<T>& acc, std::vector<T>& row_max,
                  std::vector<T>& row_sum) {
  const int64_t row = p.offsets[u.sample] + u.row0, dim = p.dim;
  const T* q = p.q_at(row, u.head);
  T* o = out + row * out_row + u.head * dim;
  const bool single_block = p.keys <= kKeyBlock;
  // With one key block the product goes straight into the output rows.
  T* target = single_block ? o : acc.data();
  const int64_t target_ld = single_block ? out_row : dim;
  for (int64_t j0 = 0; j0 < p.keys; j0 += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, p.keys - j0);
    T* s = scores.data();
    blas::gemm<T>(false, true, u.rows, n, dim, p.scale, q, p.q_row, p.k_at(u.sample, u.head, j0),
                  p.k_key, T(0), s, n);
    const bool first = j0 == 0;
    for (int64_t i = 0; i < u.rows; ++i) {
      T* s_i = s + i * n;
      const T block_max = simd::max(s_i, n);
      const T new_max = first ? block_max : std::max(row_max[i], block_max);
      const T block_sum = simd::exp_shifted(s_i, new_max, n);
      if (first) {
        row_sum[i] = block_sum;
      } else {
        const T correction = std::exp(row_max[i] - new_max);
        row_sum[i] = row_sum[i] * correction + block_sum;
        simd::scale(target + i * target_ld, correction, dim);
      }
      row_max[i] = new_max;
    }
    blas::gemm<T>(false, false, u.rows, dim, n, T(1), s, n, p.v_at(u.sample, u.head, j0), p.v_key,
                  first ? T(0) : T(1), target, target_ld);
  }
  for (int64_t i = 0; i < u.rows; ++i) {
    T* o_i = o + i * out_row;
    if (!single_block) simd::copy(o_i, acc.data() + i * dim, dim);
    simd::scale(o_i, T(1) / row_sum[i], dim);
    if (lse != nullptr) lse[(row + i) * p.heads + u.head] = row_max[i] + std::log(row_sum[i]);
  }
}

template <typename T>
void backward_pair(const Problem<T>& p, int64_t b, int64_t h, const T* grad_out, const T* out,
                   const T* lse, T* grad_q, T* grad_k, T* grad_v, std::vector<T>& probs,
                   std::vector<T>& dprobs, std::vector<T>& row_dot) {
  const int64_t dim = p.dim, keys = p.keys, ld = p.heads * dim;
  const T* k = p.k_at(b, h, 0);
  const T* v = p.v_at(b, h, 0);
  T* dk = grad_k + (b * p.heads + h) * keys * dim;
  T* dv = grad_v + (b * p.heads + h) * keys * dim;
  for (int64_t r = p.offsets[b]; r < p.offsets[b + 1]; r += kBackwardTile) {
    const int64_t rows = std::min(kBackwardTile, p.offsets[b + 1] - r);
    const T* q = p.q_at(r, h);
    const T* d_o = grad_out + r * ld + h * dim;
    T* P = probs.data();
    T* dS = dprobs.data();
    blas::gemm<T>(false, true, rows, keys, dim, p.scale, q, p.q_row, k, p.k_key, T(0), P, keys);
    for (int64_t i = 0; i < rows; ++i) {
      simd::exp_shifted(P + i * keys, lse[(r + i) * p.heads + h], keys);
      // D_i = dO_i . O_i: the softmax Jacobian's diagonal correction.
      row_dot[i] = simd::dot(d_o + i * ld, out + (r + i) * ld + h * dim, dim);
    }
    blas::gemm<T>(true, false, keys, dim, rows, T(1), P, keys, d_o, ld, T(1), dv, dim);
    blas::gemm<T>(false, true, rows, keys, dim, T(1), d_o, ld, v, p.v_key, T(0), dS, keys);
    for (int64_t i = 0; i < rows; ++i) simd::sub_mul(dS + i * keys, row_dot[i], P + i * keys, keys);
    blas::gemm<T>(false, false, rows, dim, keys, p.scale, dS, keys, k, p.k_key, T(0),
                  grad_q + r * ld + h * dim, ld);
    blas::gemm<T>(true, false, keys, dim, rows, p.scale, dS, keys, q, p.q_row, T(1), dk, dim);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets_in,
    double scale, bool return_lse) {
  check_attention_args(q, k, v, offsets_in);
  check_cpu_attention(q, offsets_in);
  const auto offsets = offsets_in.contiguous();
  const int64_t total = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t batch = k.size(0), keys = k.size(2);
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(keys > 0 || total == 0, "varlen_attention needs at least one key per sample");
  auto out = at::empty({total, heads, dim}, q.options());
  auto lse = return_lse ? at::empty({total, heads}, q.options()) : at::empty({0}, q.options());

  const int64_t tile = query_tile(total, heads, keys);
  std::vector<Unit> units;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < off[b + 1] - off[b]; r += tile)
        units.push_back({b, h, r, std::min(tile, off[b + 1] - off[b] - r)});

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "dge_attention_fwd_cpu", [&] {
    const Problem<scalar_t> problem(q, k, v, off, scale);
    scalar_t* out_p = out.data_ptr<scalar_t>();
    scalar_t* lse_p = return_lse ? lse.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, static_cast<int64_t>(units.size()), 1, [&](int64_t u0, int64_t u1) {
      std::vector<scalar_t> scores(tile * std::min(kKeyBlock, keys)), acc(tile * dim),
          row_max(tile), row_sum(tile);
      for (int64_t u = u0; u < u1; ++u)
        forward_unit(problem, units[u], out_p, heads * dim, lse_p, scores, acc, row_max, row_sum);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& offsets_in,
    double scale) {
  check_attention_args(q, k, v, offsets_in);
  check_cpu_attention(q, offsets_in);
  check_attention_grad_args(q, grad_out_in, out_in, lse_in, q.scalar_type());
  const auto offsets = offsets_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  const auto out = out_in.contiguous();
  const auto lse = lse_in.contiguous();
  const int64_t heads = q.size(1), batch = k.size(0), keys = k.size(2), dim = q.size(2);
  const int64_t* off = offsets.data_ptr<int64_t>();
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_k = at::zeros({batch, heads, keys, dim}, k.options());
  auto grad_v = at::zeros({batch, heads, keys, dim}, v.options());

  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "dge_attention_bwd_cpu", [&] {
    const Problem<scalar_t> problem(q, k, v, off, scale);
    // One task per (sample, head): it owns that pair's dK and dV rows, so no
    // two tasks ever write the same element.
    at::parallel_for(0, batch * heads, 1, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> probs(kBackwardTile * keys), dprobs(kBackwardTile * keys),
          row_dot(kBackwardTile);
      for (int64_t pair = p0; pair < p1; ++pair)
        backward_pair(problem, pair / heads, pair % heads, grad_out.data_ptr<scalar_t>(),
                      out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                      grad_q.data_ptr<scalar_t>(), grad_k.data_ptr<scalar_t>(),
                      grad_v.data_ptr<scalar_t>(), probs, dprobs, row_dot);
    });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace dge
