// Checks and layout helpers shared by the CPU and CUDA kernels (no instruction-set code here).
#pragma once

#include <ATen/ATen.h>
#include <ATen/ScalarOps.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace pyops {

// Elementwise kernels walk memory linearly, which is valid for any non-overlapping dense
// layout (contiguous, transposed, channels-last); anything else is made contiguous once.
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

// A 0-dim CPU tensor holding value, and a one-element CPU tensor's value, without the
// dispatcher: a small loss call is mostly such calls otherwise.
inline at::Tensor cpu_scalar(double value, at::ScalarType dtype = at::kDouble) {
  return at::detail::scalar_tensor_static(value, dtype, at::kCPU);
}

inline double cpu_value(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.is_cpu() && t.numel() == 1);
  double value = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "pyops: value", [&] {
    value = static_cast<double>(*t.const_data_ptr<scalar_t>());
  });
  return value;
}

// t.to(dtype), without a dispatcher call where t has that dtype (to() would return t itself).
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// `t` with exactly the strides of the dense tensor `like`, copied only when they differ.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  return t.strides() == like.strides() ? t : at::empty_like(like).copy_(t);
}

// Numbers and shapes in error messages are formatted here (std::to_string, snprintf), never
// streamed: built on the GPU machine (by /opt/gcc's g++), streaming an int64 or a shape into
// c10::str's ostringstream crashed the process, while strings went through; most likely its
// libstdc++ headers and the library torch runs with disagree about number formatting.
inline std::string num_str(int64_t value) { return std::to_string(value); }

inline std::string num_str(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

// "[2, 3]"
inline std::string shape_str(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + num_str(shape[i]);
  return text + "]";
}

inline void check_floating(const char* op, const at::Tensor& t) {
  // NotImplementedError, as torch's kernels raise for a dtype they lack.
  TORCH_CHECK_NOT_IMPLEMENTED(
      at::isFloatingType(t.scalar_type()) && !at::isFloat8Type(t.scalar_type()), op,
      ": expected a float64, float32, bfloat16 or float16 tensor, got ", t.scalar_type());
}

inline void check_same_meta(const char* op, const at::Tensor& grad, const at::Tensor& out) {
  TORCH_CHECK(grad.sizes() == out.sizes(), op, ": grad and out must have the same shape, got ",
              shape_str(grad.sizes()), " and ", shape_str(out.sizes()));
  TORCH_CHECK(grad.scalar_type() == out.scalar_type(), op,
              ": grad and out must have the same dtype, got ", grad.scalar_type(), " and ",
              out.scalar_type());
  TORCH_CHECK(grad.device() == out.device(), op,
              ": grad and out must be on the same device, got ", grad.device(), " and ",
              out.device());
}

// ---- dtype dispatch with the op's name ---------------------------------------------------------

// AT_DISPATCH_FLOATING_TYPES(_AND2(kBFloat16, kHalf)) whose error names the op by a name known
// at run time only (shared drivers serve several ops; AT_DISPATCH's name must be constexpr).
template <bool kHalfTypes, typename F>
void dispatch_floating(const char* op, at::ScalarType type, const F& f) {
  switch (type) {
    case at::kDouble: return f(double{});
    case at::kFloat: return f(float{});
    case at::kBFloat16: if constexpr (kHalfTypes) return f(at::BFloat16{}); break;
    case at::kHalf: if constexpr (kHalfTypes) return f(at::Half{}); break;
    default: break;
  }
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": not implemented for '", type, "'");
}

// PYOPS_DISPATCH_FLOATING(dtype, op name, [&] { ...scalar_t... }), as AT_DISPATCH's.
#define PYOPS_DISPATCH_FLOATING(TYPE, OP, ...)                                   \
  ::pyops::dispatch_floating<true>(OP, TYPE, [&](auto pyops_dtype_tag_) {        \
    using scalar_t = decltype(pyops_dtype_tag_);                                 \
    return (__VA_ARGS__)();                                                      \
  })
#define PYOPS_DISPATCH_FLOAT_DOUBLE(TYPE, OP, ...)                               \
  ::pyops::dispatch_floating<false>(OP, TYPE, [&](auto pyops_dtype_tag_) {       \
    using scalar_t = decltype(pyops_dtype_tag_);                                 \
    return (__VA_ARGS__)();                                                      \
  })

// ---- {outer, dim, inner}: a reduction over one dim, in memory order ---------------------------

struct Shape3 {
  int64_t outer, dim, inner;
};

// The dims of dense `t` ordered from largest to smallest stride: t.permute(order) is contiguous.
// Sorted by insertion, stable, into a small vector: a few dims, and no allocation per call.
inline c10::SmallVector<int64_t, 8> memory_order(const at::Tensor& t) {
  const auto sizes = t.sizes(), strides = t.strides();
  const auto before = [&](int64_t a, int64_t b) {
    return strides[a] > strides[b] || (strides[a] == strides[b] && sizes[a] > sizes[b]);
  };
  c10::SmallVector<int64_t, 8> order;
  for (int64_t d = 0; d < t.dim(); ++d) {
    auto at = order.end();
    while (at != order.begin() && before(d, *(at - 1))) --at;
    order.insert(at, d);
  }
  return order;
}

// {outer, dim, inner} of dense `t` reduced over `dim`, counted in memory order.
inline Shape3 shape3(const at::Tensor& t, int64_t dim) {
  if (t.dim() == 0) return {1, 1, 1};
  const auto order = memory_order(t);
  const auto sizes = t.sizes(), strides = t.strides();
  int64_t expected = 1;  // t.permute(order) is contiguous (checked without making the view)
  for (auto d = order.rbegin(); d != order.rend(); ++d) {
    TORCH_INTERNAL_ASSERT(t.numel() == 0 || sizes[*d] == 1 || strides[*d] == expected);
    expected *= sizes[*d];
  }
  Shape3 s{1, sizes[dim], 1};
  bool before = true;
  for (const int64_t d : order) {
    if (d == dim) {
      before = false;
    } else {
      (before ? s.outer : s.inner) *= sizes[d];
    }
  }
  return s;
}

// Whether the {outer, inner} positions of shape3(t, dim) enumerate the other dims in their
// logical order, i.e. position p is element p of a contiguous tensor of t's shape without dim.
inline bool positions_in_logical_order(const at::Tensor& t, int64_t dim) {
  int64_t last = -1;
  for (const int64_t d : memory_order(t)) {
    if (d == dim || t.size(d) == 1) continue;
    if (d < last) return false;
    last = d;
  }
  return true;
}

}  // namespace pyops
