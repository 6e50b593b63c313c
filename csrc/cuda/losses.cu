// The lesson's other losses on CUDA: mse_loss, binary_cross_entropy(_with_logits), hinge_loss and
// multi_margin_loss, forward and backward, with the formulas of csrc/cpu/losses.cpp.
//
// The elementwise losses share one kernel: operands laid out like the input, 'none' written per
// element, 'sum' and 'mean' summed in double per thread and per block, the block sums then added
// by ATen in a fixed order (the same bits for the same input). No host synchronisation: the
// 'mean' denominator and the upstream gradient stay on the device; an input of
// binary_cross_entropy outside [0, 1] trips a device-side assert, as in torch.
#include "common.cuh"
#include "../loss_inputs.h"
#include "../elementwise_losses.h"
#include "../kernel_lists.h"

namespace pyops::cuda {
namespace {

enum Operand { kX = 0, kY, kW, kPosW, kGrad, kOperands };

// Each operand is a pointer laid out like the input, or absent and then 1. The upstream
// gradient may instead be one device scalar (reduced losses).
template <typename scalar_t, typename T>
struct Operands {
  const scalar_t* ptr[kOperands];
  const T* grad_scalar;

  __device__ void load(int64_t i, T (&v)[kOperands]) const {
#pragma unroll
    for (int k = 0; k < kOperands; ++k) v[k] = ptr[k] ? static_cast<T>(ptr[k][i]) : T(1);
    if (grad_scalar) v[kGrad] = *grad_scalar;
  }
};

// out[i] = fn(operands of i) ('none' and the backward), or, with block_sums, the sum of
// fn(operands) of this block's elements written to block_sums[blockIdx.x].
template <typename scalar_t, typename T, typename Fn>
__global__ void elementwise_kernel(Operands<scalar_t, T> ops, int64_t n, scalar_t* __restrict__ out,
                                   double* __restrict__ block_sums, Fn fn) {
  __shared__ double shared[32];
  double total = 0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{blockDim.x} * gridDim.x) {
    T v[kOperands];
    ops.load(i, v);
    const T r = fn(v);
    if (block_sums) {
      total += static_cast<double>(r);
    } else {
      out[i] = static_cast<scalar_t>(r);
    }
  }
  if (block_sums) {
    total = block_sum(total, shared);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
  }
}

template <typename scalar_t, typename T>
Operands<scalar_t, T> operands(const Elementwise& e) {
  const auto ptr = [](const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
  };
  return {{ptr(e.x), ptr(e.y), ptr(e.w), ptr(e.pos_w), nullptr}, nullptr};
}

// The loss over every element, reduced; `denominator` (a 0-dim tensor) divides the sum for 'mean'.
template <typename LossFn>
at::Tensor elementwise_forward(const Elementwise& e, int64_t reduction,
                               const at::Tensor& denominator, LossFn loss_fn) {
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(e.x.device());
  const int64_t n = e.x.numel();
  const int64_t blocks = blocks_for(n);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor result, block_sums;
  if (reduction == kNone) {
    result = at::empty_like(e.x);
  } else {
    block_sums = at::zeros({blocks}, e.x.options().dtype(at::kDouble));
  }
  if (n > 0) {
    PYOPS_DISPATCH_FLOATING(e.x.scalar_type(), e.op, [&] {
      using T = at::opmath_type<scalar_t>;
      elementwise_kernel<<<blocks, kThreads, 0, stream>>>(
          operands<scalar_t, T>(e), n,
          result.defined() ? result.mutable_data_ptr<scalar_t>() : nullptr,
          block_sums.defined() ? block_sums.mutable_data_ptr<double>() : nullptr, loss_fn);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (reduction == kNone) return result;
  return reduced_total(block_sums.sum(), e, reduction, denominator);
}

// The input gradient, grad_fn(values) per element, values[kGrad] holding the upstream gradient
// of that element (already divided by `denominator` for 'mean').
template <typename GradFn>
at::Tensor elementwise_backward(const at::Tensor& grad, const Elementwise& e, int64_t reduction,
                                const at::Tensor& denominator, GradFn grad_fn) {
  const c10::cuda::CUDAGuard guard(e.x.device());
  const auto g = elementwise_upstream(grad, e, reduction, denominator);
  auto result = at::empty_like(e.x);
  const int64_t n = e.x.numel();
  if (n == 0) return result;
  PYOPS_DISPATCH_FLOATING(e.x.scalar_type(), e.op, [&] {
    using T = at::opmath_type<scalar_t>;
    auto ops = operands<scalar_t, T>(e);
    if (reduction == kNone) {
      ops.ptr[kGrad] = g.const_data_ptr<scalar_t>();
    } else {
      ops.grad_scalar = g.const_data_ptr<T>();
    }
    elementwise_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        ops, n, result.mutable_data_ptr<scalar_t>(), nullptr, grad_fn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

// ---- mse_loss: w * (x - y)^2; 'mean' divides by sum(w) when weighted, as torch ----------------

struct MseLoss {
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    const T d = v[kX] - v[kY];
    return d * d * v[kW];
  }
};
struct MseGrad {  // the upstream scale first, as torch: no overflow of 2 * (x - y)
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    return v[kGrad] * T(2) * (v[kX] - v[kY]) * v[kW];
  }
};



// ---- binary_cross_entropy_with_logits -------------------------------------------------------
// w * ((1 - y) x - lw * log_sigmoid(x)), lw = 1 + (pos_weight - 1) y; derivative
// w * (lw * sigmoid(x) - pos_weight * y).

template <typename T>
__device__ T log_sigmoid(T x) {
  return (x < T(0) ? x : T(0)) - ::log1p(::exp(-::fabs(x)));
}

struct BceLogitsLoss {
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    const T lw = (v[kPosW] - T(1)) * v[kY] + T(1);
    return ((T(1) - v[kY]) * v[kX] - lw * log_sigmoid(v[kX])) * v[kW];
  }
};
struct BceLogitsGrad {
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    const T lw = (v[kPosW] - T(1)) * v[kY] + T(1);
    const T sigmoid = T(1) / (T(1) + ::exp(-v[kX]));
    return (lw * sigmoid - v[kPosW] * v[kY]) * v[kW] * v[kGrad];
  }
};



// ---- binary_cross_entropy on probabilities ----------------------------------------------------
// -w * (y * max(log x, -100) + (1 - y) * max(log(1 - x), -100)); derivative
// w * (x - y) / max(x (1 - x), 1e-12).

struct BceLoss {
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    CUDA_KERNEL_ASSERT_MSG(v[kX] >= T(0) && v[kX] <= T(1),
                           "all elements of input should be between 0 and 1");
    const T log_x = nan_max(::log(v[kX]), T(-100));
    const T log_1mx = nan_max(::log1p(-v[kX]), T(-100));
    return ((v[kY] - T(1)) * log_1mx - v[kY] * log_x) * v[kW];
  }
};
struct BceGrad {  // torch clamps with the float constant 1e-12f, also for double inputs
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    const T denom = nan_max((T(1) - v[kX]) * v[kX], T(1e-12f));
    return v[kGrad] * v[kW] * (v[kX] - v[kY]) / denom;
  }
};



// ---- hinge_loss: max(0, margin - y * x) -----------------------------------------------------

struct HingeLoss {
  double margin;
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    return nan_max(T(margin) - v[kY] * v[kX], T(0));
  }
};
struct HingeGrad {  // the subgradient of clamp(margin - y * x, min=0): -y where it is >= 0
  double margin;
  template <typename T>
  __device__ T operator()(const T (&v)[kOperands]) const {
    return (T(margin) - v[kY] * v[kX]) >= T(0) ? -(v[kY] * v[kGrad]) : T(0);
  }
};



