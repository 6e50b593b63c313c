"""cross_entropy's and linear_cross_entropy's extras, z-loss (lse_square_scale) and softcap,
against the plain torch expression of them: values, gradients (first and second order),
the fused paths, compile, opcheck and errors."""

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck
from torch.library import opcheck

import pyops
import pyops.functional as PF
from helpers import assert_compiles_like_eager, assert_results_match, device_params, make_tensor

EXTRAS = [(0.1, None), (0.0, 3.0), (0.05, 2.0)]  # (lse_square_scale, softcap)
# (input shape, class dim): a 1-D input, rows, column tiles, long rows, no positions.
SHAPES = [((7,), 0), ((6, 5), 1), ((4, 5, 3), 1), ((3, 1000), 1), ((0, 5), 1)]
# (probability targets, label smoothing, class weights, ignored targets)
VARIANTS = [(False, 0.0, False, False), (False, 0.1, True, True), (True, 0.0, False, False),
            (True, 0.2, True, False)]


def reference(x, target, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0,
              lse_square_scale=0.0, softcap=None):
    """The extras as a torch user writes them: capped logits, then cross_entropy per position
    plus lse_square_scale * logsumexp^2 where not ignored, reduced as cross_entropy."""
    logits = softcap * torch.tanh(x / softcap) if softcap else x
    lse = torch.logsumexp(logits, 0 if x.dim() == 1 else 1)
    per = TF.cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    soft = target.is_floating_point()
    kept = torch.ones_like(lse, dtype=torch.bool) if soft else target != ignore_index
    per = per + lse_square_scale * lse.square() * kept
    if reduction == "none":
        return per
    if reduction == "sum" or lse.numel() == 0:
        return per.sum() if reduction == "sum" else per.sum() / 0
    if soft:
        return per.sum() / lse.numel()
    w = torch.ones_like(lse) if weight is None else weight[target.clamp(min=0)]
    return per.sum() / (w * kept).sum()


def case(shape, class_dim, dtype, device, soft, weighted, ignored, seed=0):
    x = make_tensor(shape, dtype, device, low=-8, high=8, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    classes = shape[class_dim]
    if soft:
        target = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), class_dim)
        target = target.to(dtype=dtype, device=device)
    else:
        positions = shape[:class_dim] + shape[class_dim + 1:]
        target = torch.randint(0, classes, positions, generator=gen)
        if ignored and target.numel() > 1:  # not all: see test_cross_entropy for that
            target.view(-1)[::3] = -100
        target = target.to(device)
    weight = None
    if weighted:
        weight = (torch.rand(classes, generator=gen, dtype=torch.float64) + 0.5).to(dtype=dtype,
                                                                                   device=device)
    return x, target, weight


def wide(t):
    return t.double() if t is not None and t.is_floating_point() else t


def loss_and_grad(fn, x, target, weight, up_seed=2, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, target, weight, **kw)
    up = make_tensor(loss.shape, loss.dtype, loss.device, low=0.5, high=1.5, seed=up_seed)
    (grad,) = torch.autograd.grad(loss, x, up)
    return loss, grad


@device_params
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,class_dim", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft,smoothing,weighted,ignored", VARIANTS)
@pytest.mark.parametrize("lse_square_scale,softcap", EXTRAS)
def test_cross_entropy_extras_match_reference(device, dtype, shape, class_dim, reduction, soft,
                                              smoothing, weighted, ignored, lse_square_scale,
                                              softcap):
    x, target, weight = case(shape, class_dim, dtype, device, soft, weighted, ignored)
    kw = dict(reduction=reduction, label_smoothing=smoothing, lse_square_scale=lse_square_scale,
              softcap=softcap)
    ours = loss_and_grad(PF.cross_entropy, x, target, weight, **kw)
    theirs = loss_and_grad(reference, x, target, weight, **kw)
    exact = loss_and_grad(reference, wide(x), wide(target), wide(weight), **kw)
    exact = tuple(r.to(dtype) for r in exact)
    assert_results_match(ours, theirs, exact, dtype)


