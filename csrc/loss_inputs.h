// Argument checks and layouts of the losses, shared by the CPU and CUDA kernels (ATen calls
// only, no instruction-set code and no host synchronisation).
#pragma once

#include "tensor_utils.h"

#include <cmath>
#include <optional>
#include <vector>

namespace pyops {

// As at::Reduction: 0 none, 1 mean, 2 sum.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", num_str(reduction));
}

// The sum of a CPU tensor's elements, in double. ATen's CPU sum of one output splits the
// elements by the number of threads, so its rounding would change with torch.set_num_threads;
// here fixed blocks, each below ATen's grain (so summed on one thread), are summed and then
// added in order.
inline double cpu_fixed_order_sum(const at::Tensor& t) {
  constexpr int64_t kBlock = 1 << 14;
  if (t.numel() < kBlock) {  // one block, in order: a plain loop costs less than ATen's reduction
    double total = 0;
    const auto c = t.contiguous();
    PYOPS_DISPATCH_FLOATING(c.scalar_type(), "pyops: sum", [&] {
      const scalar_t* p = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) total += static_cast<double>(p[i]);
    });
    return total;
  }
  const auto flat = t.reshape({-1});
  const int64_t full = flat.numel() / kBlock * kBlock;
  const auto blocks = flat.narrow(0, 0, full).view({-1, kBlock}).sum(1, false, at::kDouble);
  return cpu_fixed_order_sum(blocks) +
         cpu_value(flat.narrow(0, full, flat.numel() - full).sum(at::kDouble));
}

// The same sum as a 0-dim double tensor on t's device (ATen's CUDA sum does not depend on
// threads).
inline at::Tensor fixed_order_sum(const at::Tensor& t) {
  return t.is_cpu() ? cpu_scalar(cpu_fixed_order_sum(t)) : t.sum(at::kDouble);
}

// The loss output from per-element losses (in the accumulation dtype): the losses themselves in
// `shape` for 'none'; their sum for 'sum'; their sum over `denominator` (a 0-dim tensor) for
// 'mean', which is NaN when the denominator is 0, as in torch.
inline at::Tensor reduce_losses(const at::Tensor& losses, int64_t reduction,
                                const at::Tensor& denominator, at::IntArrayRef shape,
                                at::ScalarType dtype) {
  if (reduction == kNone) return as_dtype(losses.view(shape), dtype);
  if (losses.is_cpu() && denominator.is_cpu()) {  // one double, no tensors on the way
    const double sum = cpu_fixed_order_sum(losses);
    return cpu_scalar(reduction == kSum ? sum : sum / cpu_value(denominator), dtype);
  }
  const auto total = fixed_order_sum(losses);
  return (reduction == kSum ? total : total / denominator.to(at::kDouble)).to(dtype);
}

// grad has one element per loss element ('none') or one in all.
inline void check_upstream_grad(const at::Tensor& grad, int64_t reduction, int64_t positions) {
  if (reduction == kNone) {
    TORCH_CHECK(grad.numel() == positions, "grad must have one element per loss element (",
                num_str(positions), "), got ", shape_str(grad.sizes()));
  } else {
    TORCH_CHECK(grad.numel() == 1, "grad of a reduced loss must have one element, got ",
                shape_str(grad.sizes()));
  }
}

// The upstream gradient of a loss per loss element ('none') or as one 0-dim tensor, in the
// accumulation dtype: grad, or grad / denominator for 'mean'. Stays on grad's device.
inline at::Tensor upstream_scale(const at::Tensor& grad, int64_t reduction,
                                 const at::Tensor& denominator, int64_t positions,
                                 at::ScalarType acc) {
  check_upstream_grad(grad, reduction, positions);
  if (reduction == kNone) return as_dtype(grad, acc).contiguous();
  const bool mean = reduction == kMean;
  if (grad.is_cpu() && (!mean || denominator.is_cpu())) {  // the same double division, no ATen ops
    const double g = cpu_value(grad);
    return cpu_scalar(mean ? g / cpu_value(denominator) : g, acc);
  }
  const auto g = grad.reshape({}).to(at::kDouble);
  return (mean ? g / denominator : g).to(acc);
}

// ---- class-index and probability targets (cross_entropy, nll_loss) ---------------------

