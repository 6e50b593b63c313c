"""Fake (meta) kernels for every pyops operator, and autograd for the elementwise losses and
cross_entropy(grad_in_forward=True).

The activations, softmax family, cross_entropy and nll_loss have their autograd in C++
(csrc/autograd.cpp). Every backward is written with differentiable ops, so double backward
works throughout.
"""

import torch

from . import _C

ops = torch.ops.pyops


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


def _element_scale(grad, reduction, denominator):
    """The upstream gradient of each loss element: grad itself, or grad / denominator for mean."""
    return grad / denominator if reduction == REDUCTION_MEAN else grad


def _reduce_positions(values, reduction, denominator):
    if reduction == REDUCTION_NONE:
        return values
    # The mean as a sum of scaled terms: of no terms its derivatives are 0, not 0/0.
    return (values / denominator).sum() if reduction == REDUCTION_MEAN else values.sum()


# ---- cross_entropy --------------------------------------------------------------------------

@register_fake("cross_entropy")
def _(input, target, weight, reduction, ignore_index, label_smoothing):
    loss = input.new_empty(_loss_shape(input, reduction))
    lse = input.new_empty(_position_shape(input), dtype=_acc_dtype(input.dtype))
    return loss, lse


@register_fake("cross_entropy_backward")
def _(grad, input, target, weight, reduction, ignore_index, label_smoothing, lse):
    return torch.empty_like(input)


# ---- cross_entropy with the gradient computed in the forward ---------------------------------

@register_fake("cross_entropy_grad_in_forward")
def _(input, target, weight, reduction, ignore_index, label_smoothing, grad_input):
    return input.new_empty(())


@register_fake("scale_unless_one_")
def _(self, scale):
    return None


class CrossEntropyGradInForward(torch.autograd.Function):
    """cross_entropy whose forward also writes the input gradient, so the logits are read once
    in all. The backward scales that saved gradient in place by the upstream gradient (a no-op
    when it is one, tested on the device), so the graph can be backpropagated once only, and
    not differentiated twice. With overwrite_input the gradient replaces the logits."""

    @staticmethod
    def forward(ctx, input, target, weight, reduction, ignore_index, label_smoothing,
                overwrite_input):
        grad = input if overwrite_input else torch.empty_like(input)
        loss = ops.cross_entropy_grad_in_forward(input, target, weight, reduction, ignore_index,
                                                 label_smoothing, grad)
        ctx.save_for_backward(grad)
        ctx.spent = False
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.spent:
            raise RuntimeError("cross_entropy(grad_in_forward=True): the gradient was already "
                               "handed out; this graph can be backpropagated once only")
        ctx.spent = True
        (grad,) = ctx.saved_tensors
        ops.scale_unless_one_(grad, grad_loss)
        return grad, None, None, None, None, None, None


# ---- nll_loss -------------------------------------------------------------------------------

@register_fake("nll_loss")
def _(input, target, weight, reduction, ignore_index):
    return input.new_empty(_loss_shape(input, reduction))


@register_fake("nll_loss_backward")
def _(grad, input, target, weight, reduction, ignore_index):
    return torch.empty_like(input)


# ---- the lesson's other losses ----------------------------------------------------------------
# The kernels compute the loss and its input gradient. Every other derivative (target, weight,
# pos_weight, and all second-order ones) goes through a torch-op expression of the same loss,
# which autograd differentiates to any order.

def _log_sigmoid(x):
    return torch.minimum(x, torch.zeros_like(x)) - torch.log1p(torch.exp(-x.abs()))


def _mse_terms(input, target, weight):
    sq = (input - target) ** 2
    return sq if weight is None else sq * weight


def _bce_logits_terms(input, target, weight, pos_weight):
    log_weight = 1 if pos_weight is None else (pos_weight - 1) * target + 1
    loss = (1 - target) * input - log_weight * _log_sigmoid(input)
    return loss if weight is None else loss * weight


def _bce_terms(input, target, weight):
    log_x = torch.clamp(torch.log(input), min=-100)
    log_1mx = torch.clamp(torch.log1p(-input), min=-100)
    loss = (target - 1) * log_1mx - target * log_x
    return loss if weight is None else loss * weight


def _hinge_terms(input, target, margin):
    return torch.clamp(margin - target * input, min=0)


def _multi_margin_rows(input, target, p, margin, weight):
    x = input.reshape(-1, input.shape[-1] if input.dim() else 1)
    t = target.reshape(-1, 1)
    z = margin - x.gather(1, t) + x
    h = torch.where(z > 0, z, torch.zeros_like(z)) ** p
    h = h.scatter(1, t, 0.0)
    rows = h.sum(1) / x.shape[1]
    if weight is not None:
        rows = rows * weight[t.reshape(-1)]
    return rows.reshape(target.shape)  # 'none' has the target's shape, as torch


def _mse_denominator(input, target, weight):
    return input.numel() if weight is None else weight.sum()


