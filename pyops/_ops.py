"""The pyops operators as the Python wrappers call them: torch.ops.pyops while torch.compile
traces (dynamo knows OpOverloads, not our C functions), otherwise each default overload through
pyops._C.direct, which gives torch.ops' results and errors without its generic argument parsing
(but torch.nn.functional's TypeError for an argument of the wrong type) and passes anything it
does not take (keywords, tensor subclasses, torch-function modes) to the OpOverload as it came."""

import torch

from . import _C


class _Direct:
    def __getattr__(self, name):
        fn = _C.direct(f"pyops::{name}", getattr(torch.ops.pyops, name).default)
        setattr(self, name, fn)
        return fn


_DIRECT = _Direct()


def ops():
    return torch.ops.pyops if torch.compiler.is_compiling() else _DIRECT
