"""cross_entropy and nll_loss against torch: every combination of targets, weights, ignore_index,
label smoothing, reductions, layouts and dtypes; errors; autograd; registration."""

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


# (input shape, class dim); targets take the input shape without the class dim.
SHAPES = [((7,), 0), ((6, 5), 1), ((4, 5, 3), 1), ((2, 5, 3, 4), 1), ((3, 70, 130), 1),
          ((3, 1000), 1), ((0, 5), 1)]
REDUCTIONS = ["none", "mean", "sum"]
SMOOTHING = [0.0, 0.1, 1.0]
IGNORE = ["none", "default", "in_range"]  # no ignored targets / -100 present / ignore_index=2


def class_targets(shape, class_dim, device, ignore, seed=0):
    gen = torch.Generator().manual_seed(seed)
    classes = shape[class_dim]
    pos_shape = shape[:class_dim] + shape[class_dim + 1:]
    t = torch.randint(0, classes, pos_shape, generator=gen)
    ignore_index = -100
    if ignore != "none" and t.numel():
        mask = torch.rand(pos_shape, generator=gen) < 0.3
        mask.view(-1)[0] = True
        if ignore == "default":
            t[mask] = -100
        else:
            ignore_index = 2
            t[mask] = 2
    return t.to(device), ignore_index


def weights(classes, dtype, device, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(classes, generator=gen, dtype=torch.float64) + 0.25).to(dtype=dtype, device=device)


def run_both(fn_ours, fn_torch, x, grad_seed=1, **kw):
    """Loss and input gradient from both implementations, for a random upstream gradient."""
    a, b = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    la, lb = fn_ours(a, **kw), fn_torch(b, **kw)
    up = make_tensor(la.shape, la.dtype, la.device, low=0.5, high=1.5, seed=grad_seed)
    (ga,) = torch.autograd.grad(la, a, up, allow_unused=True)
    (gb,) = torch.autograd.grad(lb, b, up, allow_unused=True)
    return (la, ga), (lb, gb)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,class_dim", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", SMOOTHING)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", IGNORE)
def test_class_targets_match_torch(device, dtype, shape, class_dim, reduction, smoothing,
                                   weighted, ignore):
    x = make_tensor(shape, dtype, device, low=-6, high=6)
    t, ignore_index = class_targets(shape, class_dim, device, ignore)
    w = weights(shape[class_dim], dtype, device) if weighted else None
    kw = dict(target=t, weight=w, ignore_index=ignore_index, reduction=reduction,
              label_smoothing=smoothing)
    ours, theirs = run_both(PF.cross_entropy, TF.cross_entropy, x, **kw)
    if dtype in HALF_DTYPES:
        kw64 = dict(kw, weight=None if w is None else w.double())
        reference = run_both(TF.cross_entropy, TF.cross_entropy, x.double(), **kw64)[0]
    else:
        reference = theirs
    assert_results_match(ours, theirs, reference, dtype)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,class_dim", SHAPES[:5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", IGNORE)
def test_nll_loss_matches_torch(device, dtype, shape, class_dim, reduction, weighted, ignore):
    x = make_tensor(shape, dtype, device, low=-6, high=0)
    t, ignore_index = class_targets(shape, class_dim, device, ignore)
    w = weights(shape[class_dim], dtype, device) if weighted else None
    kw = dict(target=t, weight=w, ignore_index=ignore_index, reduction=reduction)
    ours, theirs = run_both(PF.nll_loss, TF.nll_loss, x, **kw)
    for o, th in zip(ours, theirs):
        assert_close(o, th, atol=4 * torch.finfo(dtype).eps)


