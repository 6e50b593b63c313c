// softmax, log_softmax and their backward ops on CPU.
//
// The tensor is viewed as {outer, dim, inner} in memory order (a dense non-contiguous input is
// permuted, not copied). inner == 1 reduces along contiguous rows; otherwise the kernel walks
// tiles of `inner` columns, vectorized across them, so the reduced dim never has to be moved.
// Half types are staged into float rows, so every sum and exp runs in float.
#include "common.h"

#include <torch/library.h>

#include <numeric>
#include <vector>

namespace pyops::cpu {
namespace {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_t = std::conditional_t<at::is_reduced_floating_point_v<scalar_t>, float, scalar_t>;

// ---- row kernels on acc_t data; x, y, g have `n` elements, y may alias x ------------------

template <typename T>
T row_max(const T* x, int64_t n) {
  return at::vec::reduce_all<T>([](auto& a, auto& b) { return at::vec::maximum(a, b); }, x, n);
}

// Sums are taken in blocks and the block sums added up, so long rows keep float accuracy
// (a single running sum of n terms loses about n/16 ulps).
constexpr int64_t kSumBlock = 1024;

template <typename T, typename BlockSum>
T blocked_sum(int64_t n, const BlockSum& block_sum) {
  T total = 0;
  for (int64_t i = 0; i < n; i += kSumBlock) total += block_sum(i, std::min(kSumBlock, n - i));
  return total;
}

template <typename T>
T row_sum(const T* x, int64_t n) {
  return blocked_sum<T>(n, [&](int64_t i, int64_t len) {
    return at::vec::reduce_all<T>([](auto& a, auto& b) { return a + b; }, x + i, len);
  });
}

template <typename T, typename MapFn>
T row_map_sum(const MapFn& map_fn, const T* x, int64_t n) {
  return blocked_sum<T>(n, [&](int64_t i, int64_t len) {
    return at::vec::map_reduce_all<T>(map_fn, [](auto a, auto b) { return a + b; }, x + i, len);
  });
}

template <typename T>
T row_dot(const T* a, const T* b, int64_t n) {
  return blocked_sum<T>(n, [&](int64_t i, int64_t len) {
    return at::vec::map2_reduce_all<T>([](auto x, auto y) { return x * y; },
                                       [](auto x, auto y) { return x + y; }, a + i, b + i, len);
  });
}

template <typename T, typename VecFn>
void row_map(const VecFn& fn, T* y, int64_t n, const T* x) {
  vec_map(fn, y, n, x);
}

template <typename T>
void softmax_row(const T* x, T* y, int64_t n) {
  using V = Vectorized<T>;
  const V max(row_max(x, n));
  row_map([&](V v) { return (v - max).exp(); }, y, n, x);
  const V scale(T(1) / row_sum(y, n));
  row_map([&](V v) { return v * scale; }, y, n, static_cast<const T*>(y));
}

template <typename T>
void log_softmax_row(const T* x, T* y, int64_t n) {
  using V = Vectorized<T>;
  const V vmax(row_max(x, n));
  const T sum = row_map_sum([&](V v) { return (v - vmax).exp(); }, x, n);
  // (x - max) - log(sum), not x - (max + log(sum)): the latter absorbs log(sum) when |max| is huge.
  const V log_sum(std::log(sum));
  row_map([&](V v) { return (v - vmax) - log_sum; }, y, n, x);
}

// grad_in = y * (g - sum(g * y))
template <typename T>
void softmax_backward_row(const T* g, const T* y, T* out, int64_t n) {
  using V = Vectorized<T>;
  const V dot(row_dot(g, y, n));
  vec_map([&](V gv, V yv) { return yv * (gv - dot); }, out, n, g, y);
}

// grad_in = g - exp(y) * sum(g)
template <typename T>
void log_softmax_backward_row(const T* g, const T* y, T* out, int64_t n) {
  using V = Vectorized<T>;
  const V sum(row_sum(g, n));
  vec_map([&](V gv, V yv) { return gv - yv.exp() * sum; }, out, n, g, y);
}

// ---- tile kernels: `rows` rows of `width` columns, row stride `stride` ---------------------
// Columns are independent softmaxes along the rows; one vector register holds the running
// max/sum of a column group.

constexpr int64_t kTileBytes = 256;  // columns per tile: 64 floats, 32 doubles

template <typename T>
constexpr int64_t tile_width() { return kTileBytes / sizeof(T); }

template <typename T, typename Fn>
void for_each_column_vec(int64_t width, const Fn& fn) {
  constexpr int64_t step = Vectorized<T>::size();
  for (int64_t j = 0, k = 0; j < width; j += step, ++k) fn(j, k, std::min(step, width - j));
}

// Calls row_fn(d, partial) for every row d, with partial sums that are added into `total`
// every kSumBlock rows (see blocked_sum).
template <typename V, typename RowFn>
void for_each_row_block(int64_t rows, V* total, int64_t width, const RowFn& row_fn) {
  using T = typename V::value_type;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  for (int64_t begin = 0; begin < rows; begin += kSumBlock) {
    V partial[kVecs];
    for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { partial[k] = V(0); });
    for (int64_t d = begin; d < std::min(rows, begin + kSumBlock); ++d) row_fn(d, partial);
    for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { total[k] = total[k] + partial[k]; });
  }
}

