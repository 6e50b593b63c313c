// The lesson's elementwise losses (mse, binary cross-entropy on logits and on probabilities, the
// binary hinge), host side once for both backends: each op's arguments prepared (loss_inputs.h)
// and its 'mean' denominator chosen, then a backend's Kernels runs them: forward(e, reduction,
// denominator, fn) or backward(grad, e, reduction, denominator, fn), with the backend's functor
// of that loss (Kernels::MseLoss, Kernels::MseGrad, ...), and check_probabilities(e).
#pragma once

#include "loss_inputs.h"

namespace pyops {

template <typename K>
at::Tensor mse_loss(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, int64_t reduction) {
  const auto e = prepare_elementwise("pyops::mse_loss", input, target, weight);
  return K::forward(e, reduction, mse_denominator(e), typename K::MseLoss{});
}

template <typename K>
at::Tensor mse_loss_backward(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             int64_t reduction) {
  const auto e = prepare_elementwise("pyops::mse_loss_backward", input, target, weight);
  return K::backward(grad, e, reduction, mse_denominator(e), typename K::MseGrad{});
}

template <typename K>
at::Tensor binary_cross_entropy_with_logits(const at::Tensor& input, const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& pos_weight,
                                            int64_t reduction) {
  const auto e = prepare_elementwise("pyops::binary_cross_entropy_with_logits", input, target,
                                     weight, pos_weight);
  return K::forward(e, reduction, count_of(e), typename K::BceLogitsLoss{});
}

template <typename K>
at::Tensor binary_cross_entropy_with_logits_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
    int64_t reduction) {
  const auto e = prepare_elementwise("pyops::binary_cross_entropy_with_logits_backward", input,
                                     target, weight, pos_weight);
  return K::backward(grad, e, reduction, count_of(e), typename K::BceLogitsGrad{});
}

template <typename K>
at::Tensor binary_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight, int64_t reduction) {
  const auto e = prepare_elementwise("pyops::binary_cross_entropy", input, target, weight);
  K::check_probabilities(e);
  return K::forward(e, reduction, count_of(e), typename K::BceLoss{});
}

template <typename K>
at::Tensor binary_cross_entropy_backward(const at::Tensor& grad, const at::Tensor& input,
                                         const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         int64_t reduction) {
  const auto e = prepare_elementwise("pyops::binary_cross_entropy_backward", input, target, weight);
  return K::backward(grad, e, reduction, count_of(e), typename K::BceGrad{});
}

template <typename K>
at::Tensor hinge_loss(const at::Tensor& input, const at::Tensor& target, double margin,
                      int64_t reduction) {
  const auto e = prepare_elementwise("pyops::hinge_loss", input, target);
  return K::forward(e, reduction, count_of(e), typename K::HingeLoss{margin});
}

template <typename K>
at::Tensor hinge_loss_backward(const at::Tensor& grad, const at::Tensor& input,
                               const at::Tensor& target, double margin, int64_t reduction) {
  const auto e = prepare_elementwise("pyops::hinge_loss_backward", input, target);
  return K::backward(grad, e, reduction, count_of(e), typename K::HingeGrad{margin});
}

}  // namespace pyops