@device_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,class_dim", SHAPES[:6])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True, "with its gradient"])
def test_probability_targets_match_torch(device, dtype, shape, class_dim, reduction, smoothing,
                                         weighted):
    # torch differentiates its formula for probabilities in the class weights too
    x = make_tensor(shape, dtype, device, low=-6, high=6)
    q = torch.softmax(make_tensor(shape, torch.float64, device, seed=5), class_dim).to(dtype)
    w = weights(shape[class_dim], dtype, device) if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)

    def loss_and_grads(fn, cast=lambda t: t):
        a, b = cast(x).requires_grad_(), cast(q).requires_grad_()
        c = None if w is None else cast(w).requires_grad_(weighted == "with its gradient")
        loss = fn(a, b, weight=c, **kw)
        up = make_tensor(loss.shape, dtype, device, low=0.5, high=1.5, seed=1).to(loss.dtype)
        wrt = (a, b, c) if c is not None and c.requires_grad else (a, b)
        return (loss, *torch.autograd.grad(loss, wrt, up))

    results = [loss_and_grads(fn, torch.clone) for fn in (PF.cross_entropy, TF.cross_entropy)]
    if dtype in HALF_DTYPES:
        reference = loss_and_grads(TF.cross_entropy, torch.Tensor.double)
    else:
        reference = results[1]
    assert_results_match(results[0], results[1], reference, dtype)


@device_params
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs_and_targets(device, layout, dtype):
    if layout == "channels_last":
        x = make_tensor((2, 5, 3, 4), dtype, device).to(memory_format=torch.channels_last)
        t = torch.randint(0, 5, (2, 4, 3), device=device).transpose(1, 2)  # non-contiguous target
    else:
        x = make_tensor((6, 9), dtype, device, layout)
        t = torch.randint(0, 9, (12,), device=device)[::2]
    t[0] = -100
    for smoothing in (0.0, 0.3):
        ours, theirs = run_both(PF.cross_entropy, TF.cross_entropy, x, target=t,
                                label_smoothing=smoothing)
        ref = run_both(TF.cross_entropy, TF.cross_entropy, x.double(), target=t,
                       label_smoothing=smoothing)[0]
        assert_results_match(ours, theirs, ref if dtype in HALF_DTYPES else theirs, dtype)


@device_params
@pytest.mark.parametrize("smoothing", [0.0, 0.4])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_nan_with_zero_grad(device, smoothing, weighted):
    x = make_tensor((4, 5), torch.float32, device).requires_grad_()
    t = torch.full((4,), -100, device=device)
    w = weights(5, torch.float32, device) if weighted else None
    loss = PF.cross_entropy(x, t, weight=w, label_smoothing=smoothing)
    assert torch.isnan(loss) and torch.isnan(TF.cross_entropy(x, t, weight=w, label_smoothing=smoothing))
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert PF.cross_entropy(x, t, reduction="sum").item() == 0.0
    assert torch.isnan(PF.nll_loss(x, t))


@device_params
def test_empty_batch_like_torch(device):
    x = torch.zeros(0, 5, device=device)
    for reduction in REDUCTIONS:
        for target in (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, 5, device=device)):
            ours = PF.cross_entropy(x, target, reduction=reduction)
            theirs = TF.cross_entropy(x, target, reduction=reduction)
            assert ours.shape == theirs.shape
            assert torch.equal(torch.isnan(ours), torch.isnan(theirs))


@device_params
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,)])
def test_empty_probabilities_with_a_weight_gradient_like_torch(device, shape):
    class_dim = 0 if len(shape) == 1 else 1
    for reduction in REDUCTIONS:
        results = []
        for fn in (PF.cross_entropy, TF.cross_entropy):
            w = torch.ones(shape[class_dim], device=device, requires_grad=True)
            loss = fn(torch.zeros(shape, device=device), torch.zeros(shape, device=device), w,
                      reduction=reduction, label_smoothing=0.1)
            results.append((loss, *torch.autograd.grad(loss.sum(), w)))
        for ours, theirs in zip(*results):
            torch.testing.assert_close(ours, theirs, equal_nan=True)


@device_params
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits(device, dtype):
    big = torch.finfo(dtype).max
    inf = float("inf")
    x = torch.tensor([[big, -big, 0.0, 1.0], [-inf, 1.0, 2.0, 0.5], [inf, 1.0, 0.0, 0.0],
                      [float("nan"), 0.0, 1.0, 2.0], [1e4, -1e4, 0.0, 3.0]], dtype=dtype, device=device)
    t = torch.tensor([0, 1, 2, 3, 1], device=device)
    for smoothing in (0.0, 0.5):
        ours = PF.cross_entropy(x, t, reduction="none", label_smoothing=smoothing)
        theirs = TF.cross_entropy(x, t, reduction="none", label_smoothing=smoothing)
        assert_close(ours, theirs, atol=torch.finfo(dtype).eps)