// The kernels of the elementwise losses' host code (elementwise_losses.h).
struct ElementwiseKernels {
  template <typename LossFn>
  static at::Tensor forward(const Elementwise& e, int64_t reduction, const at::Tensor& denominator,
                            LossFn loss_fn) {
    return elementwise_forward(e, reduction, denominator, loss_fn);
  }
  template <typename GradFn>
  static at::Tensor backward(const at::Tensor& grad, const Elementwise& e, int64_t reduction,
                             const at::Tensor& denominator, GradFn grad_fn) {
    return elementwise_backward(grad, e, reduction, denominator, grad_fn);
  }
  static void check_probabilities(const Elementwise&) {}  // BceLoss asserts on the device
  using MseLoss = cuda::MseLoss;
  using MseGrad = cuda::MseGrad;
  using BceLogitsLoss = cuda::BceLogitsLoss;
  using BceLogitsGrad = cuda::BceLogitsGrad;
  using BceLoss = cuda::BceLoss;
  using BceGrad = cuda::BceGrad;
  using HingeLoss = cuda::HingeLoss;
  using HingeGrad = cuda::HingeGrad;
};

// ---- multi_margin_loss ----------------------------------------------------------------------
// Row loss: w_t / C * sum over j != t of h(margin - x_t + x_j)^p, h(z) = z for z > 0, else 0
// (NaN included, as torch). A block per row.

