"""Drop-in replacements for torch.nn modules, backed by pyops.functional.

Each twin is built from its row of the op table (pyops.table): a subclass of the torch module,
so the same constructor, state, repr and pickling; only forward differs, calling the pyops
function with the module's attributes. So pyops.convert can swap a module's class in place.
"""

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from . import functional as F
from .table import OPS


def _twin(op):
    def forward(self, *args):
        return op.function(*args, **{name: getattr(self, name) for name in op.module_args},
                           **dict(op.module_extra))

    base = getattr(torch.nn, op.module)
    return type(op.module, (base,), {
        "forward": forward, "__module__": __name__, "__qualname__": op.module,
        "__doc__": f"torch.nn.{op.module}, computed by pyops.functional.{op.name}."})


def through_head(head, fn, *args):
    """fn(*args), which reads head's parameters, run as a call of head where head is sharded on
    its own by FSDP2: its hooks gather the parameters around the call (and again for the
    backward). Elsewhere a plain call."""
    if not isinstance(head, FSDPModule):
        return fn(*args)
    head.forward = fn
    try:
        return head(*args)
    finally:
        del head.forward


class LinearCrossEntropyLoss(nn.LinearCrossEntropyLoss):
    """torch.nn.LinearCrossEntropyLoss (its Linear layer and loss settings), computed by
    pyops.functional.linear_cross_entropy: the logits of all positions are never materialized.
    z-loss and a logit softcap are attributes, set after construction (torch's constructor has
    no such arguments): `loss.lse_square_scale = 1e-4`, `loss.softcap = 30.0`."""

    lse_square_scale = 0.0
    softcap = None

    def forward(self, input, target):
        return through_head(self.linear, self._loss, input, target)

    def _loss(self, input, target):
        shape = (self.num_classes, *self.out_features)
        bias = self.linear.bias
        return F.linear_cross_entropy(
            input, self.linear.weight.reshape(*shape, self.linear.in_features), target,
            linear_bias=None if bias is None else bias.reshape(shape), weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options,
            lse_square_scale=self.lse_square_scale, softcap=self.softcap)


TWINS = [_twin(op) for op in OPS if op.module] + [LinearCrossEntropyLoss]
globals().update({cls.__name__: cls for cls in TWINS})


class HingeLoss(nn.Module):
    """The lesson's binary hinge loss (no torch twin): see pyops.functional.hinge_loss."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = margin
        self.reduction = reduction

    def forward(self, input, target):
        return F.hinge_loss(input, target, margin=self.margin, reduction=self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, reduction={self.reduction}"


__all__ = [cls.__name__ for cls in TWINS] + ["HingeLoss"]
