"""Fake (meta) kernels for every pyops operator. Their autograd is in C++ (csrc/autograd.cpp)."""

import torch

from . import _C


def register_fake(name):
    """torch.library.register_fake for pyops::name, after the check the real kernels make: every
    tensor argument on one device (a CPU and a meta tensor must not meet in a fake kernel)."""
    def wrap(fn):
        def fake(*args, **kwargs):
            devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
            if len(devices) > 1:
                raise RuntimeError(f"pyops::{name}: expected all tensors to be on the same device, "
                                   f"but found {', '.join(sorted(map(str, devices)))}")
            return fn(*args, **kwargs)
        torch.library.register_fake(f"pyops::{name}")(fake)
        return fn
    return wrap


def _fake_like(x):
    # Kernels keep a dense input's strides and make anything else contiguous: empty_like does too.
    return torch.empty_like(x)


# ---- activations (the list of csrc/activations.h) ------------------------------------------

# name -> what its backward op takes besides the gradient: "out" or "self" (the input)
ACTIVATIONS = dict(entry.split(":") for entry in _C.activations.split())

for _name in ACTIVATIONS:
    register_fake(_name)(_fake_like)
    register_fake(_name + "_")(lambda self: None)
    register_fake(_name + "_backward")(lambda grad, saved: torch.empty_like(saved))


# ---- softmax, log_softmax -----------------------------------------------------------------

for _name in ("softmax", "log_softmax"):
    register_fake(_name)(lambda x, dim: _fake_like(x))
for _name in ("softmax_backward", "log_softmax_backward"):
    register_fake(_name)(lambda grad, out, dim: torch.empty_like(out))


# ---- losses: shared helpers ---------------------------------------------------------------

REDUCTION_NONE, REDUCTION_MEAN, REDUCTION_SUM = 0, 1, 2


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _class_dim(input):
    return 0 if input.dim() == 1 else 1


def _position_shape(input):
    shape = list(input.shape)
    del shape[_class_dim(input)]
    return shape


def _loss_shape(input, reduction):
    return _position_shape(input) if reduction == REDUCTION_NONE else []


# ---- cross_entropy --------------------------------------------------------------------------

def check_class_target_batch(input_shape, target_shape):
    """torch's batch check of a class target, as the kernels make it first (also for
    torch.compile to trace, and for the paths that reach no kernel with the whole target)."""
    if len(input_shape) >= 2 and len(target_shape) >= 1 and input_shape[0] != target_shape[0]:
        raise ValueError(f"Expected input batch_size ({input_shape[0]}) to match target "
                         f"batch_size ({target_shape[0]}).")


@register_fake("cross_entropy")
def _(input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale=0.0,
      softcap=0.0):
    check_class_target_batch(input.shape, target.shape)
    loss = input.new_empty(_loss_shape(input, reduction))
    lse = input.new_empty(_position_shape(input), dtype=_acc_dtype(input.dtype))
    return loss, lse


@register_fake("cross_entropy_backward")
def _(grad, input, target, weight, reduction, ignore_index, label_smoothing, lse,
      lse_square_scale=0.0, softcap=0.0):
    return torch.empty_like(input)


def _float32_loss(input, shape=()):
    """The loss of linear_cross_entropy and of cross_entropy_grad_in_forward: float32 for half
    types, as under autocast."""
    return input.new_empty(shape, dtype=_acc_dtype(input.dtype))


# ---- cross_entropy with the gradient computed in the forward ---------------------------------

@register_fake("cross_entropy_grad_in_forward")
def _(input, target, weight, reduction, ignore_index, label_smoothing, grad_input,
      lse_square_scale=0.0, softcap=0.0):
    return _float32_loss(input)


@register_fake("scale_unless_one_")
def _(self, scale):
    return None


# ---- linear_cross_entropy ---------------------------------------------------------------------

@register_fake("linear_cross_entropy")
def _(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
      chunk_size, lse_square_scale=0.0, softcap=0.0):
    return _float32_loss(input, (input.shape[0],) if reduction == REDUCTION_NONE else ())


def _linear_grads(input, linear_weight, linear_bias, mask):
    tensors = (input, linear_weight, linear_bias)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if wanted
                 else input.new_empty(0) for t, wanted in zip(tensors, mask))


@register_fake("linear_cross_entropy_grads")
def _(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
      chunk_size, output_mask, lse_square_scale=0.0, softcap=0.0):
    return (_float32_loss(input), *_linear_grads(input, linear_weight, linear_bias, output_mask))


@register_fake("linear_cross_entropy_backward")
def _(grad, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
      label_smoothing, chunk_size, output_mask, lse_square_scale=0.0, softcap=0.0):
    return _linear_grads(input, linear_weight, linear_bias, output_mask)


# ---- nll_loss -------------------------------------------------------------------------------

@register_fake("nll_loss")
def _(input, target, weight, reduction, ignore_index):
    check_class_target_batch(input.shape, target.shape)
    return input.new_empty(_loss_shape(input, reduction))


@register_fake("nll_loss_backward")
def _(grad, input, target, weight, reduction, ignore_index):
    return torch.empty_like(input)


# ---- the lesson's other losses (their autograd: csrc/autograd.cpp) -----------------------------

def _register_loss_fakes(name, per_row=False):
    """'none' gives one loss per element (per row, in the target's shape, for a per-row loss)."""
    def fake(input, target, *rest):
        if rest[-1] != REDUCTION_NONE:
            return input.new_empty([])
        return input.new_empty(target.shape) if per_row else torch.empty_like(input)

    def fake_backward(grad, input, *rest):
        return input.new_empty(input.shape) if per_row else torch.empty_like(input)

    register_fake(name)(fake)
    register_fake(name + "_backward")(fake_backward)


for _name in ("mse_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy", "hinge_loss"):
    _register_loss_fakes(_name)
_register_loss_fakes("multi_margin_loss", per_row=True)
