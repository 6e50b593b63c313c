"""Property-based tests: every op against torch on random shapes, dims, dtypes, layouts and
values (±inf, NaN, ±3e38, denormals), and for the losses random targets, weights, smoothing and
reductions.

CI runs a small, derandomized profile; PYOPS_HYPOTHESIS_PROFILE=thorough runs many more
examples. The activations come from the op table (pyops.table), every row and variant.
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pyops.functional as PF
from helpers import FLOAT_DTYPES, LAYOUTS
from pyops.table import OPS as TABLE

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("PYOPS_HYPOTHESIS_PROFILE", "ci"))

SIZES = [0, 1, 2, 3, 5, 7, 13, 31, 64, 127]
MAX_NUMEL = 1 << 15


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@st.composite
def tensors(draw, min_dims=0, max_dims=4, low=-10.0, high=10.0, specials=True,
            dtypes=FLOAT_DTYPES):
    """A tensor of random shape, dtype, layout and values, built from one drawn seed."""
    dtype = draw(st.sampled_from(dtypes))
    ndim = draw(st.integers(min_dims, max_dims))
    shape = draw(st.lists(st.sampled_from(SIZES), min_size=ndim, max_size=ndim))
    if draw(st.booleans()) and ndim:  # sometimes one long row
        shape[-1] = draw(st.sampled_from([257, 1031, 4099]))
    while ndim and _numel(shape) > MAX_NUMEL:  # keep every example small and quick
        shape[shape.index(max(shape))] //= 4
    layout = draw(st.sampled_from(LAYOUTS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    base_shape = tuple(reversed(shape)) if layout == "transposed" else tuple(shape)
    if layout == "sliced" and ndim:
        base_shape = base_shape[:-1] + (2 * base_shape[-1],)
    if layout == "expanded" and ndim:
        base_shape = (1,) + base_shape[1:]
    x = torch.rand(base_shape, generator=gen, dtype=torch.float64) * (high - low) + low
    if specials and x.numel():
        finfo = torch.finfo(dtype)
        pool = torch.tensor([float("inf"), -float("inf"), float("nan"), 3e38, -3e38, finfo.max,
                             -finfo.max, finfo.tiny / 4, -finfo.tiny / 4, 0.0, -0.0],
                            dtype=torch.float64)
        fraction = draw(st.sampled_from([0.0, 0.01, 0.2]))
        mask = torch.rand(base_shape, generator=gen) < fraction
        picks = pool[torch.randint(0, len(pool), base_shape, generator=gen)]
        x = torch.where(mask, picks, x)
    x = x.to(dtype)
    if layout == "transposed" and ndim:
        x = x.permute(*reversed(range(ndim)))
    elif layout == "sliced" and ndim:
        x = x[..., ::2]
    elif layout == "expanded" and ndim:
        x = x.expand(*shape)
    return x


def assert_matches(ours, theirs, scale=1.0):
    """Same dtype and shape, NaN in the same places; where either side overflowed to ±inf, the
    other did too or lies at the edge of overflow (beyond max/16, where rounding and summation
    order decide), with the same sign; every other value close."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    a, b = ours.double(), theirs.double()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    huge = torch.finfo(ours.dtype).max / 16
    overflowed = torch.isinf(a) | torch.isinf(b)
    assert torch.equal(torch.sign(a[overflowed]), torch.sign(b[overflowed])), "overflow signs differ"
    assert (a[overflowed].abs() >= huge).all() and (b[overflowed].abs() >= huge).all(), \
        "one side overflowed, the other is far from the limit"
    finite = ~overflowed & ~torch.isnan(b)
    eps = torch.finfo(ours.dtype).eps
    magnitude = max(scale, b[finite].abs().max().item() if finite.any() else 0.0, 1.0)
    torch.testing.assert_close(a[finite], b[finite], rtol=RTOL[ours.dtype],
                               atol=32 * eps * magnitude)


