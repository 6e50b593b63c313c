// Reductions along one dim of a tensor, shared by softmax and the losses.
//
// A dense tensor is viewed as {outer, dim, inner} in memory order (a transposed input is
// permuted, not copied). inner == 1 gives contiguous rows; otherwise work is split into tiles
// of columns, vectorized across `inner`, so the reduced dim never has to be moved. Half types
// are widened to float as a row is loaded, or staged into float per tile, so every sum and exp
// runs in float.
#pragma once

#include "common.h"

#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace pyops::cpu {

using at::vec::Vectorized;


// ---- reductions along a contiguous row ------------------------------------------------------

// Sums are taken in blocks and the block sums added up, so long rows keep float accuracy
// (a single running sum of n terms loses about n/16 ulps).
constexpr int64_t kSumBlock = 1024;

// A row too long for one thread's share is split into chunks of at least this many blocks: as
// ATen's grain for work with a transcendental per element, GRAIN_SIZE / 8 elements.
constexpr int64_t kRowGrainBlocks =
    std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * kSumBlock));

// Whether the row helpers below split a row of n elements across threads: only where no
// parallel region already spreads rows over the threads (a few long rows; see for_each_piece).
C10_ALWAYS_INLINE bool split_row(int64_t n) {  // inlined: called per row
  return n >= 2 * kRowGrainBlocks * kSumBlock && !at::in_parallel_region() &&
         at::get_num_threads() > 1;
}

// combine(... combine(init, block_fn(0, len0)) ..., block_fn(last)) over the blocks of kSumBlock
// elements of [0, n): blocks computed on any threads, combined in block order, so the result has
// the same bits on one thread or many.
template <typename T, typename BlockFn, typename Combine>
T blocked_reduce(int64_t n, T init, const BlockFn& block_fn, const Combine& combine) {
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  const auto block = [&](int64_t b) {
    return block_fn(b * kSumBlock, std::min(kSumBlock, n - b * kSumBlock));
  };
  T total = init;
  if (!split_row(n)) {
    for (int64_t b = 0; b < blocks; ++b) total = combine(total, block(b));
    return total;
  }
  std::vector<T> partial(blocks);
  parallel_for(0, blocks, kRowGrainBlocks, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) partial[b] = block(b);
  });
  for (const T p : partial) total = combine(total, p);
  return total;
}

// The row helpers take rows of any dtype S and compute in T = acc_t<S>: half types are widened
// as they are loaded (load_as) and rounded once as they are stored (store_as).

// combine() over the lanes of term(i, count) for the vectors of [begin, begin + len): four
// running vectors side by side (one would wait on each step's latency), then across lanes.
template <typename T, typename Term, typename Combine>
T reduce_span(int64_t begin, int64_t len, T init, const Term& term, const Combine& combine) {
  using V = Vectorized<T>;
  constexpr int64_t step = V::size();
  const int64_t end = begin + len;
  V acc[4] = {V(init), V(init), V(init), V(init)};
  int64_t i = begin;
  for (; i + 4 * step <= end; i += 4 * step) {
    for (int k = 0; k < 4; ++k) acc[k] = combine(acc[k], term(i + k * step, step));
  }
  V total = combine(combine(acc[0], acc[1]), combine(acc[2], acc[3]));
  for (; i + step <= end; i += step) total = combine(total, term(i, step));
  if (i < end) total = V::set(total, combine(total, term(i, end - i)), end - i);
  return at::vec::vec_reduce_all<T>(combine, total);
}

template <typename S, typename T = acc_t<S>>
T row_max(const S* x, int64_t n) {
  using V = Vectorized<T>;
  const auto vmax = [](V a, V b) { return at::vec::maximum(a, b); };  // NaN wins
  constexpr T lowest = -std::numeric_limits<T>::infinity();
  return blocked_reduce<T>(n, lowest, [&](int64_t begin, int64_t len) {
    return reduce_span<T>(begin, len, lowest,
                          [&](int64_t i, int64_t count) { return load_as<T>(x + i, count); }, vmax);
  }, [](T a, T b) { return std::isnan(a) || a > b ? a : b; });
}

