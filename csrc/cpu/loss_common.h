// The losses' CPU helpers: the upstream gradient read per element, and the driver of the
// elementwise losses (operands in the input's layout, losses reduced on the fly). Their
// argument checks and reductions, shared with CUDA, are in csrc/loss_inputs.h.
#pragma once

#include "common.h"
#include "../loss_inputs.h"

#include <array>
#include <vector>

namespace pyops::cpu {

// The upstream gradient of element p: grad[p] for 'none', grad for 'sum', grad / denominator
// for 'mean' (upstream_scale, read once here in the accumulation dtype).
template <typename T>
class GradScale {
 public:
  // From upstream_scale's result: per element, or one 0-dim tensor.
  explicit GradScale(const at::Tensor& scale)
      : scale_(scale),
        per_element_(scale.dim() != 0),
        data_(scale_.const_data_ptr<T>()),
        scalar_(per_element_ ? T(0) : *data_) {}
  GradScale(const at::Tensor& grad, int64_t reduction, const at::Tensor& denominator,
            int64_t numel)
      : GradScale(upstream_scale(grad, reduction, denominator, numel,
                                 c10::CppTypeToScalarType<T>::value)) {}
  T operator[](int64_t p) const { return per_element_ ? data_[p] : scalar_; }

 private:
  at::Tensor scale_;
  bool per_element_;
  const T* data_;
  T scalar_;
};

// ---- elementwise losses ------------------------------------------------------------------------

// The operands of an elementwise loss, all laid out like the input: each slot is a pointer, or
// absent and then a constant (a weight of 1, a scalar upstream gradient, ...).
enum Operand { kX = 0, kY, kW, kPosW, kGrad, kOperands };

template <typename scalar_t>
struct Operands {
  std::array<const scalar_t*, kOperands> ptr{};
  std::array<acc_t<scalar_t>, kOperands> fill{};
};

// Calls fn(offset, count, values) for consecutive vectors of elements [begin, end), values being
// the operands as accumulation-dtype vectors (half types widened to float).
template <typename scalar_t, typename Fn>
void for_each_vector(const Operands<scalar_t>& ops, int64_t begin, int64_t end, const Fn& fn) {
  using T = acc_t<scalar_t>;
  using V = at::vec::Vectorized<T>;
  using S = at::vec::Vectorized<scalar_t>;
  for (int64_t i = begin; i < end; i += S::size()) {
    const int64_t count = std::min<int64_t>(S::size(), end - i);
    if constexpr (at::is_reduced_floating_point_v<scalar_t>) {
      std::array<V, kOperands> lo, hi;
      for (int k = 0; k < kOperands; ++k) {
        if (ops.ptr[k]) {
          std::tie(lo[k], hi[k]) = at::vec::convert_to_float<scalar_t>(load(ops.ptr[k] + i, count));
        } else {
          lo[k] = hi[k] = V(ops.fill[k]);
        }
      }
      fn(i, std::min<int64_t>(count, V::size()), lo);
      if (count > V::size()) fn(i + V::size(), count - V::size(), hi);
    } else {
      std::array<V, kOperands> v;
      for (int k = 0; k < kOperands; ++k) {
        v[k] = ops.ptr[k] ? load(ops.ptr[k] + i, count) : V(ops.fill[k]);
      }
      fn(i, count, v);
    }
  }
}

// out[i] = fn(values of element i) for i < n, threaded.
template <typename scalar_t, typename Fn>
void elementwise_store(const Operands<scalar_t>& ops, scalar_t* out, int64_t n, const Fn& fn) {
  parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    for_each_vector(ops, begin, end, [&](int64_t i, int64_t count, const auto& v) {
      store_as(out + i, count, fn(v));
    });
  });
}

// Sum over i < n of fn(values of element i), in double. Fixed blocks summed in a fixed order,
// so the result does not depend on the number of threads.
template <typename scalar_t, typename Fn>
double elementwise_sum(const Operands<scalar_t>& ops, int64_t n, const Fn& fn) {
  using T = acc_t<scalar_t>;
  using V = at::vec::Vectorized<T>;
  constexpr int64_t kBlock = 1 << 15;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks);
  parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      V acc(0);
      for_each_vector(ops, b * kBlock, std::min(n, (b + 1) * kBlock),
                      [&](int64_t, int64_t count, const auto& v) {
                        acc = V::set(acc, acc + fn(v), count);
                      });
      partial[b] = at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, acc);
    }
  });
  double total = 0;
  for (const double p : partial) total += p;
  return total;
}

}  // namespace pyops::cpu