#ifdef __CUDACC__
#define PYOPS_HOST_DEVICE __host__ __device__
#else
#define PYOPS_HOST_DEVICE
#endif

// A target's class index, checked where a kernel reads it, as torch does: an IndexError on the
// CPU, a device-side assert on CUDA (no host synchronisation).
PYOPS_HOST_DEVICE inline int64_t checked_target(int64_t t, int64_t classes) {
#ifdef __CUDA_ARCH__
  CUDA_KERNEL_ASSERT_MSG(t >= 0 && t < classes, "Target is out of bounds");
#else
  TORCH_CHECK_INDEX(t >= 0 && t < classes, "Target ", num_str(t), " is out of bounds.");
#endif
  return t;
}

// multi_margin_loss's, with torch's message for it.
PYOPS_HOST_DEVICE inline int64_t checked_margin_target(int64_t t, int64_t classes) {
#ifdef __CUDA_ARCH__
  CUDA_KERNEL_ASSERT_MSG(t >= 0 && t < classes, "target out of range");
#else
  TORCH_CHECK(t >= 0 && t < classes, "target out of range");
#endif
  return t;
}

// Inputs checked and laid out for the kernels.
struct Prepared {
  const char* op;     // the operator's name, for errors
  at::Tensor input;   // dense, positions in logical order
  at::Tensor target;  // class indices (int64, contiguous) or probabilities (input's layout)
  at::Tensor weight;  // accumulation dtype, contiguous, or undefined
  int64_t class_dim;
  bool soft;
  Shape3 shape;
  std::vector<int64_t> position_shape;  // input's shape without the class dim
};

// float32 for half types, as torch's opmath.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline Prepared prepare_classes(const char* op, const at::Tensor& input,
                                const at::Tensor& target,
                                const std::optional<at::Tensor>& weight, bool allow_soft) {
  check_floating(op, input);
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dim (the classes), got 0");
  TORCH_CHECK(target.device() == input.device(), op,
              ": input and target must be on the same device, got ", input.device(), " and ",
              target.device());
  // torch's check, a ValueError, before any other of the target's
  TORCH_CHECK_VALUE(input.dim() < 2 || target.dim() < 1 || target.size(0) == input.size(0),
                    "Expected input batch_size (", num_str(input.size(0)),
                    ") to match target batch_size (", num_str(target.size(0)), ").");
  Prepared p;
  p.op = op;
  p.class_dim = input.dim() == 1 ? 0 : 1;
  p.position_shape = input.sizes().vec();
  p.position_shape.erase(p.position_shape.begin() + p.class_dim);
  p.soft = allow_soft && at::isFloatingType(target.scalar_type());
  const int64_t classes = input.size(p.class_dim);
  if (weight && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->numel() == classes, op,
                ": weight tensor should be defined either for all ", num_str(classes),
                " classes or no classes but got weight tensor of shape: ",
                shape_str(weight->sizes()));
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), op, ": expected scalar type ",
                input.scalar_type(), " but found ", weight->scalar_type(), " for weight");
    TORCH_CHECK(weight->device() == input.device(), op, ": weight must be on ", input.device());
    p.weight = weight->to(acc_dtype(input.scalar_type())).contiguous();
  }
  auto x = dense(input);
  if (!positions_in_logical_order(x, p.class_dim)) x = x.contiguous();
  p.input = x;
  p.shape = shape3(x, p.class_dim);
  if (p.soft) {
    TORCH_CHECK(target.sizes() == input.sizes(), op,
                ": probability targets must have the input's shape ", shape_str(input.sizes()),
                ", got ", shape_str(target.sizes()));
    TORCH_CHECK(target.scalar_type() == input.scalar_type(), op,
                ": probability targets must have the input's dtype ", input.scalar_type(),
                ", got ", target.scalar_type());
    p.target = in_layout_of(target, x);
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
                ": expected target dtype to be Long or Byte, but got ", target.scalar_type());
    TORCH_CHECK(target.sizes() == at::IntArrayRef(p.position_shape), op,
                ": expected target size ", shape_str(p.position_shape), ", got ",
                shape_str(target.sizes()));
    p.target = as_dtype(target, at::kLong).contiguous();
  }
  return p;
}