def grads(fn, inputs, upstream_seed=0):
    """fn's output and the gradients of its floating inputs, for a fixed upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(upstream_seed)
    up = torch.rand(out.shape, generator=gen).to(out.dtype) + 0.5
    wanted = [t for t in leaves if t.is_floating_point()]
    return [out.detach(), *torch.autograd.grad(out, wanted, up, allow_unused=True)]


def compare(ours_fn, torch_fn, inputs, scale=1.0):
    """Results and gradients agree, or both raise the same kind of error. pyops computes half
    types in float32 and rounds once, so for them torch runs in float32 on the same values."""
    half = [t.dtype in (torch.bfloat16, torch.float16) for t in inputs if t.is_floating_point()]
    try:
        if any(half):
            dtype = next(t.dtype for t in inputs if t.is_floating_point())
            wide = [t.float() if t.is_floating_point() else t for t in inputs]
            expected = [r.to(dtype) for r in grads(torch_fn, wide)]
        else:
            expected = grads(torch_fn, inputs)
    except (RuntimeError, ValueError, IndexError) as err:
        kind = IndexError if isinstance(err, IndexError) else \
            ValueError if isinstance(err, ValueError) else RuntimeError
        with pytest.raises(kind):
            grads(ours_fn, inputs)
        return
    # Inputs at the edge of the dtype's range (beyond max/16) overflow intermediates, and where
    # they do torch may say NaN (inf * 0, inf - inf) and pyops inf, or one of them a value just
    # below the limit (within 10^4 of it): summation order decides. Only those positions are
    # excused.
    edge = any(t.is_floating_point() and bool((t.double().abs() >= torch.finfo(t.dtype).max / 16).any())
               for t in inputs)
    # Where torch itself overflowed although the exact result (torch in float64) did not, its
    # float accumulation order is to blame: there pyops must give the exact result, unless it
    # overflowed in the same place (an intermediate beyond the limit in both).
    exact = [None] * len(expected)
    if edge:
        wide = [t.double() if t.is_floating_point() else t for t in inputs]
        exact = [r.to(e.dtype) for r, e in zip(grads(torch_fn, wide), expected)]
    for a, b, r in zip(grads(ours_fn, inputs), expected, exact):
        if edge:
            near = torch.finfo(a.dtype).max / 1e4
            a_near, b_near = ~(a.double().abs() < near), ~(b.double().abs() < near)
            exact_instead = b_near & (r.double().abs() < near) & ~a_near
            assert_matches(a[exact_instead], r[exact_instead], scale)
            overflowed = a_near & b_near & (~torch.isfinite(a) | ~torch.isfinite(b))
            kept = ~overflowed & ~exact_instead
            a, b = a[kept], b[kept]
        assert_matches(a, b, scale)


# ---- the ops ---------------------------------------------------------------------------------

ACTIVATIONS = {op.name + "".join(f"-{v}" for v in kw.values()):
               (functools.partial(op.function, **kw), functools.partial(op.torch_fn, **kw))
               for op in TABLE if op.family == "activation" for kw in op.variants}


@given(x=tensors(), name=st.sampled_from(sorted(ACTIVATIONS)))
def test_activations(x, name):
    if name == "gelu":  # torch's CPU kernel says NaN at +inf, where the limit (pyops, CUDA) is inf
        x = torch.where(x == float("inf"), torch.zeros_like(x), x)
    ours, theirs = ACTIVATIONS[name]
    compare(ours, theirs, [x])


@given(x=tensors(min_dims=1), data=st.data(), name=st.sampled_from(["softmax", "log_softmax"]))
def test_softmax(x, data, name):
    dim = data.draw(st.integers(-x.dim(), x.dim() - 1))
    compare(lambda t: getattr(PF, name)(t, dim), lambda t: getattr(TF, name)(t, dim), [x],
            scale=x.abs().nan_to_num(posinf=0, neginf=0).max().item() if x.numel() else 1.0)


@st.composite
def class_targets(draw, logits):
    """Targets for logits of shape (C) or (N, C, ...): indices with some ignored."""
    class_dim = 0 if logits.dim() == 1 else 1
    classes = logits.shape[class_dim]
    shape = logits.shape[:class_dim] + logits.shape[class_dim + 1:]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ignore_index = draw(st.sampled_from([-100, 0, -1]))
    t = torch.randint(0, max(classes, 1), shape, generator=gen)
    t[torch.rand(shape, generator=gen) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    if classes == 0:
        t.fill_(ignore_index)
    return t, ignore_index, classes


@given(x=tensors(min_dims=1, max_dims=3, low=-30, high=30), data=st.data())
def test_cross_entropy_and_nll(x, data):
    # torch raises a reshape error for zero classes with extra dims (its nll_loss2d path), while
    # it returns zeros for (N, 0); pyops returns zeros for both.
    assume(not (x.dim() >= 3 and x.shape[1] == 0))
    t, ignore_index, classes = data.draw(class_targets(x))
    weight = None
    if data.draw(st.booleans()) and classes:
        weight = torch.rand(classes, dtype=torch.float64) + 0.1
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 1.0]))

    def kw(a):  # the weight in the logits' dtype, which the reference may widen
        return dict(weight=None if weight is None else weight.to(a.dtype),
                    ignore_index=ignore_index, reduction=reduction)

    scale = x.abs().nan_to_num(posinf=0, neginf=0).sum().item() + 1
    compare(lambda a: PF.cross_entropy(a, t, label_smoothing=smoothing, **kw(a)),
            lambda a: TF.cross_entropy(a, t, label_smoothing=smoothing, **kw(a)), [x], scale)
    compare(lambda a: PF.nll_loss(a, t, **kw(a)), lambda a: TF.nll_loss(a, t, **kw(a)), [x], scale)


@given(x=tensors(min_dims=1, max_dims=3, low=-30, high=30), data=st.data())
def test_cross_entropy_probability_targets(x, data):
    class_dim = 0 if x.dim() == 1 else 1
    q = torch.softmax(torch.randn(x.shape, dtype=torch.float64), class_dim).to(x.dtype)
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    smoothing = data.draw(st.sampled_from([0.0, 0.2]))
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    scale = x.abs().nan_to_num(posinf=0, neginf=0).sum().item() + 1
    compare(lambda a, b: PF.cross_entropy(a, b, **kw), lambda a, b: TF.cross_entropy(a, b, **kw),
            [x, q], scale)


ELEMENTWISE = {
    "mse_loss": (PF.mse_loss, TF.mse_loss, None),
    "binary_cross_entropy_with_logits": (PF.binary_cross_entropy_with_logits,
                                         TF.binary_cross_entropy_with_logits, "unit"),
    "binary_cross_entropy": (PF.binary_cross_entropy, TF.binary_cross_entropy, "probabilities"),
    "hinge_loss": (PF.hinge_loss, lambda x, y, reduction: {
        "none": lambda v: v, "mean": torch.mean, "sum": torch.sum}[reduction](
            torch.clamp(1.0 - y * x, min=0)), "sign"),
}


@given(x=tensors(), data=st.data(), name=st.sampled_from(list(ELEMENTWISE)))
def test_elementwise_losses(x, data, name):
    ours, theirs, domain = ELEMENTWISE[name]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    y = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    if domain == "probabilities":  # inputs must lie in [0, 1]: squash, keeping 0 and 1 possible
        x = torch.sigmoid(x.double().nan_to_num(0.0)).to(x.dtype)
    if domain == "sign":
        y = torch.where(y < 0.5, -1.0, 1.0)
    y = y.to(x.dtype)
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"]))
    scale = min(x.abs().nan_to_num(posinf=0, neginf=0).sum().item(), 1e150) ** 2 + 1
    compare(lambda a, b: ours(a, b, reduction=reduction), lambda a, b: theirs(a, b, reduction=reduction),
            [x.contiguous(), y], scale)


@given(x=tensors(min_dims=1, max_dims=2, low=-3, high=3, dtypes=[torch.float32, torch.float64]),
       data=st.data())
def test_multi_margin_loss(x, data):
    if x.dim() == 2 and x.shape[0] == 0:  # an empty batch: torch's 'sum' is uninitialized memory
        return
    classes = x.shape[-1]  # none: both raise
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    t = torch.randint(0, max(classes, 1), x.shape[:1] if x.dim() == 2 else (), generator=gen)
    kw = dict(p=data.draw(st.sampled_from([1, 2])), margin=data.draw(st.sampled_from([1.0, 0.5])),
              reduction=data.draw(st.sampled_from(["none", "mean", "sum"])))
    weight = torch.rand(classes, generator=gen, dtype=torch.float64) + 0.1
    use_weight = data.draw(st.booleans())

    def kw_for(a):  # (float32 and float64 only: torch has no half multi_margin_loss)
        return dict(kw, weight=weight.to(a.dtype) if use_weight else None)

    compare(lambda a: PF.multi_margin_loss(a, t, **kw_for(a)),
            lambda a: TF.multi_margin_loss(a, t, **kw_for(a)), [x], scale=float(classes))
