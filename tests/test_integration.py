"""pyops inside existing torch code: convert, patch, autocast, export, training."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF

import pyops
import pyops.functional as PF
from helpers import assert_close, device_params, make_tensor

TORCH_MODULES = [
    torch.nn.Sigmoid(), torch.nn.Tanh(), torch.nn.ReLU(inplace=True), torch.nn.Softmax(dim=0),
    torch.nn.LogSoftmax(dim=1), torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=3),
    torch.nn.NLLLoss(reduction="sum"), torch.nn.MSELoss(reduction="none"),
    torch.nn.BCELoss(weight=torch.rand(5)), torch.nn.BCEWithLogitsLoss(pos_weight=torch.rand(5)),
    torch.nn.MultiMarginLoss(p=2, margin=0.5, weight=torch.rand(5)), torch.nn.SiLU(inplace=True),
    torch.nn.GELU(approximate="tanh"),
]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                        torch.nn.Tanh(), torch.nn.GELU(), torch.nn.ELU(),
                                        torch.nn.Linear(8, 5))
        self.head = torch.nn.LogSoftmax(dim=1)
        self.loss = torch.nn.CrossEntropyLoss()

    def forward(self, x, t):
        return self.loss(self.body(x), t) + self.head(self.body(x)).mean()


def test_convert_replaces_every_known_module_with_the_same_state():
    for module in TORCH_MODULES:
        converted, replaced = pyops.convert(module, report=True)
        assert type(converted) is pyops._integration.MODULES[type(module)]
        assert replaced == [("", type(module).__name__)]
        assert repr(converted) == repr(module)
        assert converted.state_dict().keys() == module.state_dict().keys()
        for key, value in module.state_dict().items():
            assert torch.equal(converted.state_dict()[key], value)
        assert type(module).__module__.startswith("torch")  # the original is untouched


def test_convert_a_model_and_train_identically():
    torch.manual_seed(0)
    model = Net()
    converted, replaced = pyops.convert(model, report=True)
    assert [name for name, _ in replaced] == ["body.1", "body.3", "body.4", "head", "loss"]
    assert type(converted.body[5]) is torch.nn.ELU  # pyops has no ELU: left alone
    x, t = torch.randn(16, 5), torch.randint(0, 5, (16,))
    loss_torch, loss_ours = model(x, t), converted(x, t)
    assert_close(loss_ours, loss_torch, atol=1e-6)  # pyops' GELU rounds differently (erfc)
    loss_torch.backward()
    loss_ours.backward()
    for (name, p), q in zip(model.named_parameters(), converted.parameters()):
        assert_close(q.grad, p.grad, atol=1e-6)


def test_convert_inplace_returns_the_same_object():
    model = torch.nn.Sequential(torch.nn.ReLU())
    assert pyops.convert(model, inplace=True) is model
    assert type(model[0]) is pyops.nn.ReLU


def test_patch_routes_and_restores():
    originals = {name: getattr(torch, name) for name in ("sigmoid", "tanh", "relu", "softmax", "log_softmax")}
    f_originals = {name: getattr(TF, name) for name in originals}
    x = make_tensor((3, 4), torch.float32, "cpu")
    with pyops.patch():
        assert torch.sigmoid.__wrapped__ is PF.sigmoid and TF.relu.__wrapped__ is PF.relu
        assert_close(torch.softmax(x, 1), originals["softmax"](x, 1))
        assert_close(torch.log_softmax(x, 0, dtype=torch.float64), originals["log_softmax"](x, 0, dtype=torch.float64))
        assert_close(TF.softmax(x, dim=1), f_originals["softmax"](x, dim=1))
        with pyops.patch():  # nested
            assert torch.tanh.__wrapped__ is PF.tanh
        assert torch.tanh.__wrapped__ is PF.tanh
    for name, fn in originals.items():
        assert getattr(torch, name) is fn and getattr(TF, name) is f_originals[name]


def test_patch_leaves_to_torch_what_pyops_has_no_kernel_for():
    # out= tensors, complex and non-tensor inputs: patched code runs (or fails) as before
    x = make_tensor((3, 4), torch.float32, "cpu")
    z = torch.complex(x, x.flip(0))
    calls = [lambda: torch.sigmoid(x, out=torch.empty(3, 4)),
             lambda: torch.softmax(x, 1, out=torch.empty(3, 4)),
             lambda: torch.tanh(z), lambda: TF.sigmoid(z)]
    bad = [lambda: torch.sigmoid(1.0), lambda: torch.relu(x, out=x), lambda: TF.relu(z)]
    values = [call() for call in calls]
    raised = []
    for call in bad:
        with pytest.raises(Exception) as theirs:
            call()
        raised.append(type(theirs.value))
    with pyops.patch():
        for call, value in zip(calls, values):
            torch.testing.assert_close(call(), value)
        for call, exc in zip(bad, raised):
            with pytest.raises(exc):
                call()


FRESH_PATCH_AND_COMPILE = """
import torch, torch.nn.functional as F, pyops
from torch._dynamo.backends.debugging import aot_eager
targets = []
def recording(gm, inputs):
    targets.extend(str(node.target) for node in gm.graph.nodes)
    return aot_eager(gm, inputs)
