"""Using pyops inside existing torch code: module conversion, patching, autocast rules."""

import contextlib
import copy
import logging

import torch
import torch.nn.functional as TF

from . import functional as PF
from . import nn as pnn

log = logging.getLogger("pyops")

# torch module class -> pyops class (each a subclass of the torch class with the same state).
MODULES = {getattr(torch.nn, cls.__name__): cls for cls in (
    pnn.Sigmoid, pnn.Tanh, pnn.ReLU, pnn.Softmax, pnn.LogSoftmax, pnn.CrossEntropyLoss,
    pnn.NLLLoss, pnn.MSELoss, pnn.BCELoss, pnn.BCEWithLogitsLoss, pnn.MultiMarginLoss)}


def convert(model, inplace=False, report=False):
    """Replaces every torch.nn module pyops has (exactly that class, not a subclass of it) with
    the pyops module of the same arguments and state; other modules are left alone.

    Returns the model (a deep copy unless inplace), or (model, replaced) with report=True, where
    replaced lists (qualified name, torch class name). The replacements are also logged.
    """
    if not inplace:
        model = copy.deepcopy(model)
    replaced = []
    for name, module in model.named_modules():
        target = MODULES.get(type(module))
        if target is not None:
            module.__class__ = target
            replaced.append((name, type(module).__mro__[1].__name__))
    log.info("pyops.convert replaced %d module(s): %s", len(replaced),
             ", ".join(f"{n or '<root>'} ({c})" for n, c in replaced) or "none")
    return (model, replaced) if report else model


# torch.softmax and torch.log_softmax take (input, dim, dtype=None), not F's signature.
def _torch_softmax(input, dim, dtype=None):
    return PF.softmax(input, dim, dtype=dtype)


def _torch_log_softmax(input, dim, dtype=None):
    return PF.log_softmax(input, dim, dtype=dtype)


PATCHES = [
    (torch, "sigmoid", PF.sigmoid), (torch, "tanh", PF.tanh), (torch, "relu", PF.relu),
    (torch, "softmax", _torch_softmax), (torch, "log_softmax", _torch_log_softmax),
    (TF, "sigmoid", PF.sigmoid), (TF, "tanh", PF.tanh), (TF, "relu", PF.relu),
    (TF, "softmax", PF.softmax), (TF, "log_softmax", PF.log_softmax),
]


class patch(contextlib.ContextDecorator):
    """Routes torch.sigmoid/tanh/relu/softmax/log_softmax and torch.nn.functional's functions of
    the same names to pyops within its scope (a with-block or a decorated function). What was
    there before is restored on exit, also after an exception and when nested."""

    def __init__(self):
        self._saved = []

    def __enter__(self):
        self._saved.append([(owner, name, getattr(owner, name)) for owner, name, _ in PATCHES])
        for owner, name, replacement in PATCHES:
            setattr(owner, name, replacement)
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._saved.pop():
            setattr(owner, name, original)
        return False


# Autocast: the ops torch runs in float32 under autocast, pyops runs in float32 too. On CPU those
# are the losses; on CUDA softmax and log_softmax as well. Activations keep the input's dtype.
LOSS_OPS = ["cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy",
            "binary_cross_entropy_with_logits", "hinge_loss", "multi_margin_loss"]
FLOAT32_UNDER_AUTOCAST = {"cpu": LOSS_OPS, "cuda": ["softmax", "log_softmax"] + LOSS_OPS}

for _device, _names in FLOAT32_UNDER_AUTOCAST.items():
    for _name in _names:
        torch.library.register_autocast(f"pyops::{_name}", _device, torch.float32)
