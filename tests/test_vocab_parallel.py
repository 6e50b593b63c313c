"""cross_entropy and linear_cross_entropy with process_group (classes sharded over the ranks):
gloo on CPU, 2 ranks and 3 ranks with uneven slices, against single-process torch on the full
logits. Each rank's loss (the same bits on every rank) and its slice of the gradient (the input's
whole gradient for linear_cross_entropy); the collectives counted: one in cross_entropy's
forward and none in its backward, one per chunk and one all-reduce for linear_cross_entropy."""

import functools
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as TF

from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import loss_parallel

import pyops.functional as PF
from helpers import assert_no_worse_than_torch, on_ranks

SPLITS = {2: (6, 5), 3: (5, 2, 4)}  # classes per rank: 11 in all
CLASSES = 11
COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce",
               "broadcast", "reduce_scatter_tensor", "all_to_all_single", "gather", "scatter",
               "reduce")


VARIANTS = [(False, 0.0, False, False), (False, 0.1, True, True), (True, 0.0, False, False),
            (True, 0.2, True, False)]  # (soft, smoothing, weighted, ignored)
EXTRAS = [(0.0, None), (0.05, 2.0)]  # (lse_square_scale, softcap)
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
# (shape, dtype, soft, smoothing, weighted, ignored, reduction, lse_square_scale, softcap)
CASES = [(shape, dtype, *variant, reduction, *extra) for shape, dtype, variant, reduction, extra
         in itertools.product([(8, CLASSES), (3, CLASSES, 4), (CLASSES,)], DTYPES, VARIANTS,
                              REDUCTIONS, EXTRAS)]
# DTensor logits: the variants loss_parallel() has (no smoothing, no weight with ignored
# targets, class indices) against it as well
DTENSOR_CASES = [(shape, dtype, *variant, reduction, 0.0, None) for shape, dtype, variant, reduction
                 in itertools.product([(8, CLASSES), (3, CLASSES, 4)], DTYPES,
                                      VARIANTS + [(False, 0.0, True, False)], REDUCTIONS)]
# linear_cross_entropy: 7 positions of 5 features; (bias, positions a chunk) and the rest as above,
# float64 and float32 (half logits are rounded by the matmul, before any loss)
POSITIONS, FEATURES = 7, 5
LINEAR_CASES = [(dtype, *variant, reduction, *extra, *head)
                for dtype, variant, reduction, extra, head in itertools.product(
                    DTYPES[:2], VARIANTS, REDUCTIONS, EXTRAS, [(False, None), (True, 3)])]


def _targets(gen, logits_shape, class_dim, dtype, soft, weighted, ignored):
    if soft:
        target = torch.softmax(torch.randn(logits_shape, generator=gen, dtype=torch.float64),
                               class_dim).to(dtype)
    else:
        positions = logits_shape[:class_dim] + logits_shape[class_dim + 1:]
        target = torch.randint(0, CLASSES, positions, generator=gen)
        if ignored and target.numel() > 1:
            target.view(-1)[::3] = -100
    weight = (torch.rand(CLASSES, generator=gen, dtype=torch.float64) + 0.5).to(dtype) \
        if weighted else None
    return target, weight


def _upstream(gen, shape, reduction, dtype):
    return (torch.rand(shape if reduction == "none" else (), generator=gen,
                       dtype=torch.float64) + 0.5).to(dtype)


def problem(case, seed):
    shape, dtype, soft, eps, weighted, ignored, reduction, z, cap = case
    gen = torch.Generator().manual_seed(seed)
    class_dim = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    target, weight = _targets(gen, shape, class_dim, dtype, soft, weighted, ignored)
    kw = dict(reduction=reduction, label_smoothing=eps, lse_square_scale=z, softcap=cap)
    up = _upstream(gen, shape[:class_dim] + shape[class_dim + 1:], reduction, dtype)
    return x, target, weight, kw, up, class_dim


