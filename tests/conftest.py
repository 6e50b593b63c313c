import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _skip_cuda_without_kernels(request):
    """A test module lists the pyops ops it exercises in PYOPS_OPS; its CUDA runs are skipped,
    with the reason, while any of them has no CUDA kernel yet."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != "cuda":
        return
    missing = [op for op in getattr(request.module, "PYOPS_OPS", [])
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"pyops::{op}", "CUDA")]
    if missing:
        pytest.skip(f"no CUDA kernel yet for {', '.join(missing)}")
