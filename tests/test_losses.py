"""mse_loss, binary_cross_entropy(_with_logits), hinge_loss, multi_margin_loss against torch; the
result dtypes of the losses that take several floating-point tensors."""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch.library import opcheck

import pyops
import pyops.functional as PF
from helpers import (FLOAT_DTYPES, HALF_DTYPES, assert_close, assert_compiles_like_eager,
                     assert_raises_like_torch, assert_results_match, checks_values_on_host,
                     device_params, make_tensor)


REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(), (0,), (7,), (33, 17), (2, 3, 5, 7), (65537,)]


def torch_hinge(input, target, margin=1.0, reduction="mean"):
    """The plain torch expression the lesson's hinge loss stands for."""
    loss = torch.clamp(margin - target * input, min=0)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def inputs_for(name, shape, dtype, device, layout):
    """(input, target) in the loss' domain."""
    if name == "binary_cross_entropy":
        return (make_tensor(shape, dtype, device, layout, low=0.02, high=0.98),
                make_tensor(shape, dtype, device, layout, low=0, high=1, seed=1))
    if name == "binary_cross_entropy_with_logits":
        return (make_tensor(shape, dtype, device, layout, low=-8, high=8),
                make_tensor(shape, dtype, device, layout, low=0, high=1, seed=1))
    if name == "hinge_loss":
        sign = torch.sign(make_tensor(shape, torch.float32, device, layout, seed=1))
        return make_tensor(shape, dtype, device, layout), torch.where(sign == 0, 1, sign).to(dtype)
    return make_tensor(shape, dtype, device, layout), make_tensor(shape, dtype, device, layout, seed=1)


ELEMENTWISE = {
    "mse_loss": (PF.mse_loss, TF.mse_loss),
    "binary_cross_entropy": (PF.binary_cross_entropy, TF.binary_cross_entropy),
    "binary_cross_entropy_with_logits": (PF.binary_cross_entropy_with_logits,
                                         TF.binary_cross_entropy_with_logits),
    "hinge_loss": (PF.hinge_loss, torch_hinge),
}


def losses_and_grads(fn, x, y, up_seed=2, **kw):
    a, b = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    loss = fn(a, b, **kw)
    up = make_tensor(loss.shape, loss.dtype, loss.device, low=0.5, high=1.5, seed=up_seed)
    grads = torch.autograd.grad(loss, (a, b), up, allow_unused=True)
    return [loss, *grads]


@device_params
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_elementwise_losses_match_torch(device, name, dtype, shape, reduction, layout):
    ours_fn, torch_fn = ELEMENTWISE[name]
    x, y = inputs_for(name, shape, dtype, device, layout)
    ours = losses_and_grads(ours_fn, x, y, reduction=reduction)
    theirs = losses_and_grads(torch_fn, x, y, reduction=reduction)
    reference = losses_and_grads(torch_fn, x.double(), y.double(), reduction=reduction) \
        if dtype in HALF_DTYPES else theirs
    assert_results_match(ours, theirs, reference, dtype)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", ["weight", "pos_weight", "both", "broadcast"])
def test_bce_with_logits_weights(device, dtype, reduction, weights):
    x, y = inputs_for("binary_cross_entropy_with_logits", (6, 5), dtype, device, "contiguous")
    kw = {"reduction": reduction}
    if weights in ("weight", "both"):
        kw["weight"] = make_tensor((6, 5), dtype, device, low=0.2, high=2, seed=3)
    if weights in ("pos_weight", "both", "broadcast"):
        kw["pos_weight"] = make_tensor((5,), dtype, device, low=0.2, high=3, seed=4)
    if weights == "broadcast":
        kw["weight"] = make_tensor((6, 1), dtype, device, low=0.2, high=2, seed=5)
    ours = losses_and_grads(PF.binary_cross_entropy_with_logits, x, y, **kw)
    theirs = losses_and_grads(TF.binary_cross_entropy_with_logits, x, y, **kw)
    kw64 = {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()}
    ref = losses_and_grads(TF.binary_cross_entropy_with_logits, x.double(), y.double(), **kw64) \
        if dtype in HALF_DTYPES else theirs
    assert_results_match(ours, theirs, ref, dtype)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [(6, 5), (5,), (6, 1)])