def linear_problem(case, seed):
    dtype, soft, eps, weighted, ignored, reduction, z, cap, bias, chunk = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(POSITIONS, FEATURES, generator=gen, dtype=torch.float64).to(dtype)
    head = (torch.randn(CLASSES, FEATURES, generator=gen, dtype=torch.float64) * 2).to(dtype)
    b = torch.randn(CLASSES, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    target, weight = _targets(gen, (POSITIONS, CLASSES), 1, dtype, soft, weighted, ignored)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk) if chunk else None
    kw = dict(reduction=reduction, label_smoothing=eps, lse_square_scale=z, softcap=cap)
    up = _upstream(gen, (POSITIONS,), reduction, dtype)
    return x, head, b, target, weight, kw, options, up


def sliced(t, class_dim, rank, split):
    if t is None:
        return None
    start = sum(split[:rank])
    return t.narrow(class_dim, start, split[rank]).clone()


def counted(calls):
    """Patches torch.distributed's collectives to count their calls in calls[0]."""
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapper(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)
        setattr(dist, name, wrapper)


def _run_counted(calls, fn, leaves, up):
    """fn() once without grad (the first call may need a second gather), then the loss and the
    gradients of leaves; with the collectives of each of the three."""
    first = calls[0]
    with torch.no_grad():
        fn()
    warm = calls[0] - first
    loss = fn()
    forward = calls[0] - first - warm
    grads = torch.autograd.grad(loss, leaves, up)
    backward = calls[0] - first - warm - forward
    return loss.detach(), [g.detach() for g in grads], (warm, forward, backward)


def run_cross_entropy(calls, rank, split):
    for i, case in enumerate(CASES):
        x, target, weight, kw, up, class_dim = problem(case, seed=i)
        soft = case[2]
        mine = sliced(x, class_dim, rank, split).requires_grad_()
        t = sliced(target, class_dim, rank, split).requires_grad_() if soft else target
        leaves = [mine, t] if soft else [mine]
        w = sliced(weight, 0, rank, split)
        yield _run_counted(calls, lambda: PF.cross_entropy(
            mine, t, w, process_group=dist.group.WORLD, **kw), leaves, up)


def _torch_has(case):
    soft, eps, weighted, ignored = case[2:6]
    return not (soft or eps or (weighted and ignored))