// The 'mean' denominator of probability targets: the number of positions, or 0 (so NaN, as
// torch) when the input has no elements at all.
inline double soft_denominator_value(const Prepared& p) {
  return p.input.numel() == 0 ? 0.0 : static_cast<double>(p.shape.outer * p.shape.inner);
}

inline at::Tensor soft_denominator(const Prepared& p) {
  return cpu_scalar(soft_denominator_value(p));
}

// The cross-entropy output, in `dtype`, from per-position losses and, with label smoothing on
// class targets, the smoothing terms: (1 - eps) * nll + eps / C * smooth, each reduced on its own
// as torch does (eps / C is inf, so the result NaN, when there are no classes). 'mean' divides
// the two sums by their denominators, which differ only where a backend's torch kernels differ.
inline at::Tensor class_loss_output(const at::Tensor& losses, const at::Tensor& smooth,
                                    int64_t reduction, const at::Tensor& nll_denominator,
                                    const at::Tensor& smooth_denominator, const Prepared& p,
                                    double label_smoothing, at::ScalarType dtype) {
  const auto& shape = p.position_shape;
  if (!smooth.defined()) return reduce_losses(losses, reduction, nll_denominator, shape, dtype);
  const double eps_c = label_smoothing / static_cast<double>(p.shape.dim);
  const auto nll = reduce_losses(losses, reduction, nll_denominator, shape, at::kDouble);
  const auto smoothing = reduce_losses(smooth, reduction, smooth_denominator, shape, at::kDouble);
  return (nll * (1.0 - label_smoothing) + smoothing * eps_c).to(dtype);
}

// The result in the layout autograd expects of `input`, from the gradient computed in `prep`'s.
inline at::Tensor in_input_layout(const at::Tensor& input, const at::Tensor& result) {
  const auto like = dense(input);
  return like.strides() == result.strides() ? result : at::empty_like(like).copy_(result);
}

inline void check_label_smoothing(double label_smoothing) {
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing must be between 0.0 and 1.0. Got: ", num_str(label_smoothing));
}

// cross_entropy's arguments beyond its tensors and reduction.
struct ClassOptions {
  int64_t ignore_index;
  double label_smoothing;
  double lse_square_scale;  // z-loss: s * lse^2 added to each position's loss (not ignored)
  double softcap;           // c > 0: the logits become c * tanh(logits / c) first; 0: none

  // Whether the loss takes torch's form, label smoothing's two terms reduced apart (which
  // decides where overflow turns into NaN); with z-loss each position's loss is one number.
  bool split_smoothing(bool soft) const {
    return !soft && label_smoothing > 0 && lse_square_scale == 0;
  }
};

inline ClassOptions class_options(int64_t ignore_index, double label_smoothing,
                                  double lse_square_scale, double softcap) {
  check_label_smoothing(label_smoothing);
  TORCH_CHECK(std::isfinite(lse_square_scale),
              "lse_square_scale must be finite, got ", num_str(lse_square_scale));
  TORCH_CHECK(softcap >= 0 && std::isfinite(softcap),
              "softcap must be positive and finite (0 for none), got ", num_str(softcap));
  return {ignore_index, label_smoothing, lse_square_scale, softcap};
}

inline void check_grad_in_forward(const at::Tensor& input, int64_t reduction,
                                  const at::Tensor& grad_input) {
  TORCH_CHECK(reduction != kNone,
              "cross_entropy_grad_in_forward: needs reduction 'mean' or 'sum', got 'none'");
  TORCH_CHECK(grad_input.sizes() == input.sizes() && grad_input.dtype() == input.dtype() &&
                  grad_input.device() == input.device(),
              "cross_entropy_grad_in_forward: grad_input must match input's shape, dtype and "
              "device");
}

