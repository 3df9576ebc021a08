// CPU deformable point attention (DPVT): each (query row, head) item sums P
// bilinear samples of its sample's value map.  Forward and the location and
// weight gradients run at::parallel_for over the items (each owns its output);
// the value gradient is a scatter, run over (sample, head, channel block)
// items so that no two threads ever write the same element: deterministic, no
// atomics, no per-thread copies of the map.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../bilinear.h"
#include "../dge_ops.h"

namespace dge {
namespace {

constexpr int64_t kChannelBlock = 16;

void check_cpu(const at::Tensor& value) {
  TORCH_CHECK_VALUE(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
                    "deformable_attention on CPU supports float32 and float64, got ",
                    value.scalar_type());
}

// Raw view of value [B,H,W,h,d], locations [L,h,P,2], weights [L,h,P], offsets [B+1].
template <typename T>
struct Problem {
  const T *value, *locations, *weights;
  const int64_t* offsets;
  int64_t batch, height, width, heads, dim, rows, points;

  Problem(const at::Tensor& v, const at::Tensor& loc, const at::Tensor& w, const at::Tensor& off)
      : value(v.data_ptr<T>()), locations(loc.data_ptr<T>()), weights(w.data_ptr<T>()),
        offsets(off.data_ptr<int64_t>()), batch(v.size(0)), height(v.size(1)), width(v.size(2)),
        heads(v.size(3)), dim(v.size(4)), rows(loc.size(0)), points(loc.size(2)) {}

  int64_t pixel_stride() const { return heads * dim; }
  const T* map(int64_t b, int64_t head) const {
    return value + b * height * width * heads * dim + head * dim;
  }
  // The sample owning `row` (offsets rise; B is small, rows visited in order).
  int64_t sample_of(int64_t row) const {
    return std::upper_bound(offsets + 1, offsets + batch + 1, row) - (offsets + 1);
  }
};

// visit(point weight * corner weight, pixel) for every corner inside the map of
// every point of one item.
template <typename T, typename Visit>
inline void each_weighted_corner(const Problem<T>& p, const T* loc, const T* w, Visit&& visit) {
  for (int64_t point = 0; point < p.points; ++point) {
    Corners<T> c;
    if (!bilinear_corners(loc[2 * point], loc[2 * point + 1], p.height, p.width, c)) continue;
    for (int corner = 0; corner < 4; ++corner) {
      if (c.index[corner] >= 0) visit(w[point] * c.weight[corner], c.index[corner]);
    }
  }
}

// visit(item, sample, head) for every (row, head) item, in parallel over items
// (each owns its outputs); the sample is tracked along the rows of a chunk.
template <typename T, typename Visit>
void for_each_item(const Problem<T>& p, Visit&& visit) {
  at::parallel_for(0, p.rows * p.heads, std::max<int64_t>(1, 4096 / (p.points * p.dim + 1)),
                   [&](int64_t i0, int64_t i1) {
    int64_t b = p.sample_of(i0 / p.heads);
    for (int64_t i = i0; i < i1; ++i) {
      while (i / p.heads >= p.offsets[b + 1]) ++b;
      visit(i, b, i % p.heads);
    }
  });
}

template <typename T>
void forward(const Problem<T>& p, T* out) {
  const int64_t stride = p.pixel_stride();
  for_each_item(p, [&](int64_t i, int64_t b, int64_t head) {
    T* o = out + i * p.dim;
    std::fill(o, o + p.dim, T(0));
    const T* map = p.map(b, head);
    each_weighted_corner(p, p.locations + i * p.points * 2, p.weights + i * p.points,
                         [&](T coef, int64_t pixel) {
      const T* v = map + pixel * stride;
      for (int64_t ch = 0; ch < p.dim; ++ch) o[ch] += coef * v[ch];
    });
  });
}

template <typename T>
void location_and_weight_grads(const Problem<T>& p, const T* grad, T* grad_loc, T* grad_w) {
  const int64_t stride = p.pixel_stride();
  for_each_item(p, [&](int64_t i, int64_t b, int64_t head) {
    const T* g = grad + i * p.dim;
    const T* map = p.map(b, head);
    const T* loc = p.locations + i * p.points * 2;
    const T* w = p.weights + i * p.points;
    for (int64_t point = 0; point < p.points; ++point) {
      T sampled = 0, d_x = 0, d_y = 0;
      Corners<T> c;
      if (bilinear_corners(loc[2 * point], loc[2 * point + 1], p.height, p.width, c)) {
        for (int corner = 0; corner < 4; ++corner) {
          if (c.index[corner] < 0) continue;
          const T* v = map + c.index[corner] * stride;
          T dot = 0;
          for (int64_t ch = 0; ch < p.dim; ++ch) dot += g[ch] * v[ch];
          sampled += c.weight[corner] * dot;
          d_x += c.d_x[corner] * dot;
          d_y += c.d_y[corner] * dot;
        }
      }
      grad_w[i * p.points + point] = sampled;
      grad_loc[(i * p.points + point) * 2] = w[point] * d_x;
      grad_loc[(i * p.points + point) * 2 + 1] = w[point] * d_y;
    }
  });
}

template <typename T>
void value_grad(const Problem<T>& p, const T* grad, T* grad_value) {
  const int64_t blocks = (p.dim + kChannelBlock - 1) / kChannelBlock, stride = p.pixel_stride();
  at::parallel_for(0, p.batch * p.heads * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t block = i % blocks, head = (i / blocks) % p.heads, b = i / (blocks * p.heads);
      const int64_t ch0 = block * kChannelBlock, ch1 = std::min(p.dim, ch0 + kChannelBlock);
      T* map = grad_value + b * p.height * p.width * stride + head * p.dim;
      for (int64_t row = p.offsets[b]; row < p.offsets[b + 1]; ++row) {
        const int64_t item = row * p.heads + head;
        const T* g = grad + item * p.dim;
        const T* loc = p.locations + item * p.points * 2;
        const T* w = p.weights + item * p.points;
        each_weighted_corner(p, loc, w, [&](T coef, int64_t pixel) {
          T* target = map + pixel * stride;
          for (int64_t ch = ch0; ch < ch1; ++ch) target[ch] += coef * g[ch];
        });
      }
    }
  });
}

}  // namespace

at::Tensor deformable_attention_forward_cpu(const at::Tensor& value, const at::Tensor& locations,
                                            const at::Tensor& weights, const at::Tensor& offsets) {
  check_deformable_args(value, locations, weights, offsets, nullptr);
  check_cpu(value);
  auto out = at::empty({locations.size(0), value.size(3), value.size(4)}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "dge_deformable_forward_cpu", [&] {
    forward(Problem<scalar_t>(value, locations, weights, offsets), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deformable_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& locations,
    const at::Tensor& weights, const at::Tensor& offsets) {
  check_deformable_args(value, locations, weights, offsets, &grad_out);
  check_cpu(value);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::empty_like(locations);
  auto grad_weights = at::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "dge_deformable_backward_cpu", [&] {
    const Problem<scalar_t> p(value, locations, weights, offsets);
    const scalar_t* grad = grad_out.data_ptr<scalar_t>();
    location_and_weight_grads(p, grad, grad_locations.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>());
    value_grad(p, grad, grad_value.data_ptr<scalar_t>());
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace dge
