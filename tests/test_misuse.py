"""Every misuse raises torch's kind of exception with a clear message, and never crashes the
process: the whole sweep also runs in a child process, which must exit normally (no signal)."""

import os
import subprocess
import sys

import pytest
import torch

import pyops.functional as PF

ops = torch.ops.pyops


def _x(*shape, dtype=torch.float32):
    return torch.rand(shape, dtype=dtype)


def _t(*values):
    return torch.tensor(values)


# (what, exception type, call). One line per misuse: new ops add theirs here.
MISUSES = [
    # wrong dtypes
    ("complex sigmoid", RuntimeError, lambda: PF.sigmoid(torch.zeros(3, dtype=torch.complex64))),
    ("integer softmax", NotImplementedError, lambda: PF.softmax(torch.arange(4), 0)),
    ("integer logits", NotImplementedError, lambda: PF.cross_entropy(torch.ones(4, 5, dtype=torch.long), _t(0, 1, 2, 3))),
    ("int32 class targets", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3).int())),
    ("long probability targets", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), torch.ones(4, 5, dtype=torch.long))),
    ("backward dtype mismatch", RuntimeError, lambda: ops.sigmoid_backward(_x(3), _x(3, dtype=torch.float64))),
    ("weight dtype", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), weight=_x(5, dtype=torch.float64))),
    ("bce target dtype", RuntimeError, lambda: PF.binary_cross_entropy(_x(3), _x(3, dtype=torch.float64))),
    ("integer mse", NotImplementedError, lambda: PF.mse_loss(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))),
    ("multi_margin int32 target", RuntimeError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2, 3).int())),
    ("relu of bool", RuntimeError, lambda: PF.relu(torch.ones(3, dtype=torch.bool))),
    # mixed devices (meta stands in for a second device on a CPU-only machine)
    ("target on another device", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3).to("meta"))),
    ("grad on another device", RuntimeError, lambda: ops.tanh_backward(_x(3), _x(3).to("meta"))),
    ("mse target on another device", RuntimeError, lambda: ops.mse_loss(_x(3), _x(3).to("meta"), None, 1)),
    # shapes
    ("backward shape", RuntimeError, lambda: ops.relu_backward(_x(3, 4), _x(4, 3))),
    ("softmax backward shape", RuntimeError, lambda: ops.softmax_backward(_x(3, 4), _x(4, 3), 1)),
    ("batch mismatch", ValueError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2))),
    ("spatial target mismatch", RuntimeError, lambda: PF.cross_entropy(_x(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))),
    ("nll batch mismatch", ValueError, lambda: PF.nll_loss(_x(4, 5), _t(0, 1, 2))),
    ("nll op batch mismatch", ValueError, lambda: ops.nll_loss(_x(4, 5), _t(0, 1, 2), None, 1, -100)),
    ("cross_entropy op batch mismatch", ValueError, lambda: ops.cross_entropy(_x(4, 5), _t(0, 1, 2), None, 1, -100, 0.0)),
    ("nll 0-dim input", ValueError, lambda: PF.nll_loss(torch.tensor(1.0), torch.tensor(0))),
    ("mse not broadcastable", RuntimeError, lambda: PF.mse_loss(_x(3, 2), _x(3))),
    ("bce size", ValueError, lambda: PF.binary_cross_entropy(_x(3), _x(3, 1))),
    ("bce with logits size", ValueError, lambda: PF.binary_cross_entropy_with_logits(_x(3), _x(3, 1))),
    ("multi_margin 3-d input", RuntimeError, lambda: PF.multi_margin_loss(_x(2, 3, 4), _t(0, 1))),
    ("multi_margin empty vector", RuntimeError, lambda: PF.multi_margin_loss(_x(0), torch.tensor(0))),
    ("multi_margin no classes", RuntimeError, lambda: PF.multi_margin_loss(_x(3, 0), _t(0, 0, 0))),
    ("multi_margin target size", RuntimeError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2))),
    ("lse of the wrong size", RuntimeError, lambda: ops.cross_entropy_backward(torch.ones(()), _x(4, 5), _t(0, 1, 2, 3), None, 1, -100, 0.0, _x(3))),
    # out-of-range targets
    ("target above range", IndexError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 5, 2))),
    ("negative target", IndexError, lambda: PF.cross_entropy(_x(4, 5), _t(0, -3, 1, 2))),
    ("target beyond range in a column tile", IndexError, lambda: PF.cross_entropy(_x(2, 5, 70), torch.full((2, 70), 7))),
    ("nll target above range", IndexError, lambda: PF.nll_loss(_x(4, 5), _t(0, 1, 9, 2))),
    ("nll backward target above range", IndexError, lambda: ops.nll_loss_backward(torch.ones(()), _x(4, 5), _t(9, 0, 0, 0), None, 1, -100)),
    ("multi_margin target above range", RuntimeError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 5, 2))),
    ("bce input outside [0, 1]", RuntimeError, lambda: PF.binary_cross_entropy(_t(0.5, 1.5), _t(0.0, 1.0))),
    # arguments
    ("bad reduction", ValueError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), reduction="avg")),
    ("bad reduction nll", ValueError, lambda: PF.nll_loss(_x(4, 5), _t(0, 1, 2, 3), reduction="all")),
    ("bad reduction mse", ValueError, lambda: PF.mse_loss(_x(3), _x(3), reduction="avg")),
    ("bad reduction bce", ValueError, lambda: PF.binary_cross_entropy(_x(3), _x(3), reduction="")),
    ("bad reduction bce with logits", ValueError, lambda: PF.binary_cross_entropy_with_logits(_x(3), _x(3), reduction="x")),
    ("bad reduction hinge", ValueError, lambda: PF.hinge_loss(_x(3), _x(3), reduction="avg")),
    ("bad reduction multi_margin", ValueError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2, 3), reduction="avg")),
    ("bad reduction code", RuntimeError, lambda: ops.mse_loss(_x(3), _x(3), None, 7)),
    ("grad_in_forward with reduction none", ValueError, lambda: PF.cross_entropy(_x(4, 5).requires_grad_(), _t(0, 1, 2, 3), reduction="none", grad_in_forward=True)),
    ("grad_in_forward op with reduction none", RuntimeError, lambda: ops.cross_entropy_grad_in_forward(_x(4, 5), _t(0, 1, 2, 3), None, 0, -100, 0.0, _x(4, 5))),
    ("grad_in_forward buffer shape", RuntimeError, lambda: ops.cross_entropy_grad_in_forward(_x(4, 5), _t(0, 1, 2, 3), None, 1, -100, 0.0, _x(5, 4))),
    ("scale_unless_one_ of two scales", RuntimeError, lambda: ops.scale_unless_one_(_x(4, 5), _x(2))),
    ("label_smoothing above 1", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), label_smoothing=1.5)),
    ("label_smoothing below 0", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), label_smoothing=-0.1)),
    ("label_smoothing in the op", RuntimeError, lambda: ops.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), None, 1, -100, 2.0)),
    ("ignore_index with probabilities", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _x(4, 5), ignore_index=1)),
    ("multi_margin p", ValueError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2, 3), p=3)),
    # weights
    ("weight size", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), weight=_x(3))),
    ("nll weight size", RuntimeError, lambda: PF.nll_loss(_x(4, 5), _t(0, 1, 2, 3), weight=_x(6))),
    ("multi_margin weight size", RuntimeError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2, 3), weight=_x(3))),
    ("multi_margin weight dims", ValueError, lambda: PF.multi_margin_loss(_x(4, 5), _t(0, 1, 2, 3), weight=_x(1, 5))),
    ("bce weight not broadcastable", RuntimeError, lambda: PF.binary_cross_entropy(_x(3, 2), _x(3, 2), weight=_x(3))),
    ("mse weight size", ValueError, lambda: PF.mse_loss(_x(3, 2), _x(3, 2), weight=_x(2))),
    ("weight requiring grad", RuntimeError, lambda: PF.cross_entropy(_x(4, 5), _t(0, 1, 2, 3), weight=_x(5).requires_grad_())),
    # dims
    ("softmax dim too large", IndexError, lambda: PF.softmax(_x(3, 4), 2)),
    ("softmax dim too small", IndexError, lambda: PF.log_softmax(_x(3, 4), -3)),
    ("softmax backward dim", IndexError, lambda: ops.softmax_backward(_x(3, 4), _x(3, 4), 5)),
]


@pytest.mark.parametrize("what,exc,call", MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse_raises(what, exc, call):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).strip(), f"{what}: the error has no message"


def run_all():
    """The sweep in this process; prints one line per misuse before running it."""
    for what, exc, call in MISUSES:
        print(what, flush=True)
        try:
            call()
        except exc:
            continue
        raise SystemExit(f"{what}: did not raise {exc.__name__}")


def test_no_misuse_crashes_the_process():
    tests = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {tests!r}); import test_misuse; test_misuse.run_all()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1:] or ["<none>"]
    assert proc.returncode == 0, f"exit {proc.returncode} after {last[0]!r}: {proc.stderr[-2000:]}"
    assert len(proc.stdout.splitlines()) == len(MISUSES)
