"""pyops: activations, softmax and losses as fused torch.library operators (namespace pyops)."""

import torch

from . import _loader
from ._version import __version__

_C, _cpu = _loader.load()

from . import _autograd  # noqa: E402, F401  (registers fake kernels and autograd)
from . import functional, nn  # noqa: E402
from ._integration import convert, patch  # noqa: E402


def build_info():
    """What this build of pyops is and runs with."""
    return {
        "pyops_version": __version__,
        "torch_version_built": _C.torch_version,
        "torch_version_running": torch.__version__,
        "cpu_isa": _cpu.isa,
        "cpu_parallel": _cpu.parallel,
        "cuda": bool(_C.with_cuda),
        "cuda_archs": [a for a in _C.cuda_archs.split("/") if a],
        "num_threads": torch.get_num_threads(),
    }


__all__ = ["functional", "nn", "build_info", "convert", "patch", "__version__"]
