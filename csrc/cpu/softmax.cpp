// softmax, log_softmax and their backward ops on CPU, over rows or column tiles (dim_layout.h).
#include "dim_layout.h"
#include "../kernel_lists.h"
#include "../softmax.h"

namespace pyops::cpu {
namespace {

// ---- row kernels: x, y, g have `n` elements of S, computed in T = acc_t<S> ------------------

template <typename S>
void softmax_row(const S* x, S* y, int64_t n) {
  using T = acc_t<S>;
  using V = Vectorized<T>;
  const V max(row_max(x, n));
  T* e = nullptr;  // the exps in T: y itself, or a per-thread buffer for half types
  if constexpr (std::is_same_v<S, T>) {
    e = y;
  } else {
    thread_local std::vector<T> buffer;
    buffer.resize(n);
    e = buffer.data();
  }
  row_map([max](V v) { return exp_of(v - max); }, e, n, x);
  const V scale(T(1) / row_sum(e, n));
  row_map([scale](V v) { return v * scale; }, y, n, static_cast<const T*>(e));
}

template <typename S>
void log_softmax_row(const S* x, S* y, int64_t n) {
  using T = acc_t<S>;
  using V = Vectorized<T>;
  const V vmax(row_max(x, n));
  const T sum = row_map_sum<T>([&](V v) { return exp_of(v - vmax); }, n, x);
  // (x - max) - log(sum), not x - (max + log(sum)): the latter absorbs log(sum) when |max| is huge.
  const V log_sum(std::log(sum));
  row_map([vmax, log_sum](V v) { return (v - vmax) - log_sum; }, y, n, x);
}

// grad_in = y * (g - sum(g * y))
template <typename S>
void softmax_backward_row(const S* g, const S* y, S* out, int64_t n) {
  using V = Vectorized<acc_t<S>>;
  const V dot(row_dot(g, y, n));
  row_map([dot](V gv, V yv) { return yv * (gv - dot); }, out, n, g, y);
}

// grad_in = g - exp(y) * sum(g)
template <typename S>
void log_softmax_backward_row(const S* g, const S* y, S* out, int64_t n) {
  using V = Vectorized<acc_t<S>>;
  const V sum(row_sum(g, n));
  row_map([sum](V gv, V yv) { return gv - exp_of(yv) * sum; }, out, n, g, y);
}

// ---- tile kernels: `rows` rows of `width` columns, row stride `stride` ---------------------
// Columns are independent softmaxes along the rows; one vector register holds the running
// max/sum of a column group.

// x is read where it is, half types widened on load; y is float: the output itself, or for half
// types a float stage, as the exps must not be rounded before they are scaled.
template <typename S, typename T>
void softmax_tile(const S* x, int64_t x_stride, T* y, int64_t y_stride, int64_t rows,
                  int64_t width, bool log) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  V max[kVecs], sum[kVecs];
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
    max[k] = load_as<T>(x + j, c);
    sum[k] = V(0);
  });
  for (int64_t d = 1; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      max[k] = at::vec::maximum(max[k], load_as<T>(x + d * x_stride + j, c));
    });
  }
  for_each_row_block(rows, sum, width, [&](int64_t d, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const V e = exp_of(load_as<T>(x + d * x_stride + j, c) - max[k]);
      partial[k] = partial[k] + e;
      if (!log) e.store(y + d * y_stride + j, c);
    });
  });
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
    sum[k] = log ? sum[k].log() : V(1) / sum[k];
  });
  for (int64_t d = 0; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      T* p = y + d * y_stride + j;
      const V v = log ? (load_as<T>(x + d * x_stride + j, c) - max[k]) - sum[k]
                      : load(p, c) * sum[k];
      v.store(p, c);
    });
  }
}

// Half types are widened on load and rounded on store, with no float copy: three staged
// operands of a long tile would not fit in L2.
template <typename S>
void softmax_backward_tile(const S* g, const S* y, S* out, int64_t rows, int64_t width,
                           int64_t stride, bool log) {
  using T = acc_t<S>;
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  V acc[kVecs];
  for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { acc[k] = V(0); });
  for_each_row_block(rows, acc, width, [&](int64_t d, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const V gv = load_as<T>(g + d * stride + j, c);
      partial[k] = partial[k] + (log ? gv : gv * load_as<T>(y + d * stride + j, c));
    });
  });
  for (int64_t d = 0; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const int64_t at = d * stride + j;
      const V gv = load_as<T>(g + at, c), yv = load_as<T>(y + at, c);
      store_as(out + at, c, log ? gv - exp_of(yv) * acc[k] : yv * (gv - acc[k]));
    });
  }
}

// The kernels of csrc/softmax.h: rows are read as they are, half types widened on the way;
// column tiles are read in place too, the forward's output staged in float for half types.
struct SoftmaxKernels {
  template <typename scalar_t>
  static void forward(const scalar_t* in, scalar_t* o, const Shape3& s, bool log) {
    using T = acc_t<scalar_t>;
    for_each_piece<T>(s, [&](const Piece& p) {
      if (s.inner == 1) {
        log ? log_softmax_row(in + p.offset, o + p.offset, p.width)
            : softmax_row(in + p.offset, o + p.offset, p.width);
        return;
      }
      thread_local Stage<scalar_t> stage;
      T* ys = stage.out(0, o, p);
      softmax_tile(in + p.offset, p.stride, ys, stage.stride(p), p.rows, p.width, log);
      stage.store(0, o, p);
    });
  }

  template <typename scalar_t>
  static void backward(const scalar_t* gp, const scalar_t* yp, scalar_t* rp, const Shape3& s,
                       bool log) {
    using T = acc_t<scalar_t>;
    for_each_piece<T>(s, [&](const Piece& p) {
      if (s.inner == 1) {
        log ? log_softmax_backward_row(gp + p.offset, yp + p.offset, rp + p.offset, p.width)
            : softmax_backward_row(gp + p.offset, yp + p.offset, rp + p.offset, p.width);
        return;
      }
      softmax_backward_tile(gp + p.offset, yp + p.offset, rp + p.offset, p.rows, p.width,
                            p.stride, log);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_SOFTMAX_KERNELS(m); }

}  // namespace pyops::cpu