// Sum over i in [begin, begin + len) of vec_fn(in0[i], in1[i], ...): one block of row_map_sum.
template <typename T, typename VecFn, typename... Inputs>
T block_map_sum(const VecFn& vec_fn, int64_t begin, int64_t len, const Inputs*... in) {
  using V = Vectorized<T>;
  return reduce_span<T>(begin, len, T(0), [&](int64_t i, int64_t count) {
    return vec_fn(load_as<T>(in + i, count)...);
  }, [](V a, V b) { return a + b; });
}

// Sum over i < n of vec_fn(in0[i], in1[i], ...), taken in blocks.
template <typename T, typename VecFn, typename... Inputs>
T row_map_sum(const VecFn& vec_fn, int64_t n, const Inputs*... in) {
  return blocked_reduce<T>(n, T(0), [&](int64_t begin, int64_t len) {
    return block_map_sum<T>(vec_fn, begin, len, in...);
  }, std::plus<T>());
}

// The terms of row_sum and row_dot, named so that a caller summing block by block
// (block_map_sum) computes the same bits.
struct Identity {
  template <typename V>
  V operator()(V v) const { return v; }
};
struct Product {
  template <typename V>
  V operator()(V a, V b) const { return a * b; }
};

template <typename S>
acc_t<S> row_sum(const S* x, int64_t n) {
  return row_map_sum<acc_t<S>>(Identity(), n, x);
}

template <typename S>
acc_t<S> row_dot(const S* a, const S* b, int64_t n) {
  return row_map_sum<acc_t<S>>(Product(), n, a, b);
}

// out[i] = vec_fn(in0[i], in1[i], ...) for i in [begin, end), in acc_t<Out>. Everything is
// taken by value: a vector store may alias any memory, so pointers and vectors reached through
// references would be loaded again after every store.
template <typename Out, typename VecFn, typename... Inputs>
void map_span(const VecFn vec_fn, Out* const out, int64_t begin, int64_t end,
              const Inputs* const... in) {
  using T = acc_t<Out>;
  using V = Vectorized<T>;
  int64_t i = begin;
  if constexpr (!std::is_same_v<Out, T>) {
    // Half types a whole vector of them at a time: one load and one store per input and output
    // where single float vectors would need half-width ones.
    for (; i + 2 * V::size() <= end; i += 2 * V::size()) {
      map_half_vector(vec_fn, out + i, (in + i)...);
    }
  }
  for (; i + V::size() <= end; i += V::size()) {
    store_as(out + i, V::size(), vec_fn(load_as<T>(in + i, V::size())...));
  }
  if (i < end) store_as(out + i, end - i, vec_fn(load_as<T>(in + i, end - i)...));
}

// map_span over a row of n elements, split across threads where split_row says so. vec_fn
// should capture by value, for the reason above. Threads' shares start on block boundaries, so
// every element goes through the same one of map_span's loops whatever the thread count (the
// compiler may contract a*b+c into FMAs differently in each).
template <typename Out, typename VecFn, typename... Inputs>
void row_map(const VecFn& vec_fn, Out* out, int64_t n, const Inputs*... in) {
  if (!split_row(n)) return map_span(vec_fn, out, 0, n, in...);
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  parallel_for(0, blocks, kRowGrainBlocks, [&](int64_t first, int64_t last) {
    map_span(vec_fn, out, first * kSumBlock, std::min(n, last * kSumBlock), in...);
  });
}

// at::vec::convert over a row, split as row_map.
template <typename From, typename To>
void convert_row(const From* from, To* to, int64_t n) {
  if (!split_row(n)) return at::vec::convert(from, to, n);
  parallel_for(0, n, kRowGrainBlocks * kSumBlock, [&](int64_t begin, int64_t end) {
    at::vec::convert(from + begin, to + begin, end - begin);
  });
}

// ---- column tiles ---------------------------------------------------------------------------

constexpr int64_t kTileBytes = 256;  // columns per tile: 64 floats, 32 doubles

template <typename T>
constexpr int64_t tile_width() { return kTileBytes / sizeof(T); }

template <typename T, typename Fn>
void for_each_column_vec(int64_t width, const Fn& fn) {
  constexpr int64_t step = Vectorized<T>::size();
  for (int64_t j = 0, k = 0; j < width; j += step, ++k) fn(j, k, std::min(step, width - j));
}

