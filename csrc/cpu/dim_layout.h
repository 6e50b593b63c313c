// Reductions along one dim of a tensor, shared by softmax and the losses.
//
// A dense tensor is viewed as {outer, dim, inner} in memory order (a transposed input is
// permuted, not copied). inner == 1 gives contiguous rows; otherwise work is split into tiles
// of columns, vectorized across `inner`, so the reduced dim never has to be moved. Half types
// are staged into float per row or tile, so every sum and exp runs in float.
#pragma once

#include "common.h"

#include <numeric>
#include <vector>

namespace pyops::cpu {

using at::vec::Vectorized;


// ---- reductions along a contiguous row ------------------------------------------------------

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

// Sum over i < n of vec_fn(in0[i], in1[i], ...), taken in blocks (see blocked_sum).
template <typename T, typename VecFn, typename... Inputs>
T row_map_sum(const VecFn& vec_fn, int64_t n, const Inputs*... in) {
  using V = Vectorized<T>;
  return blocked_sum<T>(n, [&](int64_t begin, int64_t len) {
    V acc(0);
    int64_t i = begin;
    for (; i + V::size() <= begin + len; i += V::size()) acc = acc + vec_fn(V::loadu(in + i)...);
    if (const int64_t rest = begin + len - i; rest > 0) {
      acc = V::set(acc, acc + vec_fn(load(in + i, rest)...), rest);
    }
    return at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, acc);
  });
}

template <typename T>
T row_sum(const T* x, int64_t n) {
  return row_map_sum<T>([](auto v) { return v; }, n, x);
}

template <typename T>
T row_dot(const T* a, const T* b, int64_t n) {
  return row_map_sum<T>([](auto x, auto y) { return x * y; }, n, a, b);
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

// ---- layout and work split -------------------------------------------------------------------

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

}  // namespace pyops::cpu
