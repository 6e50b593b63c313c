"""Loads the compiled parts: the schemas in pyops._C, then the CPU kernel library built for the
best instruction set that both this CPU and torch's own dispatch support."""

import ctypes
import importlib.util
import os

import torch

# Most capable first; names match torch.backends.cpu.get_cpu_capability().
_ISA_ORDER = ("avx512", "avx2", "default")


def _check_torch():
    """The compiled parts call into libtorch by C++ symbols that change between releases: a
    mismatch is said here, before loading them fails with an undefined symbol."""
    try:
        from ._built_for import TORCH_VERSION, TORCH_CUDA
    except ImportError:  # not built by setup.py; loading _C says what is missing
        return
    running = torch.__version__.split("+")[0]
    problem = None
    if running != TORCH_VERSION.split("+")[0]:
        problem = (f"pyops was built for torch {TORCH_VERSION}, but torch {torch.__version__} is "
                   "running")
    elif TORCH_CUDA and torch.version.cuda is None:
        problem = (f"pyops was built with CUDA kernels for torch {TORCH_VERSION} (CUDA "
                   f"{TORCH_CUDA}), but the running torch {torch.__version__} has no CUDA")
    if problem:
        raise ImportError(f"{problem}. Rebuild pyops for this torch, from its source folder: "
                          "pip install --no-build-isolation -e .  (or scripts/setup-env)")


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


class CpuLibrary:
    """The loaded CPU kernel library: its instruction set, and what csrc/cpu/threads.cpp tells."""

    def __init__(self, isa, path):
        self.isa = isa
        self._lib = ctypes.CDLL(path)  # the handle torch.ops.load_library opened
        self._lib.pyops_cpu_trace_threads.argtypes = [ctypes.c_int]
        self._lib.pyops_cpu_trace_threads.restype = ctypes.c_uint64
        self.parallel = bool(self._lib.pyops_cpu_parallel())

    def threads_used(self, fn):
        """fn()'s result and the set of intra-op thread numbers that ran pyops CPU work in it."""
        self._lib.pyops_cpu_trace_threads(1)
        try:
            result = fn()
        finally:
            seen = self._lib.pyops_cpu_trace_threads(0)
        return result, {i for i in range(64) if seen >> i & 1}


def load():
    """Returns (the _C module, the CpuLibrary loaded)."""
    _check_torch()
    from . import _C

    isa = _choose_isa(_built_isas())
    path = importlib.util.find_spec(f"pyops._cpu_{isa}").origin
    torch.ops.load_library(path)
    return _C, CpuLibrary(isa, path)