class _Loss:
    """One loss op: how many leading arguments are tensors, its torch-op expression (per element,
    or per row for a per_row loss) and the count 'mean' divides by."""

    def __init__(self, name, tensor_args, terms, denominator=None, per_row=False,
                 grad_overrides=None):
        self.name = name
        self.tensor_args = tensor_args
        self.terms = terms  # (*tensors, *scalars) -> losses before reduction
        self.per_row = per_row
        self.denominator = denominator or (lambda input, *rest: input.numel())
        # argument index -> fn(upstream scale per element, *tensors): torch's own first-order
        # formula where it is not the derivative of `terms` (at clamps).
        self.grad_overrides = grad_overrides or {}

    def element_scale(self, grad, tensors, reduction):
        return _element_scale(grad, reduction, self.denominator(*tensors))

    def reduced(self, tensors, scalars, reduction):
        values = self.terms(*tensors, *scalars)
        return _reduce_positions(values, reduction, self.denominator(*tensors))

    def fake(self, input, target, reduction):
        if reduction != REDUCTION_NONE:
            return input.new_empty([])
        if self.per_row:
            return input.new_empty(target.shape)
        return torch.empty_like(input)

    def fake_backward(self, input):
        return input.new_empty(input.shape) if self.per_row else torch.empty_like(input)


def _grads_through(fn, tensors, wanted, grad_out, create_graph):
    """d <grad_out, fn(*tensors)> / d tensors[i] for i in wanted (None elsewhere)."""
    result = [None] * len(tensors)
    if not wanted:
        return result
    with torch.enable_grad():
        out = fn(*tensors)
    if not out.requires_grad:  # piecewise constant in every wanted tensor (hinge's input gradient)
        for i in wanted:
            result[i] = torch.zeros_like(tensors[i])
        return result
    grads = torch.autograd.grad(out, [tensors[i] for i in wanted], grad_out,
                                create_graph=create_graph, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def _register_loss(loss):
    n = loss.tensor_args
    backward_op = getattr(ops, loss.name + "_backward")

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n])
        ctx.scalars = inputs[n:-1]
        ctx.reduction = inputs[-1]

    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[:n]
        rest = [i for i in range(1, n) if needs[i] and i not in loss.grad_overrides]
        grads = _grads_through(lambda *t: loss.reduced(t, ctx.scalars, ctx.reduction),
                               list(tensors), rest, grad, torch.is_grad_enabled())
        for i, override in loss.grad_overrides.items():
            if needs[i]:
                grads[i] = override(loss.element_scale(grad, tensors, ctx.reduction), *tensors)
        if needs[0]:
            grads[0] = backward_op(grad, *tensors, *ctx.scalars, ctx.reduction)
        return (*grads, *([None] * (len(ctx.needs_input_grad) - n)))

    def backward_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n + 1])
        ctx.scalars = inputs[n + 1:-1]
        ctx.reduction = inputs[-1]

    def backward_backward(ctx, gg):
        grad, *tensors = ctx.saved_tensors

        def input_gradient(grad, input, *others):
            x = input if input.requires_grad else input.detach().requires_grad_()
            value = loss.reduced((x, *others), ctx.scalars, ctx.reduction)
            return torch.autograd.grad(value, x, grad, create_graph=True)[0]

        wanted = [i for i in range(n + 1) if ctx.needs_input_grad[i]]
        grads = _grads_through(input_gradient, [grad, *tensors], wanted, gg, torch.is_grad_enabled())
        return (*grads, *([None] * (len(ctx.needs_input_grad) - n - 1)))

    torch.library.register_autograd(f"pyops::{loss.name}", backward, setup_context=setup)
    torch.library.register_autograd(f"pyops::{loss.name}_backward", backward_backward,
                                    setup_context=backward_setup)

    register_fake(loss.name)(
        lambda *args: loss.fake(args[0], args[1], args[-1]))
    register_fake(f"{loss.name}_backward")(
        lambda grad, input, *rest: loss.fake_backward(input))


LOSSES = [
    # The target gradient as torch's -(grad_input): the scale first, so 2 * (x - y) cannot
    # overflow where the gradient itself is finite.
    _Loss("mse_loss", 3, _mse_terms, _mse_denominator, grad_overrides={
        1: lambda s, x, y, w: -(s * 2 * (x - y) * (1 if w is None else w))}),
    _Loss("binary_cross_entropy_with_logits", 4, _bce_logits_terms),
    # torch's target gradient is -logit(input), without the loss' clamp of the logs at -100.
    _Loss("binary_cross_entropy", 3, _bce_terms, grad_overrides={
        1: lambda s, x, y, w: -torch.logit(x) * s * (1 if w is None else w)}),
    _Loss("hinge_loss", 2, _hinge_terms),
    # (input, target, p, margin, weight, reduction): weight travels with the scalars.
    _Loss("multi_margin_loss", 2, _multi_margin_rows,
          lambda input, target: input.shape[0] if input.dim() == 2 else 1, per_row=True),
]
for _loss in LOSSES:
    _register_loss(_loss)
