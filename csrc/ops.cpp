// The schemas of every pyops operator. Kernels register against them per backend
// (csrc/cpu/*.cpp, csrc/cuda/*.cu), autograd in csrc/autograd.cpp, fake kernels in
// pyops/_autograd.py.
#include "activations.h"

#include <torch/library.h>

TORCH_LIBRARY(pyops, m) {
  // Activations (csrc/activations.h), each also in place; the backward op takes the saved
  // output or input.
#define PYOPS_DEF_ACTIVATION(name, saved)                                \
  m.def(#name "(Tensor self) -> Tensor");                                \
  m.def(#name "_(Tensor(a!) self) -> ()");                               \
  m.def(#name "_backward(Tensor grad, Tensor " #saved ") -> Tensor");
  PYOPS_ACTIVATIONS(PYOPS_DEF_ACTIVATION)
#undef PYOPS_DEF_ACTIVATION

  // Softmax over one dim. Backward ops take the saved forward output.
  m.def("softmax(Tensor self, int dim) -> Tensor");
  m.def("softmax_backward(Tensor grad, Tensor out, int dim) -> Tensor");
  m.def("log_softmax(Tensor self, int dim) -> Tensor");
  m.def("log_softmax_backward(Tensor grad, Tensor out, int dim) -> Tensor");

  // Losses. reduction: 0 none, 1 mean, 2 sum (as at::Reduction).
  // cross_entropy takes class indices (int64/uint8) or probabilities (input's shape and dtype)
  // and returns (loss, per-position log-sum-exp); the backward reuses that log-sum-exp. The
  // extras torch lacks come last with defaults: lse_square_scale (z-loss) and softcap (0: none).
  m.def("cross_entropy(Tensor input, Tensor target, Tensor? weight, int reduction, "
        "int ignore_index, float label_smoothing, float lse_square_scale=0., "
        "float softcap=0.) -> (Tensor, Tensor)");
  m.def("cross_entropy_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
        "int reduction, int ignore_index, float label_smoothing, Tensor lse, "
        "float lse_square_scale=0., float softcap=0.) -> Tensor");
  // The forward with the input gradient in the same pass, for an upstream gradient of one,
  // written into grad_input (a buffer laid out like input); returns the reduced loss.
  // scale_unless_one_ then scales that gradient by the real upstream gradient, testing it for
  // one on the device (no host synchronisation).
  m.def("cross_entropy_grad_in_forward(Tensor input, Tensor target, Tensor? weight, "
        "int reduction, int ignore_index, float label_smoothing, Tensor(a!) grad_input, "
        "float lse_square_scale=0., float softcap=0.) -> Tensor");
  m.def("scale_unless_one_(Tensor(a!) self, Tensor scale) -> ()");
  // cross_entropy(input @ linear_weight^T + linear_bias, target), input (N, H), a chunk of
  // positions at a time (chunk_size rows; 0: from a memory budget). _grads also returns the
  // gradients for an upstream gradient of one ('mean', 'sum'); empty where output_mask says no.
  m.def("linear_cross_entropy(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
        "Tensor target, Tensor? weight, int reduction, int ignore_index, float label_smoothing, "
        "int chunk_size, float lse_square_scale=0., float softcap=0.) -> Tensor");
  m.def("linear_cross_entropy_grads(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
        "Tensor target, Tensor? weight, int reduction, int ignore_index, float label_smoothing, "
        "int chunk_size, bool[3] output_mask, float lse_square_scale=0., float softcap=0.) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("linear_cross_entropy_backward(Tensor grad, Tensor input, Tensor linear_weight, "
        "Tensor? linear_bias, Tensor target, Tensor? weight, int reduction, int ignore_index, "
        "float label_smoothing, int chunk_size, bool[3] output_mask, float lse_square_scale=0., "
        "float softcap=0.) -> (Tensor, Tensor, Tensor)");
  m.def("nll_loss(Tensor input, Tensor target, Tensor? weight, int reduction, "
        "int ignore_index) -> Tensor");
  m.def("nll_loss_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
        "int reduction, int ignore_index) -> Tensor");

  // Elementwise losses take target (and weight, pos_weight) of the input's shape; the backward
  // ops return the gradient with respect to the input.
  m.def("mse_loss(Tensor input, Tensor target, Tensor? weight, int reduction) -> Tensor");
  m.def("mse_loss_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
        "int reduction) -> Tensor");
  m.def("binary_cross_entropy_with_logits(Tensor input, Tensor target, Tensor? weight, "
        "Tensor? pos_weight, int reduction) -> Tensor");
  m.def("binary_cross_entropy_with_logits_backward(Tensor grad, Tensor input, Tensor target, "
        "Tensor? weight, Tensor? pos_weight, int reduction) -> Tensor");
  m.def(
      "binary_cross_entropy(Tensor input, Tensor target, Tensor? weight, int reduction) -> Tensor");
  m.def("binary_cross_entropy_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
        "int reduction) -> Tensor");
  m.def("hinge_loss(Tensor input, Tensor target, float margin, int reduction) -> Tensor");
  m.def("hinge_loss_backward(Tensor grad, Tensor input, Tensor target, float margin, "
        "int reduction) -> Tensor");
  m.def("multi_margin_loss(Tensor input, Tensor target, int p, float margin, Tensor? weight, "
        "int reduction) -> Tensor");
  m.def("multi_margin_loss_backward(Tensor grad, Tensor input, Tensor target, int p, float margin, "
        "Tensor? weight, int reduction) -> Tensor");
}
