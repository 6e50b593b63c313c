"""linear_cross_entropy beyond the op table's generic tests: every argument of torch's
F.linear_cross_entropy against torch's reference (linear, then cross_entropy) over the dtypes and
chunkings, the module twin, what its autograd refuses, and torch's errors."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF

import pyops
import pyops.functional as PF
from helpers import FLOAT_DTYPES, assert_results_match, device_params

Options = torch.nn.LinearCrossEntropyOptions


def _problem(n, h, c, dtype, device, soft=False, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=gen, dtype=torch.float64)
    w = torch.randn(c, h, generator=gen, dtype=torch.float64) / h ** 0.5
    b = torch.randn(c, generator=gen, dtype=torch.float64) if bias else None
    if soft:
        t = torch.softmax(torch.randn(n, c, generator=gen, dtype=torch.float64), 1)
    else:
        t = torch.randint(0, c, (n,), generator=gen)
        t[::4] = -100
    def cast(v):
        return None if v is None else v.to(device, dtype if v.is_floating_point() else None)
    return cast(x), cast(w), cast(b), cast(t)


def _run(fn, x, w, b, t, kwargs, dtype=None):
    """The loss and the gradients of x, w (and b) for a fixed upstream gradient."""
    leaves = [v.detach().clone().requires_grad_() for v in (x, w, b) if v is not None]
    loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2] if b is not None else None, **kwargs)
    gen = torch.Generator().manual_seed(1)
    up = (torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype or loss.dtype)
    return [loss.detach(), *torch.autograd.grad(loss, leaves, up.to(loss))]


VARIANTS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.2},
    {"reduction": "none", "label_smoothing": 0.3, "ignore_index": 2},
    {"weight": "classes"},
    {"weight": "classes", "label_smoothing": 0.1, "reduction": "sum"},
]


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kwargs", VARIANTS, ids=str)
@pytest.mark.parametrize("chunk", [None, 1, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(device, dtype, kwargs, chunk, bias):
    x, w, b, t = _problem(13, 24, 37, dtype, device, bias=bias)
    kwargs = dict(kwargs)
    if "ignore_index" in kwargs:
        t = t.where(t != -100, kwargs["ignore_index"])
    if kwargs.get("weight") == "classes":
        gen = torch.Generator().manual_seed(2)
        kwargs["weight"] = torch.rand(37, generator=gen).to(device, dtype) + 0.5
    ours = _run(PF.linear_cross_entropy, x, w, b, t,
                {**kwargs, "options": Options(batch_chunk_size=chunk) if chunk else None}, dtype)
    theirs = _run(TF.linear_cross_entropy, x, w, b, t, kwargs, dtype)
    wide = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    exact = _run(TF.linear_cross_entropy, x.double(), w.double(), None if b is None else b.double(),
                 t, wide, dtype)
    assert_results_match(ours, theirs, exact, dtype, slack_ulps=4)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets(device, dtype, reduction):
    x, w, b, q = _problem(9, 16, 11, dtype, device, soft=True, bias=True)
    kwargs = {"reduction": reduction, "label_smoothing": 0.1,
              "options": Options(batch_chunk_size=4)}
    ours = _run(PF.linear_cross_entropy, x, w, b, q, kwargs, dtype)
    kwargs.pop("options")
    theirs = _run(TF.linear_cross_entropy, x, w, b, q, kwargs, dtype)
    exact = _run(TF.linear_cross_entropy, x.double(), w.double(), b.double(), q.double(), kwargs,
                 dtype)
    assert_results_match(ours, theirs, exact, dtype, slack_ulps=4)


def test_probability_target_gradient():
    x, w, _, q = _problem(6, 8, 5, torch.float64, "cpu", soft=True)
    q.requires_grad_()
    fn = lambda q: PF.linear_cross_entropy(x, w, q, label_smoothing=0.2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q,))
    (ours,) = torch.autograd.grad(fn(q), q)
    (theirs,) = torch.autograd.grad(TF.linear_cross_entropy(x, w, q, label_smoothing=0.2), q)
    torch.testing.assert_close(ours, theirs)
    classes = torch.rand(5, dtype=torch.float64, requires_grad=True)  # torch differentiates those
    ours, theirs = (torch.autograd.grad(f(x, w, q, weight=classes), (q, classes))
                    for f in (PF.linear_cross_entropy, TF.linear_cross_entropy))
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_unbatched_empty_and_strided(reduction):
    x, w, b, t = _problem(7, 12, 9, torch.float32, "cpu", bias=True)
    cases = [
        (x[0], w, b, t[1]),                                   # unbatched, class index
        (x[:0], w, b, t[:0]),                                 # no positions
        (x.t().contiguous().t(), w.t().contiguous().t(), b, t),  # column-major
        (x[:, ::2], w[:, ::2], b, t),                         # strided
        (x[:1].expand(7, 12), w, b, t),                       # expanded
    ]
    for case in cases:
        ours = _run(PF.linear_cross_entropy, *case, {"reduction": reduction})
        theirs = _run(TF.linear_cross_entropy, *case, {"reduction": reduction})
        for o, th in zip(ours, theirs):
            torch.testing.assert_close(o, th, equal_nan=True)


def test_multidimensional_weight_follows_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (4, 3), generator=gen)
    ours = PF.linear_cross_entropy(x, w, t, label_smoothing=0.1)
    theirs = TF.linear_cross_entropy(x, w, t, label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, (x, w)),
                               torch.autograd.grad(theirs, (x, w)))


def test_retained_graph_gives_the_same_gradients_and_create_graph_is_refused():
    x, w, _, t = _problem(5, 4, 6, torch.float64, "cpu")
    x.requires_grad_()
    for reduction in ("mean", "sum", "none"):
        loss = PF.linear_cross_entropy(x, w, t, reduction=reduction).sum()
        first = torch.autograd.grad(loss * 3, x, retain_graph=True)[0]  # scaled in place
        assert torch.equal(torch.autograd.grad(loss * 3, x)[0], first)  # computed again
    for reduction in ("mean", "none"):
        loss = PF.linear_cross_entropy(x, w, t, reduction=reduction)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(loss.sum(), x, create_graph=True)


def test_upstream_gradient_scales_reduced_gradients():
    x, w, _, t = _problem(8, 5, 7, torch.float64, "cpu")
    for reduction in ("mean", "sum"):
        ours = _run(PF.linear_cross_entropy, x, w, None, t, {"reduction": reduction})
        theirs = _run(TF.linear_cross_entropy, x, w, None, t, {"reduction": reduction})
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("call, error", [
    (lambda F, x, w, t: F.linear_cross_entropy(x[None], w, t), RuntimeError),      # 3-d input
    (lambda F, x, w, t: F.linear_cross_entropy(x, w[0], t), RuntimeError),         # 1-d weight
    (lambda F, x, w, t: F.linear_cross_entropy(x, w[:, 1:], t), RuntimeError),     # in_features
    (lambda F, x, w, t: F.linear_cross_entropy(x, w, t, linear_bias=w[0]), RuntimeError),
    (lambda F, x, w, t: F.linear_cross_entropy(x, w, t[1:]), ValueError),          # batch
    (lambda F, x, w, t: F.linear_cross_entropy(x, w, t, reduction="avg"), ValueError),
    (lambda F, x, w, t: F.linear_cross_entropy(x, w, t.clamp(min=0) + 100),
     (RuntimeError, IndexError)),  # a target out of range
    (lambda F, x, w, t: F.linear_cross_entropy(x, w.float(), t), RuntimeError),   # dtypes
    (lambda F, x, w, t: F.linear_cross_entropy(x.bfloat16(), w.bfloat16(), t, weight=w[:, 0]),
     RuntimeError),  # class weight's dtype, also where half inputs compute in float32
    (lambda F, x, w, t: F.linear_cross_entropy(
        x, w, torch.softmax(x @ w.t(), 1), ignore_index=0), RuntimeError),
])
def test_errors_follow_torch(call, error):
    x, w, _, t = _problem(5, 4, 6, torch.float64, "cpu")
    with pytest.raises(error):
        call(TF, x, w, t)
    with pytest.raises(error):
        call(PF, x, w, t)


@pytest.mark.parametrize("bias", [False, True])
def test_module_twin(bias):
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(12, 9, bias=bias, label_smoothing=0.1,
                                             dtype=torch.float64)
    ours = pyops.convert(theirs)
    assert type(ours) is pyops.nn.LinearCrossEntropyLoss and repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x, _, _, t = _problem(7, 12, 9, torch.float64, "cpu")
    expected = theirs(x, t)
    expected.backward()
    got = ours(x, t)
    torch.testing.assert_close(got, expected)
    grads = {n: p.grad.clone() for n, p in theirs.named_parameters()}
    for p in ours.parameters():
        p.grad = None
    got.backward()
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])


def test_autocast_runs_the_matmul_low_and_the_loss_in_float32():
    x, w, _, t = _problem(16, 32, 50, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = PF.linear_cross_entropy(x, w, t)
        theirs = TF.linear_cross_entropy(x, w, t)
    assert ours.dtype == theirs.dtype == torch.float32
    exact = TF.linear_cross_entropy(x.bfloat16().double(), w.bfloat16().double(), t)
    eps = torch.finfo(torch.bfloat16).eps
    assert abs(ours.double() - exact) <= abs(theirs.double() - exact) + 4 * eps * exact


@device_params
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_autocast_loss_keeps_float32_precision(device, reduction, soft):
    # torch's loss under autocast is float32 from low-precision logits, not a rounded low value
    # (a 'sum' near 1300 would be off by up to 4 in bfloat16)
    x, w, _, t = _problem(64, 32, 1000, torch.float32, device)
    if soft:
        t = torch.randn(64, 1000).softmax(-1).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        ours = PF.linear_cross_entropy(x, w, t, reduction=reduction)
        theirs = TF.linear_cross_entropy(x, w, t, reduction=reduction)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=4e-3 if reduction == "none" else 4e-4, atol=0)
    assert (ours != ours.bfloat16().float()).any()  # not rounded on the way
    x, w = x.bfloat16(), w.bfloat16()  # outside autocast, torch's dtype: bfloat16, or promoted
    plain = PF.linear_cross_entropy(x, w, t, reduction=reduction)
    assert plain.dtype == TF.linear_cross_entropy(x, w, t, reduction=reduction).dtype


def test_autocast_leaves_float64_alone():
    x, w, _, t = _problem(8, 4, 10, torch.float64, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = PF.linear_cross_entropy(x, w, t)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, TF.linear_cross_entropy(x, w, t), rtol=1e-12, atol=0)


@device_params
def test_autocast_keeps_float32_class_weights(device):
    # autocast's cross_entropy takes float32 weights: 1 + 3/1024 is 1 in bfloat16
    x, w, _, t = _problem(64, 32, 1000, torch.float32, device)
    weight = torch.full((1000,), 1 + 3 / 1024, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        weighted = PF.linear_cross_entropy(x, w, t, weight=weight, reduction="none")
        plain = PF.linear_cross_entropy(x, w, t, reduction="none")
    torch.testing.assert_close(weighted, plain * weight[0], rtol=1e-6, atol=0)
    with pytest.raises(RuntimeError, match="dtype"):  # outside autocast, torch's error
        PF.linear_cross_entropy(x.bfloat16(), w.bfloat16(), t, weight=weight)


@device_params
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_autocast_reductions_use_the_float32_weights_and_probabilities(device, soft):
    # 'mean' and 'sum', and their gradients, from the weights and probabilities that 'none' uses
    # (float32, as autocast's cross_entropy takes them), not from copies rounded to bfloat16
    x, w, _, t = _problem(64, 32, 1000, torch.float32, device, soft=soft)
    x.requires_grad_()
    weight = (1 + torch.randint(1, 8, (1000,)) / 1024).to(device)  # each rounded away in bfloat16
    per_position = (torch.ones(64, device=device) if soft
                    else torch.where(t >= 0, weight[t.clamp(min=0)], 0))
    with torch.autocast(device, dtype=torch.bfloat16):
        losses = {r: PF.linear_cross_entropy(x, w, t, weight=weight, reduction=r)
                  for r in ("none", "mean", "sum")}
    grads = {r: torch.autograd.grad(loss.sum(), x)[0] for r, loss in losses.items()}
    total = losses["none"].sum()
    torch.testing.assert_close(losses["sum"], total, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["mean"], total / per_position.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(grads["sum"], grads["none"])
    torch.testing.assert_close(grads["mean"] * per_position.sum(), grads["none"], rtol=1e-2,
                               atol=1e-3 * grads["none"].abs().max())


def test_export():
    x, w, b, t = _problem(6, 8, 10, torch.float32, "cpu", bias=True)

    class Head(torch.nn.Module):
        def forward(self, x, w, b, t):
            return PF.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1)

    program = torch.export.export(Head(), (x, w, b, t))
    assert any("pyops.linear_cross_entropy" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(program.module()(x, w, b, t),
                               TF.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1))


_ASSUMED = "PYOPS_ASSUME_NATIVE_HALF_MATMUL"


@pytest.mark.skipif(_ASSUMED in os.environ, reason="this run takes that path already")
def test_half_types_on_the_path_of_cpus_with_half_matmuls():
    """A CPU without bfloat16/float16 matmul instructions computes half-type heads in float32.
    This file and the half-type transformers models again, on the half-type path that CUDA and
    the CPUs with those instructions take (here emulated: slow, but the shapes are small)."""
    tests = pathlib.Path(__file__).parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         __file__, f"{tests / 'test_transformers.py'}::test_a_half_type_model_gets_its_float32_loss"],
        env={**os.environ, _ASSUMED: "1"}, cwd=tests.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