// cross_entropy's backward, host side once for both backends. Kernels (a backend's):
// scale(grad, reduction, prep, ignore_index), the upstream gradient per position or one 0-dim
// tensor, over the 'mean' denominator; backward<scalar_t>(prep, options, lse, scale, result),
// the input gradient into result (laid out as prep.input).
template <typename Backend, typename Kernels>
at::Tensor cross_entropy_backward(const at::Tensor& grad, const at::Tensor& input,
                                  const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                  int64_t reduction, int64_t ignore_index, double label_smoothing,
                                  const at::Tensor& lse, double lse_square_scale, double softcap) {
  constexpr const char* op = "pyops::cross_entropy_backward";
  check_reduction(reduction);
  const auto options = class_options(ignore_index, label_smoothing, lse_square_scale, softcap);
  const typename Backend::Guard guard(input.device());
  const Prepared prep = prepare_classes(op, input, target, weight, /*allow_soft=*/true);
  const int64_t positions = prep.shape.outer * prep.shape.inner;
  TORCH_CHECK(lse.numel() == positions && lse.scalar_type() == acc_dtype(input.scalar_type()), op,
              ": lse must be the forward's log-sum-exp, one per position");
  at::Tensor result = Backend::output_like(prep.input);
  if (result.numel() == 0) return in_input_layout(input, result);
  const auto scale = Kernels::scale(grad, reduction, prep, ignore_index);
  const auto lse_c = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), op, [&] {
    Kernels::template backward<scalar_t>(prep, options, lse_c, scale, result);
  });
  return in_input_layout(input, result);
}

// ---- elementwise losses -----------------------------------------------------------------------

// Inputs of an elementwise loss, each dense and laid out exactly like x.
struct Elementwise {
  const char* op;  // the operator's name, for errors
  at::Tensor x, y, w, pos_w;
};

inline at::Tensor like_input(const char* op, const char* name,
                             const std::optional<at::Tensor>& t, const at::Tensor& input,
                             const at::Tensor& x) {
  if (!t || !t->defined()) return {};
  TORCH_CHECK(t->scalar_type() == input.scalar_type(), op, ": expected ", name, " of dtype ",
              input.scalar_type(), ", got ", t->scalar_type());
  TORCH_CHECK(t->device() == input.device(), op, ": expected ", name, " on ", input.device(),
              ", got ", t->device());
  return in_layout_of(t->expand(input.sizes()), x);
}

inline Elementwise prepare_elementwise(
    const char* op, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight = std::nullopt,
    const std::optional<at::Tensor>& pos_weight = std::nullopt) {
  check_floating(op, input);
  TORCH_CHECK(target.sizes() == input.sizes(), op, ": target size ", shape_str(target.sizes()),
              " must be the same as input size ", shape_str(input.sizes()));
  Elementwise e;
  e.op = op;
  e.x = dense(input);
  e.y = like_input(op, "target", target, input, e.x);
  e.w = like_input(op, "weight", weight, input, e.x);
  e.pos_w = like_input(op, "pos_weight", pos_weight, input, e.x);
  return e;
}

// The 'mean' denominators of the elementwise losses, 0-dim double tensors: the element count,
// or for a weighted mse_loss the sum of the weights, as torch.
inline at::Tensor count_of(const Elementwise& e) {
  return cpu_scalar(static_cast<double>(e.x.numel()));
}

inline at::Tensor mse_denominator(const Elementwise& e) {
  return e.w.defined() ? fixed_order_sum(e.w) : count_of(e);
}

// An elementwise loss's reduced output from the sum of its terms (a 0-dim double tensor).
inline at::Tensor reduced_total(const at::Tensor& total, const Elementwise& e, int64_t reduction,
                                const at::Tensor& denominator) {
  return (reduction == kMean ? total / denominator : total).to(e.x.scalar_type());
}

// The upstream gradient of an elementwise loss's backward: grad in x's dtype and layout for
// 'none', else one 0-dim scale in the accumulation dtype, over `denominator` for 'mean'.
inline at::Tensor elementwise_upstream(const at::Tensor& grad, const Elementwise& e,
                                       int64_t reduction, const at::Tensor& denominator) {
  check_reduction(reduction);
  if (reduction != kNone) {
    return upstream_scale(grad, reduction, denominator, e.x.numel(), acc_dtype(e.x.scalar_type()));
  }
  TORCH_CHECK(grad.sizes() == e.x.sizes(), e.op, ": grad must have the input's shape ",
              shape_str(e.x.sizes()), ", got ", shape_str(grad.sizes()));
  return in_layout_of(as_dtype(grad, e.x.scalar_type()), e.x);
}

// ---- multi_margin_loss --------------------------------------------------------------------

