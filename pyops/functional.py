"""Drop-in replacements for torch.nn.functional, backed by the pyops operators."""

import contextlib
import functools
import math
import warnings

import torch
from torch.nn import _reduction

from . import _vocab_parallel
from ._autograd import (ACTIVATIONS, REDUCTION_NONE, REDUCTION_SUM, _acc_dtype,
                        check_class_target_batch)
from ._ops import ops

__all__ = ["sigmoid", "tanh", "relu", "silu", "gelu", "softmax", "log_softmax", "cross_entropy",
           "linear_cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
           "binary_cross_entropy",
           "hinge_loss", "multi_margin_loss"]


def _as_floating(input):
    # torch promotes integer and bool inputs of sigmoid/tanh to the default float dtype.
    # (Anything but a tensor goes to the operator, which raises torch's TypeError.)
    if not isinstance(input, torch.Tensor) or input.is_floating_point():
        return input
    if input.is_complex():
        raise RuntimeError(f"pyops does not support complex inputs (got {input.dtype})")
    return input.to(torch.get_default_dtype())


def sigmoid(input):
    return ops().sigmoid(_as_floating(input))


def tanh(input):
    return ops().tanh(_as_floating(input))


def _activation(name, input, inplace):
    """pyops::<name>(input), or with inplace its result written into input. When autograd
    records it, that is a copy into input (the in-place op has no autograd), of the activation
    of a clone where the backward needs the input as it was."""
    op = getattr(ops(), name)
    if not inplace:
        return op(input)
    if torch.is_grad_enabled() and input.requires_grad:
        return input.copy_(op(input.clone() if ACTIVATIONS[name] == "self" else input))
    getattr(ops(), name + "_")(input)
    return input


def relu(input, inplace=False):
    """torch.nn.functional.relu. Integer inputs stay integral, as in torch; bool raises."""
    return _activation("relu", input, inplace)


def silu(input, inplace=False):
    """torch.nn.functional.silu: x * sigmoid(x)."""
    return _activation("silu", input, inplace)


def gelu(input, approximate="none"):
    """torch.nn.functional.gelu: x * Phi(x), or with approximate='tanh' torch's tanh formula."""
    if not isinstance(approximate, str):
        raise TypeError(f"gelu(): argument 'approximate' must be str, not "
                        f"{_type_name(approximate)}")
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return _activation("gelu" if approximate == "none" else "gelu_tanh", input, False)