// The row losses (losses), or with kBackward the input gradient, each upstream scale[r *
// scale_stride], into gi: d/dx_j = scale * w_t / C * p * h^(p-1) for j != t, and minus their sum
// at t.
template <typename scalar_t, typename T, bool kBackward>
__global__ void __launch_bounds__(1024) multi_margin_kernel(
    const scalar_t* __restrict__ x, const int64_t* __restrict__ targets,
    const T* __restrict__ weight, const T* __restrict__ scale, int64_t scale_stride, int64_t rows,
    int64_t classes, int p, T margin, T* __restrict__ losses, scalar_t* __restrict__ gi) {
  __shared__ T shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = x + r * classes;
    const int64_t t = targets[r];
    checked_margin_target(t, classes);
    const T shift = margin - static_cast<T>(row[t]), w_t = weight ? weight[t] : T(1);
    const T coef = kBackward ? scale[r * scale_stride] * w_t / static_cast<T>(classes) *
                                   (p == 1 ? T(1) : T(2))
                             : w_t;
    T part = 0;
    for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
      if (j == t) continue;
      const T z = shift + static_cast<T>(row[j]);
      if constexpr (kBackward) {
        const T g = z > T(0) ? (p == 1 ? coef : coef * z) : T(0);
        gi[r * classes + j] = static_cast<scalar_t>(g);
        part += g;
      } else {
        const T h = z > T(0) ? z : T(0);
        part += (p == 1 ? h : h * h) * coef;  // weighted term by term, as torch
      }
    }
    const T total = block_sum(part, shared);
    if (threadIdx.x != 0) continue;
    if constexpr (kBackward) {
      gi[r * classes + t] = static_cast<scalar_t>(-total);
    } else {
      losses[r] = total / static_cast<T>(classes);
    }
  }
}

template <typename scalar_t, typename T, bool kBackward>
void launch_multi_margin(const MarginRows& m, int64_t p, double margin, const T* scale,
                         int64_t scale_stride, T* losses, scalar_t* gi) {
  if (m.rows == 0) return;
  multi_margin_kernel<scalar_t, T, kBackward>
      <<<row_blocks(m.rows), row_threads(m.classes), 0, at::cuda::getCurrentCUDAStream()>>>(
          m.x.const_data_ptr<scalar_t>(), m.target.const_data_ptr<int64_t>(),
          m.weight.defined() ? m.weight.const_data_ptr<T>() : nullptr, scale, scale_stride, m.rows,
          m.classes, static_cast<int>(p), static_cast<T>(margin), losses, gi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The kernels of multi_margin_loss's host code (loss_inputs.h).
struct MarginKernels {
  template <typename scalar_t>
  static void margin_losses(const MarginRows& m, int64_t p, double margin, at::Tensor& losses) {
    using T = at::opmath_type<scalar_t>;
    launch_multi_margin<scalar_t, T, false>(m, p, margin, nullptr, 0, losses.mutable_data_ptr<T>(),
                                            nullptr);
  }

  template <typename scalar_t>
  static void margin_gradient(const MarginRows& m, int64_t p, double margin,
                              const at::Tensor& scale, at::Tensor& result) {
    using T = at::opmath_type<scalar_t>;
    launch_multi_margin<scalar_t, T, true>(m, p, margin, scale.const_data_ptr<T>(),
                                           scale.dim() == 0 ? 0 : 1, nullptr,
                                           result.mutable_data_ptr<scalar_t>());
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) { PYOPS_LOSS_KERNELS(m); }

}  // namespace pyops::cuda
