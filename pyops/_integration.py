"""Using pyops inside existing torch code: module conversion, patching, autocast rules."""

import contextlib
import copy
import functools
import logging

import torch

from . import nn as pnn
from .table import OPS

log = logging.getLogger("pyops")

# torch module class -> pyops class (each a subclass of the torch class with the same state).
MODULES = {cls.__mro__[1]: cls for cls in pnn.TWINS}


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


def _or_torch(original, replacement):
    """replacement, except for the calls pyops has no kernel for, which torch's original takes
    (so that patched code runs as before): an out= tensor, a complex or non-tensor input."""
    @functools.wraps(replacement)
    def call(input, *args, out=None, **kwargs):
        if out is not None:
            return original(input, *args, out=out, **kwargs)
        if not isinstance(input, torch.Tensor) or input.is_complex():
            return original(input, *args, **kwargs)
        return replacement(input, *args, **kwargs)
    return call


# (namespace, name, replacement) for every place patch() routes to pyops: the op table's.
PATCHES = [(entry[0], entry[1], _or_torch(getattr(entry[0], entry[1]),
                                          entry[2] if len(entry) > 2 else op.function))
           for op in OPS for entry in op.patches]


@functools.cache
def _settle_torch_caches():
    """torch.compile and torch.overrides list torch's functions once per process, by looking
    them up by name, and keep the lists. Built while patched, they would hold pyops' functions
    under torch's names (dynamo then rejects them, or worse keeps them after the patch), so they
    are built before the first patch (once: the lists are kept)."""
    import torch._dynamo.trace_rules

    torch._dynamo.trace_rules.get_torch_obj_rule_map()
    torch.overrides.get_ignored_functions()
    torch.overrides.get_testing_overrides()
    torch.overrides.get_overridable_functions()


class patch(contextlib.ContextDecorator):
    """Routes the torch and torch.nn.functional functions pyops has (the op table's patches:
    activations, softmax and the losses) to pyops within its scope (a with-block or a decorated
    function). What was there before is restored on exit, also after an exception and when
    nested. Works under torch.compile, fullgraph included."""

    def __init__(self):
        self._saved = []

    def __enter__(self):
        _settle_torch_caches()
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
LOSS_OPS = [op.name for op in OPS if op.family == "loss"]
SOFTMAX_OPS = [op.name for op in OPS if op.family == "softmax"]
FLOAT32_UNDER_AUTOCAST = {"cpu": LOSS_OPS, "cuda": SOFTMAX_OPS + LOSS_OPS}

for _device, _names in FLOAT32_UNDER_AUTOCAST.items():
    for _name in _names:
        torch.library.register_autocast(f"pyops::{_name}", _device, torch.float32)