@device_params
@pytest.mark.parametrize("shape", [(5,), (4, 5), (3, 5, 2)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft,smoothing,weighted,ignored", VARIANTS)
@pytest.mark.parametrize("lse_square_scale,softcap", EXTRAS)
def test_gradcheck_and_gradgradcheck(device, shape, reduction, soft, smoothing, weighted, ignored,
                                     lse_square_scale, softcap):
    class_dim = 0 if len(shape) == 1 else 1
    x, target, weight = case(shape, class_dim, torch.float64, device, soft, weighted, ignored)
    x.requires_grad_()
    if soft:
        target.requires_grad_()

    def loss(x, target):
        return PF.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=smoothing,
                                lse_square_scale=lse_square_scale, softcap=softcap)

    inputs = (x, target) if soft else x
    fn = loss if soft else (lambda x: loss(x, target))
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@device_params
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,class_dim", [((6, 7), 1), ((3, 7, 4), 1)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("lse_square_scale,softcap", EXTRAS)
def test_grad_in_forward_matches_two_pass(device, dtype, shape, class_dim, soft, overwrite,
                                          lse_square_scale, softcap):
    x, target, weight = case(shape, class_dim, dtype, device, soft, weighted=True, ignored=True)
    kw = dict(label_smoothing=0.1, lse_square_scale=lse_square_scale, softcap=softcap)
    leaf = x.clone().requires_grad_()
    loss = PF.cross_entropy(leaf * 1, target, weight, grad_in_forward=True,
                            overwrite_input=overwrite, **kw)
    (grad,) = torch.autograd.grad(loss * 3, leaf)

    def two_pass(fn, x, target, weight):
        x = x.clone().requires_grad_()
        loss = fn(x, target, weight, **kw)
        return loss.detach(), torch.autograd.grad(loss * 3, x)[0]

    exact = two_pass(reference, wide(x), wide(target), wide(weight))
    assert_results_match((loss.detach(), grad), two_pass(PF.cross_entropy, x, target, weight),
                         tuple(r.to(dtype) for r in exact), dtype)


@device_params
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("lse_square_scale,softcap", EXTRAS)
def test_linear_cross_entropy_extras(device, dtype, reduction, soft, lse_square_scale, softcap):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 8, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    w = torch.randn(11, 8, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    b = torch.randn(11, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    if soft:
        target = torch.softmax(torch.randn(9, 11, generator=gen), 1).to(dtype=dtype, device=device)
    else:
        target = torch.randint(0, 11, (9,), generator=gen).to(device)
        target[::4] = -100
    kw = dict(reduction=reduction, lse_square_scale=lse_square_scale, softcap=softcap)

    class Options:
        batch_chunk_size = 4  # three chunks, the last one short

    def ours(x, w, b):
        return PF.linear_cross_entropy(x, w, target, linear_bias=b, options=Options, **kw)

    def theirs(x, w, b):
        return reference(TF.linear(x, w, b), target, **kw)

    params = [t.clone().requires_grad_() for t in (x, w, b)]
    loss = ours(*params)
    up = make_tensor(loss.shape, dtype, device, low=0.5, high=1.5, seed=3)
    grads = torch.autograd.grad(loss, params, up)
    ref_params = [t.double().requires_grad_() for t in (x, w, b)]
    ref_loss = theirs(*ref_params)
    ref_grads = torch.autograd.grad(ref_loss, ref_params, up.double())
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for got, want in zip((loss, *grads), (ref_loss, *ref_grads)):
        torch.testing.assert_close(got, want.to(dtype), **tol)


@device_params
@pytest.mark.parametrize("soft", [False, True])
def test_opcheck_and_compile(device, soft):
    x, target, weight = case((6, 7), 1, torch.float32, device, soft, weighted=True, ignored=True)
    x.requires_grad_()
    opcheck(torch.ops.pyops.cross_entropy, (x, target, weight, 1, -100, 0.1, 0.05, 2.5))
    lse = torch.ops.pyops.cross_entropy(x.detach(), target, weight, 1, -100, 0.1, 0.05, 2.5)[1]
    opcheck(torch.ops.pyops.cross_entropy_backward,
            (torch.ones((), device=device), x, target, weight, 1, -100, 0.1, lse, 0.05, 2.5))

    def fn(x):
        return PF.cross_entropy(x, target, weight, label_smoothing=0.1, lse_square_scale=0.05,
                                softcap=2.5)

    assert_compiles_like_eager(fn, x)


@device_params
def test_errors(device):
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    for cap in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softcap"):
            PF.cross_entropy(x, t, softcap=cap)
        with pytest.raises(ValueError, match="softcap"):
            PF.linear_cross_entropy(x, torch.randn(6, 5, device=device), t, softcap=cap)
    with pytest.raises(ValueError, match="lse_square_scale"):
        PF.cross_entropy(x, t, lse_square_scale=float("nan"))
    with pytest.raises(RuntimeError, match="softcap"):
        torch.ops.pyops.cross_entropy(x, t, None, 1, -100, 0.0, 0.0, -2.0)
    with pytest.raises(RuntimeError, match="lse_square_scale"):
        torch.ops.pyops.cross_entropy(x, t, None, 1, -100, 0.0, float("inf"), 0.0)


def test_linear_cross_entropy_loss_module_attributes():
    torch.manual_seed(0)
    module = torch.nn.LinearCrossEntropyLoss(12, 9, dtype=torch.float64)
    ours = pyops.convert(module)
    ours.lse_square_scale, ours.softcap = 0.05, 1.5
    x = torch.randn(7, 12, dtype=torch.float64)
    t = torch.randint(0, 9, (7,))
    expected = reference(module.linear(x), t, lse_square_scale=0.05, softcap=1.5)
    torch.testing.assert_close(ours(x, t), expected)
    assert "lse_square_scale" not in ours.state_dict() and repr(ours) == repr(module)
