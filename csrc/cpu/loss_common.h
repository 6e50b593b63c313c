// What every loss shares: the reduction argument, turning per-element losses into the output,
// and the per-element scale of the upstream gradient.
#pragma once

#include "common.h"

namespace pyops::cpu {

// As at::Reduction: 0 none, 1 mean, 2 sum.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction >= kNone && reduction <= kSum,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

// The loss output from per-element losses (in the accumulation dtype): the losses themselves in
// `shape` for 'none'; their sum for 'sum'; their sum over `denominator` (a 0-dim tensor) for
// 'mean', which is NaN when the denominator is 0, as in torch.
inline at::Tensor reduce_losses(const at::Tensor& losses, int64_t reduction,
                                const at::Tensor& denominator, at::IntArrayRef shape,
                                at::ScalarType dtype) {
  if (reduction == kNone) return losses.view(shape).to(dtype);
  const auto total = losses.sum(at::kDouble);
  return (reduction == kSum ? total : total / denominator.to(at::kDouble)).to(dtype);
}

// The upstream gradient of element p: grad[p] for 'none', grad for 'sum', grad / denominator
// for 'mean'. Reads the (small) upstream gradient once, in the accumulation dtype.
template <typename T>
class GradScale {
 public:
  GradScale(const at::Tensor& grad, int64_t reduction, const at::Tensor& denominator,
            int64_t numel)
      : per_element_(reduction == kNone) {
    if (per_element_) {
      TORCH_CHECK(grad.numel() == numel, "grad must have one element per loss element (", numel,
                  "), got ", grad.sizes());
      grad_ = grad.to(c10::CppTypeToScalarType<T>::value).contiguous();
      data_ = grad_.const_data_ptr<T>();
    } else {
      TORCH_CHECK(grad.numel() == 1, "grad of a reduced loss must have one element, got ",
                  grad.sizes());
      const double g = grad.to(at::kDouble).item<double>();
      scalar_ = static_cast<T>(reduction == kMean ? g / denominator.item<double>() : g);
    }
  }
  T operator[](int64_t p) const { return per_element_ ? data_[p] : scalar_; }

 private:
  bool per_element_;
  at::Tensor grad_;
  const T* data_ = nullptr;
  T scalar_ = 0;
};

}  // namespace pyops::cpu