// Calls row_fn(d, partial) for every row d, with partial sums that are added into `total`
// every kSumBlock rows, in order (as blocked_reduce).
template <typename V, typename RowFn>
void for_each_row_block(int64_t rows, V* total, int64_t width, const RowFn& row_fn) {
  using T = typename V::value_type;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  for (int64_t begin = 0; begin < rows; begin += kSumBlock) {
    V partial[kVecs];
    for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) { partial[k] = V(0); });
    for (int64_t d = begin; d < std::min(rows, begin + kSumBlock); ++d) row_fn(d, partial);
    for_each_column_vec<T>(width,
                           [&](int64_t, int64_t k, int64_t) { total[k] = total[k] + partial[k]; });
  }
}

// ---- layout and work split -------------------------------------------------------------------

// A piece of independent work: `rows` x `width` elements at `offset`, rows `stride` apart.
// Whole rows (rows == 1) when reducing along contiguous memory, column tiles otherwise.
struct Piece {
  int64_t offset, rows, width, stride;
};

// Per-thread float copies of a piece's operands, packed with stride `width`; for float and
// double the caller's memory is used as it is, unless `copy` is set (a kernel that transforms
// its input in the copy).
template <typename scalar_t>
struct Stage {
  using T = acc_t<scalar_t>;
  static constexpr bool kConvert = !std::is_same_v<T, scalar_t>;
  std::vector<T> buf[3];
  bool copy = kConvert;

  int64_t stride(const Piece& p) const { return copy ? p.width : p.stride; }

  // The piece's values in buffer i (which `copy` must have asked for), to change in place.
  T* copied(int i, const scalar_t* base, const Piece& p) {
    buf[i].resize(p.rows * p.width);
    for (int64_t r = 0; r < p.rows; ++r) {
      convert_row(base + p.offset + r * p.stride, buf[i].data() + r * p.width, p.width);
    }
    return buf[i].data();
  }
  const T* in(int i, const scalar_t* base, const Piece& p) {
    if (copy) return copied(i, base, p);
    if constexpr (!kConvert) return base + p.offset;
    return nullptr;  // unreachable: half types are always copied
  }
  T* out(int i, scalar_t* base, const Piece& p) {
    if (copy) {
      buf[i].resize(p.rows * p.width);
      return buf[i].data();
    }
    if constexpr (!kConvert) return base + p.offset;
    return nullptr;
  }
  void store(int i, scalar_t* base, const Piece& p) {
    if (!copy) return;
    for (int64_t r = 0; r < p.rows; ++r) {
      convert_row(buf[i].data() + r * p.width, base + p.offset + r * p.stride, p.width);
    }
  }
};

// Runs rows_fn(first, last) over ranges of the rows of `s` (inner == 1) in parallel; false, with
// nothing run, where the rows are too few for every thread and each should be split across them.
template <typename RowsFn>
bool for_each_row_range(const Shape3& s, const RowsFn& rows_fn) {
  if (split_row(s.dim) && s.outer < at::get_num_threads()) return false;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * s.dim));
  parallel_for(0, s.outer, grain, rows_fn);
  return true;
}

// Runs body(piece) over every piece of `s`, in parallel: whole rows when inner == 1, tiles of
// up to tile_width<T>() columns otherwise. Rows too few for every thread run one after another,
// each split across the threads by the row helpers above.
template <typename T, typename Body>
void for_each_piece(const Shape3& s, const Body& body) {
  if (s.inner == 1) {
    const auto row = [&](int64_t r) { body(Piece{r * s.dim, 1, s.dim, s.dim}); };
    if (!for_each_row_range(s, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) row(r);
        })) {
      for (int64_t r = 0; r < s.outer; ++r) row(r);
    }
    return;
  }
  // Too few tiles for every thread: tiles one vector wide. Columns are independent, so their
  // bits do not depend on the tile width.
  int64_t tw = tile_width<T>();
  if (s.outer * ((s.inner + tw - 1) / tw) < at::get_num_threads()) tw = Vectorized<T>::size();
  const int64_t tiles_per_outer = (s.inner + tw - 1) / tw;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * s.dim * tw));
  parallel_for(0, s.outer * tiles_per_outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / tiles_per_outer, j = (t % tiles_per_outer) * tw;
      body(Piece{o * s.dim * s.inner + j, s.dim, std::min(tw, s.inner - j), s.inner});
    }
  });
}

}  // namespace pyops::cpu