template <typename T>
void softmax_tile(const T* x, T* y, int64_t rows, int64_t width, int64_t stride, bool log) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  V max[kVecs], sum[kVecs];
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
    max[k] = load(x + j, c);
    sum[k] = V(0);
  });
  for (int64_t d = 1; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      max[k] = at::vec::maximum(max[k], load(x + d * stride + j, c));
    });
  }
  for_each_row_block(rows, sum, width, [&](int64_t d, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const V e = (load(x + d * stride + j, c) - max[k]).exp();
      partial[k] = partial[k] + e;
      if (!log) e.store(y + d * stride + j, c);
    });
  });
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
    sum[k] = log ? sum[k].log() : V(1) / sum[k];
  });
  for (int64_t d = 0; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      T* p = y + d * stride + j;
      const V v = log ? (load(x + d * stride + j, c) - max[k]) - sum[k] : load(p, c) * sum[k];
      v.store(p, c);
    });
  }
}

template <typename T>
void softmax_backward_tile(const T* g, const T* y, T* out, int64_t rows, int64_t width,
                           int64_t stride, bool log) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  V acc[kVecs];
  for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { acc[k] = V(0); });
  for_each_row_block(rows, acc, width, [&](int64_t d, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const V gv = load(g + d * stride + j, c);
      partial[k] = partial[k] + (log ? gv : gv * load(y + d * stride + j, c));
    });
  });
  for (int64_t d = 0; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const int64_t at = d * stride + j;
      const V gv = load(g + at, c), yv = load(y + at, c);
      (log ? gv - yv.exp() * acc[k] : yv * (gv - acc[k])).store(out + at, c);
    });
  }
}

// ---- layout ---------------------------------------------------------------------------------

struct Shape3 {
  int64_t outer, dim, inner;
};

// The dims of dense `t` ordered from largest to smallest stride: t.permute(order) is contiguous.
std::vector<int64_t> memory_order(const at::Tensor& t) {
  std::vector<int64_t> order(t.dim());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return t.stride(a) > t.stride(b) || (t.stride(a) == t.stride(b) && t.size(a) > t.size(b));
  });
  return order;
}

// {outer, dim, inner} of dense `t` reduced over `dim`, counted in memory order.
Shape3 shape3(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return {1, 1, 1};
  const auto order = memory_order(t);
  TORCH_INTERNAL_ASSERT(t.permute(order).is_contiguous());
  Shape3 s{1, t.size(dim), 1};
  bool before = true;
  for (const int64_t d : order) {
    if (d == dim) {
      before = false;
    } else {
      (before ? s.outer : s.inner) *= t.size(d);
    }
  }
  return s;
}

// ---- staging of half types into float -------------------------------------------------------

// A piece of independent work: `rows` x `width` elements at `offset`, rows `stride` apart.
// Whole rows (rows == 1) when reducing along contiguous memory, column tiles otherwise.
struct Piece {
  int64_t offset, rows, width, stride;
};

// Per-thread float copies of a piece's operands, packed with stride `width`; for float and
// double the caller's memory is used as it is.
template <typename scalar_t>
struct Stage {
  using T = acc_t<scalar_t>;
  static constexpr bool kConvert = !std::is_same_v<T, scalar_t>;
  std::vector<T> buf[3];

  int64_t stride(const Piece& p) const { return kConvert ? p.width : p.stride; }