def run_dtensor(calls, rank, split):
    """pyops on a DTensor sharded on the class dim (torch.chunk's slices, not split), and
    torch's loss_parallel() where it has the case."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for i, case in enumerate(DTENSOR_CASES):
        x, target, weight, kw, up, class_dim = problem(case, seed=i)
        soft = case[2]
        dx = distribute_tensor(x, mesh, [Shard(class_dim)]).requires_grad_()
        dt = distribute_tensor(target, mesh, [Shard(class_dim)]).requires_grad_() if soft else target
        leaves = [dx, dt] if soft else [dx]
        dup = distribute_tensor(up, mesh, [Replicate()])
        loss, grads, counts = _run_counted(calls, lambda: PF.cross_entropy(dx, dt, weight, **kw),
                                           leaves, dup)
        theirs = None
        if _torch_has(case):
            with loss_parallel():
                twin = TF.cross_entropy(dx, dt, weight, reduction=case[6])
                theirs = (twin.full_tensor().detach(),
                          torch.autograd.grad(twin, dx, dup)[0].full_tensor())
        yield (loss.placements, loss.full_tensor(), [g.full_tensor() for g in grads], counts,
               theirs)


def run_linear_cross_entropy(calls, rank, split):
    for i, case in enumerate(LINEAR_CASES):
        x, head, bias, target, weight, kw, options, up = linear_problem(case, seed=i)
        leaves = [x.clone().requires_grad_(), sliced(head, 0, rank, split).requires_grad_()]
        if bias is not None:
            leaves.append(sliced(bias, 0, rank, split).requires_grad_())
        t = sliced(target, 1, rank, split) if case[1] else target
        w = sliced(weight, 0, rank, split)
        yield _run_counted(calls, lambda: PF.linear_cross_entropy(
            leaves[0], leaves[1], t, linear_bias=leaves[2] if bias is not None else None,
            weight=w, options=options, process_group=dist.group.WORLD, **kw), leaves, up)


def run_errors(calls, rank, split):
    """Bad input raises the same on every rank (no rank left waiting in a collective)."""
    x = torch.randn(4, split[rank])
    bad_calls = {
        "target out of range": lambda: PF.cross_entropy(
            x, torch.tensor([0, CLASSES, 1, 2]), process_group=dist.group.WORLD),
        "whole weight": lambda: PF.cross_entropy(
            x, torch.tensor([0, 1, 2, 3]), torch.ones(CLASSES), process_group=dist.group.WORLD),
    }
    def changed_in_place():
        logits = x.clone().requires_grad_() * 1
        loss = PF.cross_entropy(logits, torch.tensor([0, 1, 2, 3]),
                                process_group=dist.group.WORLD)
        logits.add_(1)
        loss.backward()

    bad_calls["logits changed before the backward"] = changed_in_place
    for name, call in bad_calls.items():
        try:
            call()
            yield name, None
        except Exception as err:
            yield name, (type(err), str(err))


RUNS = {"cross_entropy": run_cross_entropy, "linear_cross_entropy": run_linear_cross_entropy,
        "dtensor": run_dtensor, "errors": run_errors}


def run_all(rank, world):
    calls = [0]
    counted(calls)
    return {name: list(run(calls, rank, SPLITS[world])) for name, run in RUNS.items()}


def reference(x, target, weight, reduction, label_smoothing, lse_square_scale, softcap):
    logits = softcap * torch.tanh(x / softcap) if softcap else x
    lse = torch.logsumexp(logits, 0 if x.dim() == 1 else 1)
    per = TF.cross_entropy(logits, target, weight, reduction="none",
                           label_smoothing=label_smoothing)
    soft = target.is_floating_point()
    kept = torch.ones_like(lse, dtype=torch.bool) if soft else target != -100
    per = per + lse_square_scale * lse.square() * kept
    if reduction == "none":
        return per
    if reduction == "sum" or soft:
        return per.sum() if reduction == "sum" else per.sum() / lse.numel()
    w = torch.ones_like(lse) if weight is None else weight[target.clamp(min=0)]
    return per.sum() / (w * kept).sum()


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def runs(request, tmp_path_factory):
    world = request.param
    return world, on_ranks(run_all, world, tmp_path_factory.mktemp(f"world{world}"))


def _close(got, reference):
    """got against a float64 reference, to its dtype's rounding."""
    tol = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
           torch.bfloat16: dict(rtol=1e-2, atol=1e-3)}[got.dtype]
    torch.testing.assert_close(got, reference.to(got.dtype), **tol)


def _same_loss_everywhere(results):
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0])  # every rank the same bits
    return results[0][0]


def single_process(case, seed):
    """The float64 reference's loss and gradients (the input's, and a probability target's),
    and the class dim."""
    x, target, weight, kw, up, class_dim = problem(case, seed)
    soft = case[2]
    x64 = x.double().requires_grad_()
    t64 = target.double().requires_grad_() if soft else target
    expected = reference(x64, t64, None if weight is None else weight.double(), **kw)
    grads = torch.autograd.grad(expected, [x64, t64] if soft else [x64], up.double())
    return expected, grads, class_dim


@pytest.mark.parametrize("index", range(len(CASES)))
def test_cross_entropy_matches_single_process(runs, index):
    world, results = runs
    mine = [r["cross_entropy"][index] for r in results]
    expected, expected_grads, class_dim = single_process(CASES[index], seed=index)
    _close(_same_loss_everywhere(mine), expected)
    for k, want in enumerate(expected_grads):
        _close(torch.cat([m[1][k] for m in mine], class_dim), want)
    for _, _, (warm, forward, backward) in mine:
        assert warm <= 2 and forward == 1 and backward == 0, (warm, forward, backward)


