"""Loads the compiled parts: the schemas in pyops._C, then the CPU kernel library built for the
best instruction set that both this CPU and torch's own dispatch support."""

import importlib.util
import os

import torch

# Most capable first; names match torch.backends.cpu.get_cpu_capability().
_ISA_ORDER = ("avx512", "avx2", "default")


def _built_isas():
    return [isa for isa in _ISA_ORDER if importlib.util.find_spec(f"pyops._cpu_{isa}")]


def _choose_isa(built):
    forced = os.environ.get("PYOPS_CPU_ISA", "").lower()
    if forced:
        if forced not in built:
            raise RuntimeError(
                f"PYOPS_CPU_ISA={forced!r} is not among the built CPU kernels {built}")
        return forced
    supported = torch.backends.cpu.get_cpu_capability().lower()
    usable = _ISA_ORDER[_ISA_ORDER.index(supported):] if supported in _ISA_ORDER else ("default",)
    for isa in usable:
        if isa in built:
            return isa
    raise RuntimeError(f"pyops: no CPU kernel library usable on this CPU (built: {built})")


def load():
    """Returns (the _C module, the chosen CPU instruction set)."""
    from . import _C

    isa = _choose_isa(_built_isas())
    torch.ops.load_library(importlib.util.find_spec(f"pyops._cpu_{isa}").origin)
    return _C, isa