def test_bce_weight_broadcast(device, dtype, reduction, weight_shape):
    x, y = inputs_for("binary_cross_entropy", (6, 5), dtype, device, "contiguous")
    w = make_tensor(weight_shape, dtype, device, low=0.2, high=2, seed=3)
    ours = losses_and_grads(PF.binary_cross_entropy, x, y, weight=w, reduction=reduction)
    theirs = losses_and_grads(TF.binary_cross_entropy, x, y, weight=w, reduction=reduction)
    ref = losses_and_grads(TF.binary_cross_entropy, x.double(), y.double(), weight=w.double(),
                           reduction=reduction) if dtype in HALF_DTYPES else theirs
    assert_results_match(ours, theirs, ref, dtype)


@device_params
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_shape", [(5,), (6, 1), (1, 5)])
def test_mse_broadcasting_warns_like_torch(device, reduction, target_shape):
    x = make_tensor((6, 5), torch.float32, device)
    y = make_tensor(target_shape, torch.float32, device, seed=1)
    with pytest.warns(UserWarning, match="different to the input size"):
        ours = losses_and_grads(PF.mse_loss, x, y, reduction=reduction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = losses_and_grads(TF.mse_loss, x, y, reduction=reduction)
    assert_results_match(ours, theirs, theirs, torch.float32)


@device_params
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_weight(device, reduction):
    x, y = inputs_for("mse_loss", (6, 5), torch.float64, device, "contiguous")
    w = make_tensor((6, 5), torch.float64, device, low=0.1, high=2, seed=3)
    ours = losses_and_grads(PF.mse_loss, x, y, weight=w, reduction=reduction)
    theirs = losses_and_grads(TF.mse_loss, x, y, weight=w, reduction=reduction)
    assert_results_match(ours, theirs, theirs, torch.float64)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_values(device, dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([-big, -1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4, big], dtype=dtype, device=device)
    y = torch.tensor([0.0, 1.0, 0.3, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0], dtype=dtype, device=device)
    for reduction in ("none", "sum"):
        assert_close(PF.binary_cross_entropy_with_logits(x, y, reduction=reduction),
                     TF.binary_cross_entropy_with_logits(x, y, reduction=reduction),
                     atol=torch.finfo(dtype).eps)
    p = torch.tensor([0.0, 1.0, 1e-30, 1 - 1e-7, 0.5], dtype=torch.float32, device=device).to(dtype)
    q = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5], dtype=dtype, device=device)
    assert_close(PF.binary_cross_entropy(p, q, reduction="none"),
                 TF.binary_cross_entropy(p, q, reduction="none"))
    nan = torch.tensor([float("nan"), 1.0, -float("inf")], dtype=dtype, device=device)
    ones = torch.ones(3, dtype=dtype, device=device)
    assert_close(PF.hinge_loss(nan, ones, reduction="none"), torch_hinge(nan, ones, reduction="none"))
    assert_close(PF.mse_loss(nan, ones, reduction="none"), TF.mse_loss(nan, ones, reduction="none"))


# ---- multi_margin_loss -------------------------------------------------------------------------

@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(), (7,), (6, 5), (4, 1000), (1, 1)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin_matches_torch(device, dtype, shape, p, margin, weighted, reduction):
    x = make_tensor(shape, dtype, device, low=-2, high=2)
    classes = shape[-1] if shape else 1
    t = torch.randint(0, classes, shape[:1] if len(shape) == 2 else (), device=device,
                      generator=None)
    w = make_tensor((classes,), dtype, device, low=0.2, high=2, seed=3) if weighted else None
    kw = dict(p=p, margin=margin, weight=w, reduction=reduction)

    def run(fn, x, w):
        a = x.detach().clone().requires_grad_()
        loss = fn(a, t, **dict(kw, weight=w))
        up = make_tensor(loss.shape, loss.dtype, device, low=0.5, high=1.5, seed=2)
        return [loss, torch.autograd.grad(loss, a, up)[0]]

    ours = run(PF.multi_margin_loss, x, w)
    # Long rows sum many terms, which torch adds one by one: judge both against float64. torch
    # has no half multi_margin_loss, so half types are held to a few ulps of float64's result.
    reference = run(TF.multi_margin_loss, x.double(), None if w is None else w.double())
    if dtype in HALF_DTYPES:
        for o, r in zip(ours, reference):
            assert o.dtype == dtype
            assert_close(o.double(), r, atol=4 * torch.finfo(dtype).eps * max(1.0, r.abs().max().item()),
                         rtol=2 * torch.finfo(dtype).eps)
    else:
        assert_results_match(ours, run(TF.multi_margin_loss, x, w), reference, dtype,
                             no_worse=dtype == torch.float32)