def test_lesson_identity_cross_entropy_is_nll_of_log_softmax():
    logits = make_tensor((6, 10), torch.float32, "cpu")
    t = torch.randint(0, 10, (6,))
    ce = PF.cross_entropy(logits, t)
    assert_close(ce, PF.nll_loss(torch.log(PF.softmax(logits, 1)), t), atol=1e-6)
    assert_close(ce, TF.cross_entropy(logits, t))


# ---- autograd, registration ----------------------------------------------------------------

GRAD_CASES = list(itertools.product([(5,), (4, 5), (3, 5, 2)], REDUCTIONS, [0.0, 0.3],
                                    [False, True], ["none", "default"]))


@device_params
@pytest.mark.parametrize("shape,reduction,smoothing,weighted,ignore", GRAD_CASES)
def test_gradcheck_and_gradgradcheck_class_targets(device, shape, reduction, smoothing, weighted,
                                                   ignore):
    class_dim = 0 if len(shape) == 1 else 1
    x = make_tensor(shape, torch.float64, device).requires_grad_()
    t, ignore_index = class_targets(shape, class_dim, device, ignore if len(shape) > 1 else "none")
    w = weights(shape[class_dim], torch.float64, device) if weighted else None

    def fn(z):
        return PF.cross_entropy(z, t, weight=w, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=smoothing)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    if smoothing == 0.0:
        def nll(z):
            return PF.nll_loss(z, t, weight=w, ignore_index=ignore_index, reduction=reduction)
        assert torch.autograd.gradcheck(nll, (x,))
        assert torch.autograd.gradgradcheck(nll, (x,))


@device_params
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5,), (4, 5), (3, 5, 2)])
def test_gradcheck_and_gradgradcheck_probability_targets(device, reduction, shape):
    class_dim = 0 if len(shape) == 1 else 1
    x = make_tensor(shape, torch.float64, device).requires_grad_()
    q = torch.softmax(make_tensor(shape, torch.float64, device, seed=4), class_dim).requires_grad_()
    w = weights(shape[class_dim], torch.float64, device)

    def fn(z, p):
        return PF.cross_entropy(z, p, weight=w, reduction=reduction, label_smoothing=0.2)

    assert torch.autograd.gradcheck(fn, (x, q))
    assert torch.autograd.gradgradcheck(fn, (x, q))

    def weighted(z, p, v):  # the class weights' gradient too, with the extras
        return PF.cross_entropy(z, p, weight=v, reduction=reduction, label_smoothing=0.2,
                                lse_square_scale=0.1, softcap=3.0)

    assert torch.autograd.gradcheck(weighted, (x, q, w.requires_grad_()))
    assert torch.autograd.gradgradcheck(weighted, (x, q, w))


@device_params
@pytest.mark.parametrize("shape", [(5,), (4, 5), (3, 5, 2)])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_log_sum_exp_output_is_differentiable(device, shape, softcap):
    """pyops::cross_entropy's second output, the log-sum-exp of each position's (capped)
    logits, has the gradient of torch.logsumexp, alone and beside the loss's."""
    class_dim = 0 if len(shape) == 1 else 1
    x = make_tensor(shape, torch.float64, device).requires_grad_()
    t, _ = class_targets(shape, class_dim, device, "none")

    def lse(z):
        return torch.ops.pyops.cross_entropy(z, t, None, 1, -100, 0.0, 0.0, softcap)[1]

    def both(z):
        loss, lse = torch.ops.pyops.cross_entropy(z, t, None, 1, -100, 0.1, 0.0, softcap)
        return loss + (lse * lse).sum()

    def soft(z, q):  # probability targets, differentiated too
        loss, lse = torch.ops.pyops.cross_entropy(z, q, None, 1, -100, 0.1, 0.0, softcap)
        return loss + (lse * lse).sum()

    capped = softcap * torch.tanh(x / softcap) if softcap else x
    assert_close(lse(x), torch.logsumexp(capped, class_dim), torch.float64)
    assert torch.autograd.gradcheck(lse, (x,))
    assert torch.autograd.gradcheck(both, (x,))
    assert torch.autograd.gradgradcheck(both, (x,))
    q = torch.softmax(make_tensor(shape, torch.float64, device, seed=3), class_dim)
    assert torch.autograd.gradcheck(soft, (x, q.requires_grad_()))


