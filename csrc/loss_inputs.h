// Argument checks and layouts of the losses, shared by the CPU and CUDA kernels (ATen calls
// only, no instruction-set code and no host synchronisation).
#pragma once

#include "tensor_utils.h"

#include <optional>
#include <vector>

namespace pyops {

// As at::Reduction: 0 none, 1 mean, 2 sum.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", num_str(reduction));
}

// The sum of t's elements, in double. ATen's CPU sum of one output splits the elements by the
// number of threads, so its rounding would change with torch.set_num_threads; here fixed blocks,
// each below ATen's grain (so summed on one thread), are summed and then added in order. ATen's
// CUDA sum does not depend on threads.
inline at::Tensor fixed_order_sum(const at::Tensor& t) {
  constexpr int64_t kBlock = 1 << 14;
  const auto flat = t.reshape({-1});
  const int64_t full = flat.numel() / kBlock * kBlock;
  if (!flat.is_cpu() || full == 0) return flat.sum(at::kDouble);
  const auto blocks = flat.narrow(0, 0, full).view({-1, kBlock}).sum(1, false, at::kDouble);
  return fixed_order_sum(blocks) + flat.narrow(0, full, flat.numel() - full).sum(at::kDouble);
}

// The loss output from per-element losses (in the accumulation dtype): the losses themselves in
// `shape` for 'none'; their sum for 'sum'; their sum over `denominator` (a 0-dim tensor) for
// 'mean', which is NaN when the denominator is 0, as in torch.
inline at::Tensor reduce_losses(const at::Tensor& losses, int64_t reduction,
                                const at::Tensor& denominator, at::IntArrayRef shape,
                                at::ScalarType dtype) {
  if (reduction == kNone) return losses.view(shape).to(dtype);
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
  if (reduction == kNone) return grad.to(acc).contiguous();
  const auto g = grad.reshape({}).to(at::kDouble);
  return (reduction == kMean ? g / denominator : g).to(acc);
}

// ---- class-index and probability targets (cross_entropy, nll_loss) ---------------------

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
    p.target = target.to(at::kLong).contiguous();
  }
  return p;
}

// The 'mean' denominator of probability targets: the number of positions, or 0 (so NaN, as
// torch) when the input has no elements at all.
inline double soft_denominator_value(const Prepared& p) {
  return p.input.numel() == 0 ? 0.0 : static_cast<double>(p.shape.outer * p.shape.inner);
}

inline at::Tensor soft_denominator(const Prepared& p) {
  return at::scalar_tensor(soft_denominator_value(p), at::kDouble);
}

// The cross-entropy output from per-position losses and, with label smoothing on class targets,
// the smoothing terms: (1 - eps) * nll + eps / C * smooth, each reduced on its own as torch does
// (eps / C is inf, so the result NaN, when there are no classes). 'mean' divides the two sums by
// their denominators, which differ only where a backend's torch kernels differ.
inline at::Tensor class_loss_output(const at::Tensor& losses, const at::Tensor& smooth,
                                    int64_t reduction, const at::Tensor& nll_denominator,
                                    const at::Tensor& smooth_denominator, const Prepared& p,
                                    double label_smoothing) {
  const auto dtype = p.input.scalar_type();
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

inline void check_grad_in_forward(const at::Tensor& input, int64_t reduction,
                                  const at::Tensor& grad_input) {
  TORCH_CHECK(reduction != kNone,
              "cross_entropy_grad_in_forward: needs reduction 'mean' or 'sum', got 'none'");
  TORCH_CHECK(grad_input.sizes() == input.sizes() && grad_input.dtype() == input.dtype() &&
                  grad_input.device() == input.device(),
              "cross_entropy_grad_in_forward: grad_input must match input's shape, dtype and "
              "device");
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
  TORCH_CHECK(input.dim() <= 2 && (input.dim() < 2 || input.size(1) > 0), op,
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
  const auto rows = at::scalar_tensor(static_cast<double>(m.rows), at::kDouble);
  return reduce_losses(losses, reduction, rows, m.loss_shape, input.scalar_type());
}

}  // namespace pyops