struct MarginRows {
  const char* op;     // the operator's name, for errors
  at::Tensor x;       // (rows, classes), contiguous
  at::Tensor target;  // (rows), int64, contiguous
  at::Tensor weight;  // (classes), accumulation dtype, or undefined
  int64_t rows, classes;
  std::vector<int64_t> loss_shape;  // of 'none': the target's, as torch
};

inline MarginRows prepare_margin(const char* op, const at::Tensor& input,
                                 const at::Tensor& target, int64_t p,
                                 const std::optional<at::Tensor>& weight) {
  check_floating(op, input);
  TORCH_CHECK(p == 1 || p == 2, op, ": only p == 1 and p == 2 supported");
  TORCH_CHECK(input.dim() == 0 || (input.dim() <= 2 && input.size(-1) > 0), op,
              ": Expected non-empty vector or matrix with optional 0-dim batch size, but got: ",
              shape_str(input.sizes()));
  MarginRows m;
  m.op = op;
  m.rows = input.dim() == 2 ? input.size(0) : 1;
  m.classes = input.dim() == 0 ? 1 : input.size(-1);
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": expected scalar type Long but found ",
              target.scalar_type());
  TORCH_CHECK(target.numel() == m.rows && target.dim() <= 1, op,
              ": target tensor should be 1-D with size equal to the number of input samples "
              "(batch size). Expected target size [", num_str(m.rows), "], but got ",
              shape_str(target.sizes()));
  TORCH_CHECK(target.device() == input.device(), op, ": target must be on ", input.device());
  if (weight && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->numel() == m.classes, op,
                ": inconsistent weight size, expected ", num_str(m.classes), " but got ",
                shape_str(weight->sizes()));
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), op, ": expected weight of dtype ",
                input.scalar_type(), ", got ", weight->scalar_type());
    m.weight = weight->to(acc_dtype(input.scalar_type())).contiguous();
  }
  m.x = input.reshape({m.rows, m.classes}).contiguous();
  m.target = target.reshape({m.rows}).contiguous();
  m.loss_shape = target.sizes().vec();
  return m;
}

// The multi_margin output from per-row losses: in the target's shape for 'none', else
// reduced, 'mean' over the rows.
inline at::Tensor margin_loss_output(const at::Tensor& losses, int64_t reduction,
                                     const MarginRows& m, const at::Tensor& input) {
  const auto rows = cpu_scalar(static_cast<double>(m.rows));
  return reduce_losses(losses, reduction, rows, m.loss_shape, input.scalar_type());
}

// multi_margin_loss and its backward, host side once for both backends. Kernels (a backend's)
// computes per dtype: margin_losses(m, p, margin, losses) the per-row losses (accumulation
// dtype) and margin_gradient(m, p, margin, scale, result) the input gradient, with `scale` the
// upstream gradient per row ('none') or one 0-dim tensor, already over the 'mean' denominator.
template <typename Backend, typename Kernels>
at::Tensor multi_margin_loss(const at::Tensor& input, const at::Tensor& target, int64_t p,
                             double margin, const std::optional<at::Tensor>& weight,
                             int64_t reduction) {
  check_reduction(reduction);
  const typename Backend::Guard guard(input.device());
  const auto m = prepare_margin("pyops::multi_margin_loss", input, target, p, weight);
  auto losses = at::empty({m.rows}, input.options().dtype(acc_dtype(input.scalar_type())));
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), m.op, [&] {
    Kernels::template margin_losses<scalar_t>(m, p, margin, losses);
  });
  return margin_loss_output(losses, reduction, m, input);
}

template <typename Backend, typename Kernels>
at::Tensor multi_margin_loss_backward(const at::Tensor& grad, const at::Tensor& input,
                                      const at::Tensor& target, int64_t p, double margin,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t reduction) {
  check_reduction(reduction);
  const typename Backend::Guard guard(input.device());
  const auto m = prepare_margin("pyops::multi_margin_loss_backward", input, target, p, weight);
  const auto scale = upstream_scale(grad, reduction,
                                    cpu_scalar(static_cast<double>(m.rows)),
                                    m.rows, acc_dtype(input.scalar_type()));
  at::Tensor result = Backend::new_output({m.rows, m.classes}, input.options());
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), m.op, [&] {
    Kernels::template margin_gradient<scalar_t>(m, p, margin, scale, result);
  });
  return result.view(input.sizes());
}

}  // namespace pyops