@pytest.mark.parametrize("index", range(len(LINEAR_CASES)))
def test_linear_cross_entropy_matches_single_process(runs, index):
    world, results = runs
    mine = [r["linear_cross_entropy"][index] for r in results]
    case = LINEAR_CASES[index]
    x, head, bias, target, weight, kw, options, up = linear_problem(case, seed=index)
    leaves = [v.double().requires_grad_() for v in (x, head, bias) if v is not None]
    logits = TF.linear(*leaves)
    t = target.double() if case[1] else target
    expected = reference(logits, t, None if weight is None else weight.double(), **kw)
    expected_grads = torch.autograd.grad(expected, leaves, up.double())
    _close(_same_loss_everywhere(mine), expected)
    for m in mine:  # the input's gradient whole on every rank
        _close(m[1][0], expected_grads[0])
    for k, want in enumerate(expected_grads[1:], 1):
        _close(torch.cat([m[1][k] for m in mine]), want)
    chunks = -(-POSITIONS // (case[-1] or POSITIONS))
    for _, _, (warm, forward, backward) in mine:
        assert warm <= chunks + 1 and forward == chunks and backward == 1, (warm, forward,
                                                                             backward)


@pytest.mark.parametrize("index", range(len(DTENSOR_CASES)))
def test_dtensor_logits_match_single_process_and_loss_parallel(runs, index):
    world, results = runs
    mine = [r["dtensor"][index] for r in results]
    case = DTENSOR_CASES[index]
    expected, expected_grads, _ = single_process(case, seed=index)
    for placements, loss, grads, (warm, forward, backward), theirs in mine:
        assert placements == (Replicate(),)
        _close(loss, expected)
        for got, want in zip(grads, expected_grads, strict=True):
            _close(got, want)
        assert warm <= 2 and forward == 1 and backward == 0, (warm, forward, backward)
        assert (theirs is not None) == _torch_has(case)
        if theirs is not None and loss.dtype == torch.bfloat16:  # as accurate as loss_parallel()
            assert_no_worse_than_torch(loss, theirs[0], expected)
            assert_no_worse_than_torch(grads[0], theirs[1], expected_grads[0])
        elif theirs is not None:
            _close(loss, theirs[0].double())
            _close(grads[0], theirs[1].double())


def test_bad_input_raises_on_every_rank(runs):
    world, results = runs
    expected = {"target out of range": (IndexError, "Target 11 is out of bounds"),
                "whole weight": (RuntimeError, "this rank's slice of the class weights"),
                "logits changed before the backward": (RuntimeError, "modified by an inplace")}
    for r in results:
        assert {name for name, _ in r["errors"]} == set(expected)
        for name, raised in r["errors"]:
            assert raised is not None and raised[0] is expected[name][0], (name, raised)
            assert expected[name][1] in raised[1], (name, raised)


# One NCCL rank: the protocol on CUDA tensors (a GPU machine has one device)
CUDA_CASES = [case for case in CASES if case[0] == (8, CLASSES) and case[1] == torch.float32
              and case[6] == "mean"]


def run_cuda(rank, world):
    """Each case's loss and input gradient with the group and without, on the GPU."""
    pairs = []
    for case in CUDA_CASES:
        x, target, weight, kw, _, _ = problem(case, seed=0)
        head = torch.randn(CLASSES, 5, dtype=x.dtype)

        def loss_and_grad(fn, inputs, **group):
            leaf = inputs.cuda().requires_grad_()
            loss = fn(leaf, target.cuda(), None if weight is None else weight.cuda(), **group)
            return loss.detach().cpu(), torch.autograd.grad(loss, leaf)[0].cpu()

        def linear(h, t, w, **group):
            return PF.linear_cross_entropy(h, head.cuda(), t, weight=w, **kw, **group)

        for fn, inputs in ((functools.partial(PF.cross_entropy, **kw), x),
                           (linear, torch.randn(8, 5))):
            pairs.append((loss_and_grad(fn, inputs, process_group=dist.group.WORLD),
                          loss_and_grad(fn, inputs)))
    return pairs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_one_nccl_rank(tmp_path):
    for (loss, grad), (want, want_grad) in on_ranks(run_cuda, 1, tmp_path, "nccl")[0]:
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(grad, want_grad)