@device_params
@pytest.mark.parametrize("input_shape,target_shape", [((1, 5), ()), ((1, 5), (1,)), ((5,), ()),
                                                      ((5,), (1,)), ((), ()), ((), (1,)),
                                                      ((0, 5), (0,))])
def test_multi_margin_none_has_the_target_shape(device, input_shape, target_shape):
    """reduction='none' returns one loss per row in the target's shape, as torch; so does the
    fake kernel, and the gradient flows back through that shape."""
    x = make_tensor(input_shape, torch.float64, device).requires_grad_()
    t = torch.zeros(target_shape, dtype=torch.long, device=device)
    ours, theirs = (f(x, t, reduction="none") for f in (PF.multi_margin_loss, TF.multi_margin_loss))
    assert ours.shape == theirs.shape == t.shape
    assert_close(ours, theirs)
    grad = torch.rand_like(theirs)
    assert_close(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0])
    opcheck(torch.ops.pyops.multi_margin_loss, (x, t, 1, 1.0, None, 0))


@device_params
def test_multi_margin_errors_like_torch(device):
    x = make_tensor((4, 5), torch.float32, device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    out_of_range = [
        (RuntimeError, lambda f: f(x, torch.tensor([0, 1, 5, 2], device=device))),
        (RuntimeError, lambda f: f(x, torch.tensor([0, -1, 1, 2], device=device))),
    ] if checks_values_on_host(device) else []
    cases = out_of_range + [
        (ValueError, lambda f: f(x, t, p=3)),
        (RuntimeError, lambda f: f(make_tensor((2, 3, 4), torch.float32, device), t)),
        (ValueError, lambda f: f(x, t, weight=torch.ones(1, 5, device=device))),
        (RuntimeError, lambda f: f(x, t, weight=torch.ones(3, device=device))),
        (RuntimeError, lambda f: f(x, torch.tensor([0, 1, 2], device=device))),
        (RuntimeError, lambda f: f(x, t.int())),
        (ValueError, lambda f: f(x, t, reduction="avg")),
    ]
    for exc, call in cases:
        assert_raises_like_torch(exc, call, PF.multi_margin_loss, TF.multi_margin_loss)


# ---- floating-point tensors of different dtypes in one call ---------------------------------------

# name -> call(F, input, target, weight, reduction): the loss with tensors of three dtypes. torch's
# result dtype is the promoted one, except for BCE (the input's: the weight multiplies the loss in
# place) and BCE with logits (the target's: its loss is computed in place in the target).
MIXED = {
    "mse_loss": lambda F, x, y, w, r: F.mse_loss(x, y, weight=w.expand(x.shape), reduction=r),
    "binary_cross_entropy": lambda F, x, y, w, r: F.binary_cross_entropy(
        x.sigmoid(), y.detach(), w, reduction=r),
    "binary_cross_entropy_with_logits": lambda F, x, y, w, r: F.binary_cross_entropy_with_logits(
        x, y, w, pos_weight=w.flip(0), reduction=r),
    "cross_entropy": lambda F, x, y, w, r: F.cross_entropy(x, y, w, reduction=r,
                                                           label_smoothing=0.1),
    "linear_cross_entropy": lambda F, x, y, w, r: F.linear_cross_entropy(
        x, x.detach()[:3], y.detach()[:, :3], weight=w[:3], reduction=r),
}


@device_params
@pytest.mark.parametrize("name", list(MIXED))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_mixed_dtypes_follow_torch(device, name, reduction):
    compared = 0
    for dtypes in itertools.product(FLOAT_DTYPES, repeat=3):
        tensors = (make_tensor((4, 5), dtypes[0], device),
                   make_tensor((4, 5), dtypes[1], device, low=0, high=1, seed=1),
                   make_tensor((5,), dtypes[2], device, low=0.5, high=2, seed=2))

        def run(F, cast=lambda t: t):
            x, y, w = (cast(t).detach().requires_grad_(i < 2) for i, t in enumerate(tensors))
            loss = MIXED[name](F, x, y, w, reduction)
            grads = torch.autograd.grad(loss.sum(), (x, y), allow_unused=True)
            return [loss, *(g for g in grads if g is not None)]

        try:
            theirs = run(TF)
        except Exception as e:  # e.g. BCE's input and target of two dtypes
            with pytest.raises(type(e)):
                run(PF)
            continue
        ours, exact = run(PF), run(TF, lambda t: t.double())
        assert len(ours) == len(theirs), dtypes
        assert [o.dtype for o in ours] == [t.dtype for t in theirs], dtypes
        least_precise = max(dtypes, key=lambda d: torch.finfo(d).eps)
        assert_results_match(ours, theirs, [e.to(t.dtype) for e, t in zip(exact, theirs)],
                             least_precise)
        compared += 1
    assert compared >= 16  # at least every dtype pair of the tensors that must agree


# ---- errors of the elementwise losses -------------------------------------------------------------

@device_params
def test_elementwise_errors_like_torch(device):
    x = make_tensor((3, 2), torch.float32, device, low=0.1, high=0.9)
    y = make_tensor((3, 2), torch.float32, device, low=0, high=1, seed=1)
    outside = [
        (RuntimeError, lambda F: F.binary_cross_entropy(torch.tensor([0.5, 1.5], device=device), torch.tensor([0.0, 1.0], device=device))),
        (RuntimeError, lambda F: F.binary_cross_entropy(torch.tensor([0.5, float("nan")], device=device), torch.tensor([0.0, 1.0], device=device))),
        (RuntimeError, lambda F: F.binary_cross_entropy(torch.tensor([-0.1, 0.5], device=device), torch.tensor([0.0, 1.0], device=device))),
    ] if checks_values_on_host(device) else []
    cases = outside + [
        (ValueError, lambda F: F.binary_cross_entropy(x, y.reshape(6, 1))),
        (RuntimeError, lambda F: F.binary_cross_entropy(x, y.double())),
        (ValueError, lambda F: F.binary_cross_entropy_with_logits(x, y.reshape(6, 1))),
        (RuntimeError, lambda F: F.binary_cross_entropy_with_logits(x, (y > 0.5).long())),
        (RuntimeError, lambda F: F.binary_cross_entropy_with_logits(x, y > 0.5)),
        (RuntimeError, lambda F: F.mse_loss(x, make_tensor((3,), torch.float32, device))),
        (ValueError, lambda F: F.mse_loss(x, y, reduction="avg")),
        (ValueError, lambda F: F.binary_cross_entropy_with_logits(x, y, reduction="bad")),
        (ValueError, lambda F: F.mse_loss(x, y, weight=torch.ones(2, device=device))),
    ]
    for exc, call in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_raises_like_torch(exc, call, PF, TF)
    with pytest.raises(ValueError):
        PF.hinge_loss(x, y, reduction="avg")


# ---- autograd, registration -------------------------------------------------------------------

@device_params
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck(device, reduction):
    x = make_tensor((4, 5), torch.float64, device).requires_grad_()
    p = make_tensor((4, 5), torch.float64, device, low=0.1, high=0.9).requires_grad_()
    y = make_tensor((4, 5), torch.float64, device, low=0.05, high=0.95, seed=1).requires_grad_()
    w = make_tensor((4, 5), torch.float64, device, low=0.2, high=2, seed=3)
    pw = make_tensor((5,), torch.float64, device, low=0.2, high=3, seed=4)
    wg, pwg = w.clone().requires_grad_(), pw.clone().requires_grad_()
    sign = torch.where(make_tensor((4, 5), torch.float64, device, seed=5) > 0, 1.0, -1.0)
    t = torch.randint(0, 5, (4,), device=device)
    x_hinge = (x.detach() + 0.05 * torch.sign(1 - sign * x.detach())).requires_grad_()  # off the kink
    cases = [
        (lambda a, b: PF.mse_loss(a, b, reduction=reduction), (x, y)),
        (lambda a, b: PF.mse_loss(a, b, weight=w, reduction=reduction), (x, y)),
        (lambda a, b: PF.binary_cross_entropy_with_logits(a, b, weight=w, pos_weight=pw, reduction=reduction), (x, y)),
        (lambda a, b: PF.binary_cross_entropy(a, b, weight=w, reduction=reduction), (p, y)),
        # gradients for weight and pos_weight too, which torch refuses
        (lambda a, b, c, d: PF.binary_cross_entropy_with_logits(
            a, b, weight=c, pos_weight=d, reduction=reduction), (x, y, wg, pwg)),
        (lambda a, b, c: PF.binary_cross_entropy(a, b, weight=c, reduction=reduction), (p, y, wg)),
        (lambda a: PF.hinge_loss(a, sign, margin=1.0, reduction=reduction), (x_hinge,)),
        (lambda a: PF.multi_margin_loss(a, t, p=1, reduction=reduction), (x,)),
        (lambda a: PF.multi_margin_loss(a, t, p=2, margin=0.7, weight=pw, reduction=reduction), (x,)),
    ]
    for fn, args in cases:
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@device_params
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(device, reduction):
    x = make_tensor((4, 5), torch.float32, device).requires_grad_()
    p = make_tensor((4, 5), torch.float32, device, low=0.1, high=0.9).requires_grad_()
    y = make_tensor((4, 5), torch.float32, device, low=0, high=1, seed=1)
    w = make_tensor((4, 5), torch.float32, device, low=0.2, high=2, seed=3)
    pw = make_tensor((4, 5), torch.float32, device, low=0.2, high=2, seed=4)
    t = torch.randint(0, 5, (4,), device=device)
    cw = make_tensor((5,), torch.float32, device, low=0.2, high=2, seed=5)
    calls = [
        ("mse_loss", (x, y, w, reduction)),
        ("binary_cross_entropy_with_logits", (x, y, w, pw, reduction)),
        ("binary_cross_entropy", (p, y, None, reduction)),
        ("hinge_loss", (x, torch.sign(y - 0.5), 1.0, reduction)),
        ("multi_margin_loss", (x, t, 2, 0.5, cw, reduction)),
    ]
    for name, args in calls:
        opcheck(getattr(torch.ops.pyops, name), args)
        loss = getattr(torch.ops.pyops, name)(*[a.detach() if torch.is_tensor(a) else a for a in args])
        opcheck(getattr(torch.ops.pyops, name + "_backward"),
                (torch.ones_like(loss), *[a.detach() if torch.is_tensor(a) else a for a in args]))


@device_params
def test_compile_fullgraph_matches_eager(device):
    t = torch.randint(0, 5, (4,), device=device)

    def f(x, y):
        return (PF.mse_loss(x, y) + PF.binary_cross_entropy_with_logits(x, y.sigmoid())
                + PF.binary_cross_entropy(x.sigmoid(), y.sigmoid()) + PF.hinge_loss(x, y.sign())
                + PF.multi_margin_loss(x, t))

    assert_compiles_like_eager(f, make_tensor((4, 5), torch.float32, device).requires_grad_(),
                               make_tensor((4, 5), torch.float32, device, seed=1))


@device_params
def test_lesson_mse_gradient(device):
    # The lesson's cell: mse_loss(1, x*w) with w = 2 has gradient 2, by autograd.grad and backward.
    x = torch.ones(1, device=device)
    w = torch.full([1], 2.0, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(PF.mse_loss(torch.ones(1, device=device), x * w), [w])
    assert g.tolist() == [2.0]
    PF.mse_loss(torch.ones(1, device=device), x * w).backward()
    assert w.grad.tolist() == [2.0]


@device_params
def test_modules_match_torch(device):
    x = make_tensor((6, 5), torch.float32, device)
    y = make_tensor((6, 5), torch.float32, device, low=0, high=1, seed=1)
    t = torch.randint(0, 5, (6,), device=device)
    w = make_tensor((5,), torch.float32, device, low=0.2, high=2, seed=3)
    pairs = [
        (pyops.nn.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum"), (x, y)),
        (pyops.nn.BCELoss(weight=w), torch.nn.BCELoss(weight=w), (x.sigmoid(), y)),
        (pyops.nn.BCEWithLogitsLoss(pos_weight=w), torch.nn.BCEWithLogitsLoss(pos_weight=w), (x, y)),
        (pyops.nn.MultiMarginLoss(p=2, margin=0.5, weight=w), torch.nn.MultiMarginLoss(p=2, margin=0.5, weight=w), (x, t)),
    ]
    for ours, theirs, args in pairs:
        assert_close(ours(*args), theirs(*args))
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
    hinge = pyops.nn.HingeLoss(margin=0.5, reduction="sum")
    assert_close(hinge(x, y.sign()), torch_hinge(x, y.sign(), margin=0.5, reduction="sum"))
    assert repr(hinge) == "HingeLoss(margin=0.5, reduction=sum)"