  const T* in(int i, const scalar_t* base, const Piece& p) {
    if constexpr (kConvert) {
      buf[i].resize(p.rows * p.width);
      for (int64_t r = 0; r < p.rows; ++r) {
        at::vec::convert(base + p.offset + r * p.stride, buf[i].data() + r * p.width, p.width);
      }
      return buf[i].data();
    } else {
      return base + p.offset;
    }
  }
  T* out(int i, scalar_t* base, const Piece& p) {
    if constexpr (kConvert) {
      buf[i].resize(p.rows * p.width);
      return buf[i].data();
    } else {
      return base + p.offset;
    }
  }
  void store(int i, scalar_t* base, const Piece& p) {
    if constexpr (kConvert) {
      for (int64_t r = 0; r < p.rows; ++r) {
        at::vec::convert(buf[i].data() + r * p.width, base + p.offset + r * p.stride, p.width);
      }
    }
  }
};

// Runs body(piece) over every piece of `s`, in parallel: whole rows when inner == 1, tiles of
// up to tile_width<T>() columns otherwise.
template <typename T, typename Body>
void for_each_piece(const Shape3& s, const Body& body) {
  if (s.inner == 1) {
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * s.dim));
    at::parallel_for(0, s.outer, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) body(Piece{r * s.dim, 1, s.dim, s.dim});
    });
    return;
  }
  constexpr int64_t tw = tile_width<T>();
  const int64_t tiles_per_outer = (s.inner + tw - 1) / tw;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * s.dim * tw));
  at::parallel_for(0, s.outer * tiles_per_outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / tiles_per_outer, j = (t % tiles_per_outer) * tw;
      body(Piece{o * s.dim * s.inner + j, s.dim, std::min(tw, s.inner - j), s.inner});
    }
  });
}

at::Tensor softmax_forward(const at::Tensor& self, int64_t dim, bool log, const char* op) {
  check_floating(op, self);
  dim = at::maybe_wrap_dim(dim, self.dim());
  const auto x = dense(self);
  auto out = output_like(x);
  if (x.numel() == 0) return out;
  const Shape3 s = shape3(x, dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pyops", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_piece<T>(s, [&](const Piece& p) {
      thread_local Stage<scalar_t> stage;
      const T* xs = stage.in(0, in, p);
      T* ys = stage.out(1, o, p);
      if (s.inner == 1) {
        log ? log_softmax_row(xs, ys, p.width) : softmax_row(xs, ys, p.width);
      } else {
        softmax_tile(xs, ys, p.rows, p.width, stage.stride(p), log);
      }
      stage.store(1, o, p);
    });
  });
  return out;
}

at::Tensor softmax_backward_impl(const at::Tensor& grad, const at::Tensor& out, int64_t dim,
                                 bool log, const char* op) {
  check_same_meta(op, grad, out);
  check_floating(op, out);
  dim = at::maybe_wrap_dim(dim, out.dim());
  const auto y = dense(out);
  const auto g = in_layout_of(grad, y);
  auto result = output_like(y);
  if (y.numel() == 0) return result;
  const Shape3 s = shape3(y, dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "pyops", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* rp = result.mutable_data_ptr<scalar_t>();
    for_each_piece<T>(s, [&](const Piece& p) {
      thread_local Stage<scalar_t> stage;
      const T* gs = stage.in(0, gp, p);
      const T* ys = stage.in(1, yp, p);
      T* rs = stage.out(2, rp, p);
      if (s.inner == 1) {
        log ? log_softmax_backward_row(gs, ys, rs, p.width)
            : softmax_backward_row(gs, ys, rs, p.width);
      } else {
        softmax_backward_tile(gs, ys, rs, p.rows, p.width, stage.stride(p), log);
      }
      stage.store(2, rp, p);
    });
  });
  return result;
}

at::Tensor softmax(const at::Tensor& self, int64_t dim) {
  return softmax_forward(self, dim, false, "pyops::softmax");
}

at::Tensor log_softmax(const at::Tensor& self, int64_t dim) {
  return softmax_forward(self, dim, true, "pyops::log_softmax");
}

at::Tensor softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward_impl(grad, out, dim, false, "pyops::softmax_backward");
}

at::Tensor log_softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward_impl(grad, out, dim, true, "pyops::log_softmax_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) {
  m.impl("softmax", &softmax);
  m.impl("log_softmax", &log_softmax);
  m.impl("softmax_backward", &softmax_backward);
  m.impl("log_softmax_backward", &log_softmax_backward);
}

}  // namespace pyops::cpu
