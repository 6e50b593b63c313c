"""Drop-in replacements for torch.nn.functional, backed by the pyops operators."""

import warnings

import torch

ops = torch.ops.pyops

__all__ = ["sigmoid", "tanh", "relu", "softmax", "log_softmax"]


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