def _implicit_softmax_dim(name, ndim, stacklevel):
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_input(name, input, dim, stacklevel, dtype):
    if not isinstance(input, torch.Tensor):  # torch.nn.functional's calls input.<name>(dim)
        raise AttributeError(f"'{_type_name(input)}' object has no attribute '{name}'")
    if dim is None:
        dim = _implicit_softmax_dim(name, input.dim(), stacklevel + 1)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{name}(): argument 'dtype' must be torch.dtype, not "
                            f"{_type_name(dtype)}")
        input = input.to(dtype)
    return input, dim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """torch.nn.functional.softmax: exp(x - max) / sum(exp(x - max)) over `dim`."""
    input, dim = _softmax_input("softmax", input, dim, _stacklevel, dtype)
    return ops().softmax(input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """torch.nn.functional.log_softmax: x - max - log(sum(exp(x - max))) over `dim`."""
    input, dim = _softmax_input("log_softmax", input, dim, _stacklevel, dtype)
    return ops().log_softmax(input, dim)


# ---- losses ---------------------------------------------------------------------------------

def _reduction_enum(size_average, reduce, reduction):
    """torch's rules: the legacy size_average/reduce flags win (with torch's warning); an unknown
    reduction string is a ValueError."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _reduction.get_enum(reduction)


def _check_tensors(name, input, target, weight=None, pos_weight=None):
    """torch.nn.functional's TypeError where an argument that takes a tensor has something else
    (weight and pos_weight may be None)."""
    if (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)
            and (weight is None or isinstance(weight, torch.Tensor))
            and (pos_weight is None or isinstance(pos_weight, torch.Tensor))):
        return
    arguments = {"input": input, "target": target, "weight": weight, "pos_weight": pos_weight}
    for position, (argument, value) in enumerate(arguments.items(), 1):
        if not isinstance(value, torch.Tensor) and (position <= 2 or value is not None):
            raise _not_a_tensor(name, argument, value, position)


def _type_name(value):
    """The name of value's type as Python's and torch's messages write it (C's tp_name): the
    bare name for classes defined in Python, the dotted one for C types (torch.dtype)."""
    t = type(value)
    if t.__flags__ & (1 << 9) or t.__module__ == "builtins":  # Py_TPFLAGS_HEAPTYPE
        return t.__name__
    return f"{t.__module__}.{t.__qualname__}"


def _not_a_tensor(name, argument, value, position=None):
    where = "" if position is None else f" (position {position})"
    return TypeError(f"{name}(): argument '{argument}'{where} must be Tensor, not "
                     f"{_type_name(value)}")


def _check_weight(weight, name):
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"pyops.{name} is not differentiable with respect to argument "
                           "'weight'. This input cannot have requires_grad True.")


def _check_label_smoothing(label_smoothing):
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")


def _extras(lse_square_scale, softcap):
    """lse_square_scale and softcap as the operators take them (softcap 0 for none)."""
    if softcap is None and lse_square_scale == 0:  # the usual call, cheaply
        return 0.0, 0.0
    if softcap is not None and not 0 < softcap < math.inf:
        raise ValueError(f"softcap must be positive and finite, or None, got {softcap}")
    if not math.isfinite(lse_square_scale):
        raise ValueError(f"lse_square_scale must be finite, got {lse_square_scale}")
    return float(lse_square_scale), 0.0 if softcap is None else float(softcap)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, lse_square_scale=0.0, softcap=None,
                  process_group=None, grad_in_forward=False, overwrite_input=False):
    """torch.nn.functional.cross_entropy, fused: log-softmax and the loss in one pass per row.

    Targets are class indices (int64 or uint8) or class probabilities of input's shape.
    label_smoothing outside [0, 1] raises (torch lets negative values through).

    Extras: lse_square_scale z (z-loss) adds z * logsumexp(logits)^2 to the loss of each position
    that is not ignored, reduced with it (its 'mean' over the same denominator); softcap c makes
    the logits c * tanh(logits / c) first (Gemma 2). Both are in the gradients.

    process_group: the classes are sharded over the group's ranks, each holding a contiguous
    slice (rank order, any sizes): input is this rank's slice of the logits, weight its slice
    of the class weights, target the global class indices (or its slice of the probabilities).
    Every rank returns the same loss, from one all-gather of a few numbers per position; the
    gradient is for the rank's own slice, with no collective. A DTensor input sharded on its
    class dim over a 1-D mesh (as torch's loss_parallel() takes it) is computed so over its
    mesh, and its loss returned replicated.

    grad_in_forward=True (reduction 'mean' or 'sum', input requiring grad): the forward also
    computes the input gradient, so the logits are read once in all; the graph can then be
    backpropagated once, and not differentiated twice. overwrite_input=True also stores that
    gradient in input's memory instead of a new buffer (the logits are lost).
    """
    _check_tensors("cross_entropy", input, target, weight)
    reduction = _reduction_enum(size_average, reduce, reduction)
    _check_label_smoothing(label_smoothing)
    extras = _extras(lse_square_scale, softcap)
    ndim = input.dim()
    if ndim == 0:
        raise RuntimeError("cross_entropy: input must have at least one dim (the classes), got 0")
    soft = target.dim() == ndim and input.shape == target.shape  # probabilities, as torch decides
    plain = process_group is None and type(input) is torch.Tensor and not grad_in_forward
    if not (soft and plain):  # torch differentiates its formula for probabilities in weight too
        _check_weight(weight, "cross_entropy")
    if soft:
        if not target.is_floating_point():
            raise RuntimeError("Expected floating point type for target with class "
                               f"probabilities, got {target.dtype}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        # torch's formula, -(log_softmax(input) * target * weight), promotes all three
        input, target, weight = _promoted(input, target, weight)
        if weight is not None and weight.requires_grad and torch.is_grad_enabled():
            return _soft_cross_entropy(input, target, weight, reduction, label_smoothing, *extras)
    elif process_group is not None or type(input) is not torch.Tensor:
        check_class_target_batch(input.shape, target.shape)  # else the kernels check it
    if type(input) is not torch.Tensor and isinstance(input, _vocab_parallel.DTensor):
        return _vocab_parallel.dtensor_cross_entropy(input, target, weight, reduction,
                                                     ignore_index, label_smoothing, *extras)
    if process_group is not None:
        if grad_in_forward:
            raise ValueError("cross_entropy: grad_in_forward=True does not take a process_group")
        return _vocab_parallel.cross_entropy(input, target, weight, reduction, ignore_index,
                                             label_smoothing, *extras, process_group)
    if overwrite_input and not grad_in_forward:
        raise ValueError("cross_entropy: overwrite_input=True needs grad_in_forward=True")
    if grad_in_forward and input.requires_grad and torch.is_grad_enabled():
        if reduction == REDUCTION_NONE:
            raise ValueError("cross_entropy: grad_in_forward=True needs reduction 'mean' or 'sum'")
        if target.requires_grad or (weight is not None and weight.requires_grad):
            raise ValueError("cross_entropy: grad_in_forward=True gives the gradient of input "
                             "only; target and weight must not require grad")
        grad = input.detach() if overwrite_input else torch.empty_like(input)
        loss = ops().cross_entropy_grad_in_forward(input, target, weight, reduction,
                                                   ignore_index, label_smoothing, grad, *extras)
        # float32 for half types: torch's under autocast, else rounded as torch's
        autocast = torch.is_autocast_enabled(input.device.type)
        return loss if autocast or loss.dtype == input.dtype else loss.to(input.dtype)
    loss, _ = ops().cross_entropy(input, target, weight, reduction, ignore_index,
                                  label_smoothing, *extras)
    return loss


def _soft_cross_entropy(input, target, weight, reduction, label_smoothing, lse_square_scale,
                        softcap):
    """cross_entropy over probabilities as torch writes it, -(log_softmax(input) * target *
    weight) summed over the classes, for a weight that needs its gradient (the fused kernels
    give none). The extras as in the kernels: capped logits, z-loss at every position."""
    class_dim = 0 if input.dim() == 1 else 1
    classes = input.shape[class_dim]
    logits = softcap * torch.tanh(input / softcap) if softcap else input
    if label_smoothing:  # (no classes: no target values to smooth)
        target = target * (1 - label_smoothing) + label_smoothing / max(classes, 1)
    shape = [classes if d == class_dim else 1 for d in range(input.dim())]
    loss = -(log_softmax(logits, class_dim) * target * weight.reshape(shape)).sum(class_dim)
    if lse_square_scale:
        loss = loss + lse_square_scale * torch.logsumexp(logits, class_dim).square()
    if reduction == REDUCTION_NONE:
        return loss
    if reduction == REDUCTION_SUM:
        return loss.sum()
    return loss.sum() / (loss.numel() if input.numel() else 0)  # NaN without logits, as torch


def _linear_checks(input, linear_weight, linear_bias):
    """torch's own checks of F.linear_cross_entropy, with its messages; returns the classes
    and the extra loss dims of a multi-dimensional linear_weight (C, d1, ..., H)."""
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError("expected linear_weight with dimensionality at least 2, got "
                           f"{linear_weight.dim()}")
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError("expected equal input and linear_weight last dimensions (in_features), "
                           f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    classes, extra = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (classes, *extra):
        raise RuntimeError(f"expected linear_bias shape {(classes, *extra)}, got "
                           f"{tuple(linear_bias.shape)}")
    if extra and input.dim() == 1:
        raise RuntimeError(f"K-dimensional loss defined by linear_weight shape "
                           f"{tuple(linear_weight.shape)} requires batched input, "
                           f"(N, {input.shape[-1]}), got unbatched input with shape "
                           f"{tuple(input.shape)}")
    return classes, extra


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0, options=None,
                         lse_square_scale=0.0, softcap=None, process_group=None):
    """torch.nn.functional.linear_cross_entropy, without the logits of all positions at once.
    lse_square_scale (z-loss) and softcap as in cross_entropy.

    A chunk of positions at a time (options.batch_chunk_size rows, else buffers of 56 MB):
    the logits of a chunk become their gradient in place, so 'mean' and 'sum' compute every
    gradient in the forward (that graph backpropagates once, and not with create_graph); 'none'
    recomputes the logits in the backward. Under autocast the matmuls run in the autocast dtype
    and the loss is float32 from float32 class weights and probabilities, as torch's linear then
    cross_entropy. A multi-dimensional linear_weight, and a probability target or its class
    weights requiring grad, take torch's reference path (linear, then pyops' cross_entropy):
    their logits are materialized.

    process_group: the classes are sharded over the group's ranks as in cross_entropy:
    linear_weight and linear_bias are this rank's slice of the head, input the same on every
    rank. One all-gather per chunk in the forward; the backward recomputes the chunks' logits and
    all-reduces input's gradient, so it is complete on every rank.
    """
    reduction_enum = _reduction.get_enum(reduction)
    classes, extra = _linear_checks(input, linear_weight, linear_bias)
    logits_shape = (*input.shape[:-1], classes, *extra)
    soft = tuple(target.shape) == logits_shape
    if not isinstance(target, torch.Tensor):
        raise _not_a_tensor("linear_cross_entropy", "target", target, 3)
    if soft and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    if extra or (soft and torch.is_grad_enabled() and (
            target.requires_grad or (weight is not None and weight.requires_grad))):
        flat_bias = None if linear_bias is None else linear_bias.reshape(-1)
        logits = torch.nn.functional.linear(
            input, linear_weight.reshape(-1, input.shape[-1]), flat_bias).reshape(logits_shape)
        return cross_entropy(logits, target, weight, ignore_index=ignore_index,
                             reduction=reduction, label_smoothing=label_smoothing,
                             lse_square_scale=lse_square_scale, softcap=softcap,
                             process_group=process_group)
    _check_label_smoothing(label_smoothing)
    extras = _extras(lse_square_scale, softcap)
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise _not_a_tensor("linear_cross_entropy", "weight", weight)
    _check_weight(weight, "linear_cross_entropy")
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    elif not soft:
        check_class_target_batch(input.shape, target.shape)
    # autocast casts no float64 tensor, for linear as for cross_entropy
    autocast = torch.is_autocast_enabled(input.device.type) and input.dtype != torch.float64
    dtype = input.dtype
    if autocast:  # linear's matmul in the autocast dtype; the loss float32 from float32 weights
        low = torch.get_autocast_dtype(input.device.type)  # and probabilities (float64 kept)
        input, linear_weight, linear_bias = (
            None if t is None else t.to(low) for t in (input, linear_weight, linear_bias))
        weight, target = (t if t is None or not t.is_floating_point() or t.dtype == torch.float64
                          else t.float() for t in (weight, target))
        dtype = torch.float32
    elif not soft and weight is not None and weight.dtype != dtype:
        raise RuntimeError(f"linear_cross_entropy: expected weight of dtype {dtype}, got "
                           f"{weight.dtype}")
    if soft:  # torch's loss over probabilities promotes the logits, target and weight
        dtype = torch.promote_types(dtype, _common_dtype(target, weight))
        # the kernels' dtype, or float32 for half types, kept where that is torch's
        side = input.dtype if dtype == input.dtype else _acc_dtype(input.dtype)
        target = target.to(side)
        weight = None if weight is None else weight.to(side)
    chunk = getattr(options, "batch_chunk_size", None) or 0
    # autocast off inside: the kernels reached take what they are given
    with torch.autocast(input.device.type, enabled=False) if autocast else contextlib.nullcontext():
        if process_group is not None:
            loss = _vocab_parallel.linear_cross_entropy(
                input, linear_weight, linear_bias, target, weight, reduction_enum, ignore_index,
                label_smoothing, *extras, process_group, chunk)
        else:
            loss = ops().linear_cross_entropy(input, linear_weight, linear_bias, target, weight,
                                              reduction_enum, ignore_index, label_smoothing,
                                              chunk, *extras)
    if unbatched and reduction_enum == REDUCTION_NONE:
        loss = loss.squeeze(0)
    return loss.to(dtype)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """torch.nn.functional.nll_loss: -weight[t] * input[t], input holding log-probabilities."""
    _check_tensors("nll_loss", input, target, weight)
    reduction = _reduction_enum(size_average, reduce, reduction)
    if input.dim() == 0:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    _check_weight(weight, "nll_loss")  # the batch sizes: the kernels check them, as torch's do
    return ops().nll_loss(input, target, weight, reduction, ignore_index)


def _common_dtype(*tensors):
    """The dtype torch promotes the tensors (None skipped) to."""
    dtypes = {t.dtype for t in tensors if t is not None}
    return dtypes.pop() if len(dtypes) == 1 else functools.reduce(torch.promote_types, dtypes)


def _promoted(*tensors):
    """Tensors (None kept) cast to their common floating dtype, as torch's elementwise losses do."""
    dtype = _common_dtype(*tensors)
    if not dtype.is_floating_point:
        raise NotImplementedError(f"expected floating-point inputs, got {dtype}")
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """torch.nn.functional.mse_loss, broadcasting (with torch's warning) and optional weight."""
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.", stacklevel=2)
        input, target = torch.broadcast_tensors(input, target)
    reduction = _reduction_enum(size_average, reduce, reduction)
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    input, target, weight = _promoted(input, target, weight)
    return ops().mse_loss(input, target, weight, reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """torch's BCE with logits, fused with the sigmoid: stable for any finite logit."""
    reduction = _reduction_enum(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size "
                         f"({input.size()})")
    _check_tensors("binary_cross_entropy_with_logits", input, target, weight, pos_weight)
    if not input.is_floating_point():  # torch's kernel has no integer logits, whatever the target
        raise NotImplementedError(f"binary_cross_entropy_with_logits: expected floating-point "
                                  f"logits, got {input.dtype}")
    if not target.is_floating_point():  # torch's loss is computed in place in target's dtype
        raise RuntimeError(f"binary_cross_entropy_with_logits: expected a floating-point target, "
                           f"got {target.dtype}")
    dtype = target.dtype
    if dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        dtype = torch.float32  # autocast casts the target to float32, for torch's loss and ours
    input, target, weight, pos_weight = _promoted(input, target, weight, pos_weight)
    loss = ops().binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)
    return loss if loss.dtype == dtype else loss.to(dtype)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """torch.nn.functional.binary_cross_entropy on probabilities; logs clamped at -100."""
    reduction = _reduction_enum(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input "
                         f"size ({input.size()}) is deprecated. Please ensure they have the same "
                         "size.")
    if weight is not None:  # any dtype: torch multiplies the loss by it in place
        shape = torch.broadcast_shapes(target.size(), weight.size())  # (torch's errors first)
        weight = weight.expand(shape)
        weight = weight.to(input.dtype)
    return ops().binary_cross_entropy(input, target, weight, reduction)