x, t = torch.randn(4, 5, requires_grad=True), torch.tensor([0, 1, 2, 3])
def model(x):
    h = F.gelu(torch.sigmoid(x) * 2) + F.silu(x)
    return F.cross_entropy(torch.softmax(h, 1), t, label_smoothing=0.1) + F.mse_loss(h, x)
eager = model(x)
original = torch.sigmoid
with pyops.patch():
    value = torch.compile(model, fullgraph=True, backend=recording)(x)
assert torch.sigmoid is original
for op in ("sigmoid", "gelu", "silu", "softmax", "cross_entropy", "mse_loss"):
    assert f"pyops.{op}" in targets, (op, targets)
torch.testing.assert_close(value, eager)
torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(eager, x)[0])
print("ok")
"""


def test_patch_works_under_compile_in_a_fresh_process():
    # dynamo lists torch's functions by name once per process: patch() must not be the first
    # to make that list (it would hold pyops' functions under torch's names).
    proc = subprocess.run([sys.executable, "-c", FRESH_PATCH_AND_COMPILE], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_patch_restores_after_an_exception_and_as_a_decorator():
    original = torch.relu

    @pyops.patch()
    def inside():
        assert torch.relu.__wrapped__ is PF.relu
        raise KeyError("boom")

    with pytest.raises(KeyError):
        inside()
    assert torch.relu is original
    with pytest.raises(ValueError):
        with pyops.patch():
            raise ValueError
    assert torch.relu is original


def test_autocast_cpu_follows_torch():
    x = make_tensor((4, 5), torch.float32, "cpu")
    t = torch.randint(0, 5, (4,))
    y = make_tensor((4, 5), torch.float32, "cpu", low=0, high=1, seed=1)
    calls = {
        "sigmoid": (PF.sigmoid, torch.sigmoid, lambda a: (a,)),
        "softmax": (PF.softmax, TF.softmax, lambda a: (a, 1)),
        "log_softmax": (PF.log_softmax, TF.log_softmax, lambda a: (a, 1)),
        "cross_entropy": (PF.cross_entropy, TF.cross_entropy, lambda a: (a, t)),
        "nll_loss": (PF.nll_loss, TF.nll_loss, lambda a: (a, t)),
        "mse_loss": (PF.mse_loss, TF.mse_loss, lambda a: (a, y.to(a.dtype))),
        "bce_with_logits": (PF.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits,
                            lambda a: (a, y.to(a.dtype))),
        "multi_margin_loss": (PF.multi_margin_loss, TF.multi_margin_loss, lambda a: (a, t)),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(x, torch.eye(5))  # bfloat16 under autocast
        assert h.dtype == torch.bfloat16
        for name, (ours, theirs, args) in calls.items():
            if name == "multi_margin_loss":  # torch has no bfloat16 kernel: compare dtypes only
                assert ours(*args(h)).dtype == torch.float32
                continue
            o, th = ours(*args(h)), theirs(*args(h))
            assert o.dtype == th.dtype, name
            assert_close(o, th, atol=1e-2, rtol=2e-2)


def test_export_runs_like_eager():
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 4)

        def forward(self, x, t):
            h = PF.relu(self.linear(x))
            return PF.log_softmax(PF.tanh(h), 1), PF.cross_entropy(h, t, label_smoothing=0.1)

    model = Small()
    x, t = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, -100])
    program = torch.export.export(model, (x, t))
    assert any("pyops" in str(node.target) for node in program.graph.nodes)
    for got, want in zip(program.module()(x, t), model(x, t)):
        assert_close(got, want)


@device_params
def test_training_with_pyops_matches_torch(device):
    """A few SGD steps of the same model with pyops ops and with torch ops from the same seed."""
    def run(use_pyops):
        torch.manual_seed(0)
        model = Net().to(device)
        if use_pyops:
            model = pyops.convert(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, t = torch.randn(32, 5, device=device), torch.randint(0, 5, (32,), device=device)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = model(x, t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ours, theirs = run(True), run(False)
    assert ours == pytest.approx(theirs, rel=1e-5)
