"""Drop-in replacements for torch.nn.functional, backed by the pyops operators."""

import warnings

import torch
from torch.nn import _reduction

ops = torch.ops.pyops

__all__ = ["sigmoid", "tanh", "relu", "softmax", "log_softmax", "cross_entropy", "nll_loss"]


def _as_floating(input):
    # torch promotes integer and bool inputs of sigmoid/tanh to the default float dtype.
    if input.is_floating_point():
        return input
    if input.is_complex():
        raise RuntimeError(f"pyops does not support complex inputs (got {input.dtype})")
    return input.to(torch.get_default_dtype())


def sigmoid(input):
    return ops.sigmoid(_as_floating(input))


def tanh(input):
    return ops.tanh(_as_floating(input))


class _ReluInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ops.relu_(input)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        return input

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return ops.relu_backward(grad, out)


def relu(input, inplace=False):
    """torch.nn.functional.relu. Integer inputs stay integral, as in torch; bool raises."""
    if not inplace:
        return ops.relu(input)
    if torch.is_grad_enabled() and input.requires_grad:
        return _ReluInplace.apply(input)
    ops.relu_(input)
    return input


def _implicit_softmax_dim(name, ndim, stacklevel):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_input(name, input, dim, stacklevel, dtype):
    if dim is None:
        dim = _implicit_softmax_dim(name, input.dim(), stacklevel + 1)
    if dtype is not None:
        input = input.to(dtype)
    return input, dim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """torch.nn.functional.softmax: exp(x - max) / sum(exp(x - max)) over `dim`."""
    input, dim = _softmax_input("softmax", input, dim, _stacklevel, dtype)
    return ops.softmax(input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """torch.nn.functional.log_softmax: x - max - log(sum(exp(x - max))) over `dim`."""
    input, dim = _softmax_input("log_softmax", input, dim, _stacklevel, dtype)
    return ops.log_softmax(input, dim)


# ---- losses ---------------------------------------------------------------------------------

def _reduction_enum(size_average, reduce, reduction):
    """torch's rules: the legacy size_average/reduce flags win (with torch's warning); an unknown
    reduction string is a ValueError."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _reduction.get_enum(reduction)


def _check_weight(weight, name):
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"pyops.{name} is not differentiable with respect to argument "
                           "'weight'. This input cannot have requires_grad True.")


def _check_class_target_batch(input, target):
    if input.dim() >= 2 and target.dim() >= 1 and input.size(0) != target.size(0):
        raise ValueError(f"Expected input batch_size ({input.size(0)}) to match target "
                         f"batch_size ({target.size(0)}).")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy, fused: log-softmax and the loss in one pass per row.

    Targets are class indices (int64 or uint8) or class probabilities of input's shape.
    label_smoothing outside [0, 1] raises (torch lets negative values through).
    """
    reduction = _reduction_enum(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if input.dim() == 0:
        raise RuntimeError("cross_entropy: input must have at least one dim (the classes), got 0")
    _check_weight(weight, "cross_entropy")
    if input.shape == target.shape:  # probability targets, as torch decides
        if not target.is_floating_point():
            raise RuntimeError("Expected floating point type for target with class "
                               f"probabilities, got {target.dtype}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        dtype = torch.result_type(input, target)
        input, target = input.to(dtype), target.to(dtype)
    else:
        _check_class_target_batch(input, target)
    loss, _ = ops.cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing)
    return loss


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """torch.nn.functional.nll_loss: -weight[t] * input[t], input holding log-probabilities."""
    reduction = _reduction_enum(size_average, reduce, reduction)
    if input.dim() == 0:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    _check_weight(weight, "nll_loss")
    _check_class_target_batch(input, target)
    return ops.nll_loss(input, target, weight, reduction, ignore_index)