def hinge_loss(input, target, margin=1.0, reduction="mean"):
    """The lesson's binary hinge: max(0, margin - target * input), targets in {-1, +1}.

    torch has no exact twin: it equals torch.clamp(margin - target * input, min=0) reduced by
    `reduction` ('none', 'mean' or 'sum'), broadcasting input and target like that expression.
    """
    reduction = _reduction.get_enum(reduction)
    if input.shape != target.shape:
        input, target = torch.broadcast_tensors(input, target)
    input, target = _promoted(input, target)
    return ops().hinge_loss(input, target, float(margin), reduction)


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None, reduce=None,
                      reduction="mean"):
    """torch.nn.functional.multi_margin_loss: the multi-class hinge (also for half types)."""
    reduction = _reduction_enum(size_average, reduce, reduction)
    if p not in (1, 2):
        raise ValueError("only p == 1 and p == 2 supported")
    if isinstance(margin, str):  # float() would parse it
        raise TypeError(f"multi_margin_loss(): argument 'margin' (position 4) must be Number, "
                        "not str")
    if weight is not None:
        if weight.dim() != 1:
            raise ValueError("weight must be one-dimensional")
        _check_weight(weight, "multi_margin_loss")
    return ops().multi_margin_loss(input, target, int(p), float(margin), weight, reduction)
