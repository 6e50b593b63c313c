// The kernels of each op family, one list for every backend: a backend defines each kernel under
// its operator's name (csrc/ops.cpp) in its own namespace and expands its family's list in its
// TORCH_LIBRARY_IMPL block, so the CPU and CUDA registrations cannot drift apart.
#pragma once

#include "activations.h"

#include <torch/library.h>

#define PYOPS_IMPL(m, op) m.impl(#op, &op)

// Every activation of csrc/activations.h, from the backend's policy `Backend` and its functors
// named after the ops: `silu` computes pyops::silu and silu_ (called with one value) and
// pyops::silu_backward (called with two).
#define PYOPS_IMPL_ACTIVATION(name, saved)                                              \
  m.impl(#name, &::pyops::activation<Backend, name, ::pyops::names::name>);            \
  m.impl(#name "_", &::pyops::activation_<Backend, name, ::pyops::names::name>);       \
  m.impl(#name "_backward",                                                             \
         &::pyops::activation_backward<Backend, name, ::pyops::names::name##_backward>);
#define PYOPS_ACTIVATION_KERNELS(m) PYOPS_ACTIVATIONS(PYOPS_IMPL_ACTIVATION)

// The host code of csrc/softmax.h over the backend's SoftmaxKernels.
#define PYOPS_SOFTMAX_KERNELS(m)                                                                 \
  m.impl("softmax", &::pyops::softmax_forward<Backend, SoftmaxKernels, false>);                  \
  m.impl("log_softmax", &::pyops::softmax_forward<Backend, SoftmaxKernels, true>);               \
  m.impl("softmax_backward", &::pyops::softmax_backward<Backend, SoftmaxKernels, false>);        \
  m.impl("log_softmax_backward", &::pyops::softmax_backward<Backend, SoftmaxKernels, true>)

#define PYOPS_CROSS_ENTROPY_KERNELS(m)            \
  PYOPS_IMPL(m, cross_entropy);                   \
  m.impl("cross_entropy_backward",                                                         \
         &::pyops::cross_entropy_backward<Backend, CrossEntropyKernels>);                  \
  PYOPS_IMPL(m, cross_entropy_grad_in_forward);   \
  PYOPS_IMPL(m, scale_unless_one_);               \
  PYOPS_IMPL(m, nll_loss);                        \
  PYOPS_IMPL(m, nll_loss_backward)

// The host code of csrc/elementwise_losses.h and csrc/loss_inputs.h over the backend's kernels.
#define PYOPS_LOSS_KERNELS(m)                                                                   \
  m.impl("mse_loss", &::pyops::mse_loss<ElementwiseKernels>);                                   \
  m.impl("mse_loss_backward", &::pyops::mse_loss_backward<ElementwiseKernels>);                 \
  m.impl("binary_cross_entropy_with_logits",                                                    \
         &::pyops::binary_cross_entropy_with_logits<ElementwiseKernels>);                       \
  m.impl("binary_cross_entropy_with_logits_backward",                                           \
         &::pyops::binary_cross_entropy_with_logits_backward<ElementwiseKernels>);              \
  m.impl("binary_cross_entropy", &::pyops::binary_cross_entropy<ElementwiseKernels>);           \
  m.impl("binary_cross_entropy_backward",                                                       \
         &::pyops::binary_cross_entropy_backward<ElementwiseKernels>);                          \
  m.impl("hinge_loss", &::pyops::hinge_loss<ElementwiseKernels>);                               \
  m.impl("hinge_loss_backward", &::pyops::hinge_loss_backward<ElementwiseKernels>);             \
  m.impl("multi_margin_loss", &::pyops::multi_margin_loss<Backend, MarginKernels>);             \
  m.impl("multi_margin_loss_backward",                                                          \
         &::pyops::multi_margin_loss_backward<Backend, MarginKernels>)
