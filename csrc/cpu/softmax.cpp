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

// softmax: grad_in = y * (g - s), s = sum(g * y); log_softmax: grad_in = g - exp(y) * s,
// s = sum(g). The row's sum, then the gradient from it.
template <bool log, typename S>
acc_t<S> backward_sum(const S* g, const S* y, int64_t n) {
  if constexpr (log) return row_sum(g, n);
  else return row_dot(g, y, n);
}

template <bool log, typename V>
struct BackwardOf {
  V s;
  V operator()(V g, V y) const {
    if constexpr (log) return g - exp_of(y) * s;
    else return y * (g - s);
  }
};

// One row, split across the threads where split_row says so.
template <bool log, typename S>
void backward_row(const S* g, const S* y, S* out, int64_t n) {
  using V = Vectorized<acc_t<S>>;
  row_map(BackwardOf<log, V>{V(backward_sum<log>(g, y, n))}, out, n, g, y);
}

// Rows [first, last) of n elements, each row's sum taken block by block between the blocks of
// the previous row's gradient: the next row streams in from memory while this one's gradient
// streams out, where a sum pass then an output pass per row leave one direction idle. The blocks,
// their order and the functions are backward_row's: the same bits.
template <bool log, typename S>
void backward_rows(const S* g, const S* y, S* out, int64_t first, int64_t last, int64_t n) {
  using T = acc_t<S>;
  using V = Vectorized<T>;
  const auto block_sum = [&](int64_t r, int64_t begin, int64_t len) {
    if constexpr (log) return block_map_sum<T>(Identity(), begin, len, g + r * n);
    else return block_map_sum<T>(Product(), begin, len, g + r * n, y + r * n);
  };
  T sum = backward_sum<log>(g + first * n, y + first * n, n);
  for (int64_t r = first; r < last; ++r) {
    const BackwardOf<log, V> grad{V(sum)};
    T next(0);
    for (int64_t b = 0; b < n; b += kSumBlock) {
      const int64_t end = std::min(n, b + kSumBlock);
      if (r + 1 < last) next = next + block_sum(r + 1, b, end - b);
      map_span(grad, out + r * n, b, end, g + r * n, y + r * n);
    }
    sum = next;
  }
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
template <bool log, typename S>
void backward_tile(const S* g, const S* y, S* out, int64_t rows, int64_t width, int64_t stride) {
  using T = acc_t<S>;
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  V acc[kVecs];
  for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { acc[k] = V(0); });
  for_each_row_block(rows, acc, width, [&](int64_t d, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const V gv = load_as<T>(g + d * stride + j, c);
      if constexpr (log) partial[k] = partial[k] + gv;
      else partial[k] = partial[k] + gv * load_as<T>(y + d * stride + j, c);
    });
  });
  for (int64_t d = 0; d < rows; ++d) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t c) {
      const int64_t at = d * stride + j;
      store_as(out + at, c, BackwardOf<log, V>{acc[k]}(load_as<T>(g + at, c),
                                                        load_as<T>(y + at, c)));
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
    log ? backward<true>(gp, yp, rp, s) : backward<false>(gp, yp, rp, s);
  }

  template <bool log, typename scalar_t>
  static void backward(const scalar_t* gp, const scalar_t* yp, scalar_t* rp, const Shape3& s) {
    using T = acc_t<scalar_t>;
    if (s.inner == 1 && for_each_row_range(s, [&](int64_t first, int64_t last) {
          backward_rows<log>(gp, yp, rp, first, last, s.dim);
        })) {
      return;
    }
    for_each_piece<T>(s, [&](const Piece& p) {
      const int64_t at = p.offset;
      if (s.inner == 1) return backward_row<log>(gp + at, yp + at, rp + at, p.width);
      backward_tile<log>(gp + at, yp + at, rp + at, p.rows, p.width, p.stride);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_SOFTMAX_KERNELS(m); }

}  // namespace pyops::cpu