@device_params
def test_saves_only_input_and_log_sum_exp(device):
    """The forward keeps the input (by reference), the targets, and one float per position."""
    x = make_tensor((8, 50), torch.bfloat16, device).requires_grad_()
    t = torch.randint(0, 50, (8,), device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        PF.cross_entropy(x, t, label_smoothing=0.1)
    big = [s for s in saved if s.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    lse = [s for s in saved if s.dtype == torch.float32]
    assert len(lse) == 1 and lse[0].shape == (8,)


@device_params
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_opcheck(device, soft, layout):
    x = make_tensor((6, 5), torch.float32, device, layout).requires_grad_()
    if soft:
        t = torch.softmax(make_tensor((6, 5), torch.float32, device, seed=2), 1)
    else:
        t, _ = class_targets((6, 5), 1, device, "default")
    w = weights(5, torch.float32, device)
    for reduction, smoothing in [(0, 0.0), (1, 0.1), (2, 0.0)]:
        args = (x, t, w, reduction, -100, smoothing)
        opcheck(torch.ops.pyops.cross_entropy, args)
        loss, lse = torch.ops.pyops.cross_entropy(*[a.detach() if torch.is_tensor(a) else a for a in args])
        grad = torch.ones_like(loss)
        opcheck(torch.ops.pyops.cross_entropy_backward,
                (grad, x.detach(), t, w, reduction, -100, smoothing, lse))
        if not soft:
            opcheck(torch.ops.pyops.nll_loss, (x, t, w, reduction, -100))
            opcheck(torch.ops.pyops.nll_loss_backward, (grad, x.detach(), t, w, reduction, -100))


@device_params
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_compile_fullgraph_with_ignored_targets(device, smoothing):
    def f(x, t):
        return PF.cross_entropy(x * 2, t, label_smoothing=smoothing)

    t, _ = class_targets((8, 9), 1, device, "default")
    assert_compiles_like_eager(f, make_tensor((8, 9), torch.float32, device).requires_grad_(), t)


@device_params
@pytest.mark.parametrize("target_grad", [False, True])
def test_compile_fullgraph_with_probability_targets_and_smoothing(device, target_grad):
    def f(x, q):
        return PF.cross_entropy(x * 2, q, label_smoothing=0.2)

    q = torch.softmax(make_tensor((8, 9), torch.float32, device, seed=3), 1)
    assert_compiles_like_eager(f, make_tensor((8, 9), torch.float32, device).requires_grad_(),
                               q.requires_grad_(target_grad))


# ---- the gradient computed in the forward ---------------------------------------------------------

@device_params
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,class_dim", [((6, 7), 1), ((3, 7, 4), 1), ((0, 7), 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing,weighted,soft", [(0.0, False, False), (0.1, True, False),
                                                     (0.2, True, True)])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("upstream", [1.0, 3.0])
def test_grad_in_forward_matches_two_pass(device, dtype, shape, class_dim, reduction, smoothing,
                                       weighted, soft, overwrite, upstream):
    x = make_tensor(shape, dtype, device)
    if soft:
        t = torch.softmax(make_tensor(shape, dtype, device, seed=2).float(), class_dim).to(dtype)
    else:
        t, _ = class_targets(shape, class_dim, device, "default")
    w = weights(shape[class_dim], dtype, device) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1  # overwriting replaces these logits, not the leaf
    loss = PF.cross_entropy(logits, t, grad_in_forward=True, overwrite_input=overwrite, **kw)
    (loss * upstream).backward()

    def torch_result(x, t, w):
        x = x.clone().requires_grad_()
        expected = TF.cross_entropy(x * 1, t, **dict(kw, weight=w))
        (expected * upstream).backward()
        return expected.detach(), x.grad

    wide = (lambda a: a.double() if a is not None and a.is_floating_point() else a)
    assert_results_match((loss.detach(), leaf.grad), torch_result(x, t, w),
                         torch_result(x.double(), wide(t), wide(w)), dtype)
    if overwrite and x.numel():
        assert_close(logits.detach(), leaf.grad, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_in_forward_loss_under_autocast_is_float32(reduction):
    # torch's loss of bfloat16 logits under autocast is float32, not a rounded bfloat16 value
    x = make_tensor((64, 1000), torch.bfloat16, "cpu").requires_grad_()
    t = torch.randint(0, 1000, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = PF.cross_entropy(x * 1, t, reduction=reduction, grad_in_forward=True)
        theirs = TF.cross_entropy(x, t, reduction=reduction)
    assert ours.dtype == theirs.dtype == torch.float32
    assert abs(ours.item() - theirs.item()) <= 1e-6 * abs(theirs.item())
    plain = PF.cross_entropy(x * 1, t, reduction=reduction, grad_in_forward=True)
    assert plain.dtype == torch.bfloat16


@device_params
def test_grad_in_forward_is_one_shot_and_checked(device):
    x = make_tensor((4, 5), torch.float32, device).requires_grad_()
    t = torch.tensor([0, 1, 4, 2], device=device)
    loss = PF.cross_entropy(x * 1, t, grad_in_forward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated once"):
        loss.backward()
    with pytest.raises(ValueError, match="reduction"):
        PF.cross_entropy(x, t, reduction="none", grad_in_forward=True)
    with pytest.raises(ValueError, match="needs grad_in_forward"):
        PF.cross_entropy(x, t, overwrite_input=True)
    with torch.no_grad():  # nothing to differentiate: the plain forward
        assert_close(PF.cross_entropy(x, t, grad_in_forward=True), TF.cross_entropy(x, t))
    buffer = torch.empty_like(x)
    for reduction in (1, 2):
        opcheck(torch.ops.pyops.cross_entropy_grad_in_forward,
                (x.detach(), t, None, reduction, -100, 0.1, buffer))
    opcheck(torch.ops.pyops.scale_unless_one_, (buffer, torch.tensor(2.0, device=device)))
    with pytest.raises(RuntimeError, match="reduction 'mean' or 'sum'"):
        torch.ops.pyops.cross_entropy_grad_in_forward(x.detach(), t, None, 0, -100, 0.0, buffer)
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(PF.cross_entropy(x * 1, t, grad_in_forward=True), x,
                            create_graph=True)
    with pytest.raises(RuntimeError, match="must not require grad"):  # a tensor of a graph
        torch.ops.pyops.cross_entropy_grad_in_forward(x, t, None, 1, -100, 0.0, x.exp())
    # logits that another backward saved (tanh's output) are seen to be overwritten
    logits = torch.tanh(x)
    loss = PF.cross_entropy(logits, t, grad_in_forward=True, overwrite_input=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    logits = x * 1  # the gradient's buffer, modified after the forward
    loss = PF.cross_entropy(logits, t, grad_in_forward=True, overwrite_input=True)
    logits.detach().mul_(2)
    with pytest.raises(RuntimeError, match="modified in place after the forward"):
        loss.backward()


@device_params
@pytest.mark.parametrize("overwrite", [False, True])
def test_grad_in_forward_compiles(device, overwrite):
    from torch._dynamo import compiled_autograd

    def f(x, t):
        return PF.cross_entropy(x * 2, t, grad_in_forward=True, overwrite_input=overwrite)

    t, _ = class_targets((8, 9), 1, device, "default")
    x = make_tensor((8, 9), torch.float32, device).requires_grad_()
    assert_compiles_like_eager(f, x, t)
    (expected,) = torch.autograd.grad(TF.cross_entropy(x * 2, t) * 3, x)
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        (f(x, t) * 3).backward()
    assert_close(x.grad, expected, torch.float32)


# ---- errors ------------------------------------------------------------------------------------

def bad_calls(device):
    x = make_tensor((4, 5), torch.float32, device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    out_of_range = [
        ("target above range", IndexError, lambda f: f(x, torch.tensor([0, 1, 5, 2], device=device))),
        ("negative target", IndexError, lambda f: f(x, torch.tensor([0, -3, 1, 2], device=device))),
    ] if checks_values_on_host(device) else []
    return out_of_range + [
        ("int32 target", RuntimeError, lambda f: f(x, t.int())),
        ("weight size", RuntimeError, lambda f: f(x, t, weight=torch.ones(3, device=device))),
        ("weight dtype", RuntimeError, lambda f: f(x, t, weight=torch.ones(5, dtype=torch.float64, device=device))),
        ("reduction", ValueError, lambda f: f(x, t, reduction="avg")),
        ("batch mismatch", ValueError, lambda f: f(x, torch.tensor([0, 1, 2], device=device))),
        ("target dims", RuntimeError, lambda f: f(make_tensor((2, 5, 3), torch.float32, device),
                                                 torch.zeros(2, 4, dtype=torch.long, device=device))),
        ("integer input", RuntimeError, lambda f: f(torch.ones(4, 5, dtype=torch.long, device=device), t)),
    ]


@device_params
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_errors_like_torch(device, name):
    ours, theirs = getattr(PF, name), getattr(TF, name)
    for what, exc, call in bad_calls(device):
        assert_raises_like_torch(exc, call, ours, theirs)


@device_params
def test_cross_entropy_specific_errors(device):
    x = make_tensor((4, 5), torch.float32, device)
    t = torch.tensor([0, 1, 4, 2], device=device)
    with pytest.raises(RuntimeError, match="label_smoothing must be between"):
        PF.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="label_smoothing must be between"):
        PF.cross_entropy(x, t, label_smoothing=-0.1)
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        PF.cross_entropy(x, torch.rand(4, 5, device=device), ignore_index=1)
    with pytest.raises(RuntimeError, match="floating point type"):
        PF.cross_entropy(x, torch.zeros(4, 5, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        PF.cross_entropy(x, t, weight=torch.ones(5, device=device, requires_grad=True))
    if not checks_values_on_host(device):
        return
    with pytest.raises(IndexError, match="out of bounds"):  # the op itself checks too
        torch.ops.pyops.cross_entropy(x, torch.tensor([9, 0, 0, 0], device=device), None, 1, -100, 0.0)
    with pytest.raises(IndexError, match="out of bounds"):
        torch.ops.pyops.nll_loss_backward(torch.ones((), device=device), x,
                                          torch.tensor([9, 0, 0, 0], device=device), None, 1, -100)


def test_legacy_size_average_and_reduce():
    x = make_tensor((4, 5), torch.float32, "cpu")
    t = torch.tensor([0, 1, 4, 2])
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert_close(PF.cross_entropy(x, t, size_average=size_average, reduce=reduce),
                         TF.cross_entropy(x, t, size_average=size_average, reduce=reduce))
            assert_close(PF.nll_loss(x, t, size_average=size_average, reduce=reduce),
                         TF.nll_loss(x, t, size_average=size_average, reduce=reduce))


@device_params
def test_modules_match_torch(device):
    x = make_tensor((6, 5), torch.float32, device)
    t_default, _ = class_targets((6, 5), 1, device, "default")
    t_two, _ = class_targets((6, 5), 1, device, "in_range")
    w = weights(5, torch.float32, device)
    for t, kw in [(t_default, {}), (t_default, dict(weight=w, reduction="sum", label_smoothing=0.1)),
                  (t_two, dict(ignore_index=2, reduction="none"))]:
        ours, theirs = pyops.nn.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)
        assert_close(ours(x, t), theirs(x, t))
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        nll_kw = {k: v for k, v in kw.items() if k != "label_smoothing"}
        assert_close(pyops.nn.NLLLoss(**nll_kw)(x, t), torch.nn.NLLLoss(**nll_kw)(x, t))
