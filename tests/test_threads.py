"""Every CPU kernel on every core: each operator runs on more than one of torch's intra-op
threads, honours torch.set_num_threads, and gives the same bits whatever the thread count."""

import contextlib
import sys

import pytest
import torch

import pyops
from pyops._autograd import ACTIVATIONS

ops = torch.ops.pyops
MEAN, SUM, NONE = 1, 2, 0


def _rand(*shape, dtype=torch.float32, seed=0, low=-4.0, high=4.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)


def _heavy(*shape, seed=0):
    """Magnitudes over many decades: a sum over them rounds differently in another order."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * torch.exp(5 * torch.randn(shape, generator=gen))


def _targets(positions_shape, classes, seed=1, ignore_every=7):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, classes, positions_shape, generator=gen)
    if ignore_every:
        t.view(-1)[::ignore_every] = -100
    return t


def _probs(*shape, dim=1):
    return torch.softmax(_rand(*shape, seed=5), dim)


# Operator calls at sizes from which torch splits its own kernels across threads (a few times
# ATen's grain of 32768 elements). name -> (operator, fn() returning the call's result).
# Each path of a kernel gets its own case: rows, column tiles, few rows longer than a thread's
# share (split within the row), half types.
def _head():
    """input (300, 64), linear_weight (1000, 64), linear_bias and targets of a linear_cross_entropy."""
    return (_rand(300, 64, low=-1, high=1), _rand(1000, 64, seed=1, low=-1, high=1),
            _rand(1000, seed=2), _targets((300,), 1000))


N = 5 << 15  # five of the losses' 32768-element sum blocks: one for each of three threads
CASES = {
    "sigmoid_bf16": ("sigmoid", lambda: ops.sigmoid(_rand(N, dtype=torch.bfloat16))),
    "relu_int": ("relu", lambda: ops.relu(torch.arange(-N, N))),
    "softmax_rows": ("softmax", lambda: ops.softmax(_rand(256, 1000), 1)),
    "softmax_tiles": ("softmax", lambda: ops.softmax(_rand(8, 500, 256), 1)),
    "softmax_few_tiles": ("softmax", lambda: ops.softmax(_rand(20000, 48), 0)),
    "softmax_long_rows": ("softmax", lambda: ops.softmax(_rand(2, 300000), 1)),
    "softmax_long_rows_bf16": ("softmax", lambda: ops.softmax(_rand(1, 300000, dtype=torch.bfloat16), 1)),
    "softmax_backward": ("softmax_backward",
                         lambda: ops.softmax_backward(_rand(256, 1000), _rand(256, 1000, seed=1), 1)),
    "softmax_backward_long_rows": ("softmax_backward", lambda: ops.softmax_backward(
        _rand(2, 300000), _rand(2, 300000, seed=1), 1)),
    "log_softmax_rows": ("log_softmax", lambda: ops.log_softmax(_rand(256, 1000), 1)),
    "log_softmax_long_rows": ("log_softmax", lambda: ops.log_softmax(_rand(2, 300000), 1)),
    "log_softmax_tiles_half": ("log_softmax", lambda: ops.log_softmax(_rand(500, 300, dtype=torch.half), 0)),
    "log_softmax_backward": ("log_softmax_backward", lambda: ops.log_softmax_backward(
        _rand(8, 500, 256), _rand(8, 500, 256, seed=1), 1)),
    "cross_entropy_rows": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(256, 1000), _targets((256,), 1000), None, MEAN, -100, 0.1)),
    "cross_entropy_long_rows": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(2, 300000), torch.tensor([5, 299999]), _rand(300000, low=0.5, high=2), SUM, -100, 0.2)),
    "cross_entropy_probs": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(256, 1000), _probs(256, 1000), None, MEAN, -100, 0.0)),
    "cross_entropy_tiles": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(8, 500, 256), _targets((8, 256), 500), None, NONE, -100, 0.0)),
    "cross_entropy_few_tiles": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(1, 20000, 48), _targets((1, 48), 20000), None, MEAN, -100, 0.1)),
    "cross_entropy_many_positions": ("cross_entropy", lambda: ops.cross_entropy(
        _heavy(N, 4), _targets((N,), 4), None, MEAN, -100, 0.3)),
    # z-loss and softcap: the logits capped in a per-thread copy of each row or tile
    "cross_entropy_zloss_softcap_rows": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(256, 1000), _targets((256,), 1000), None, MEAN, -100, 0.1, 1e-3, 2.0)),
    "cross_entropy_zloss_softcap_long_rows": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(2, 300000), torch.tensor([5, 299999]), None, SUM, -100, 0.0, 1e-3, 2.0)),
    "cross_entropy_zloss_softcap_tiles": ("cross_entropy", lambda: ops.cross_entropy(
        _rand(8, 500, 256), _targets((8, 256), 500), None, NONE, -100, 0.0, 1e-3, 2.0)),
    "cross_entropy_backward_zloss_softcap": ("cross_entropy_backward", lambda: ops.cross_entropy_backward(
        torch.tensor(1.0), _rand(8, 500, 256), _targets((8, 256), 500), None, MEAN, -100, 0.1,
        torch.logsumexp(2 * torch.tanh(_rand(8, 500, 256) / 2), 1), 1e-3, 2.0)),
    "cross_entropy_backward": ("cross_entropy_backward", lambda: ops.cross_entropy_backward(
        torch.tensor(1.0), _rand(256, 1000), _targets((256,), 1000), None, MEAN, -100, 0.1,
        torch.logsumexp(_rand(256, 1000), 1))),
    "cross_entropy_backward_long_rows": ("cross_entropy_backward", lambda: ops.cross_entropy_backward(
        torch.tensor(1.0), _rand(2, 300000), torch.tensor([5, 299999]), None, MEAN, -100, 0.0,
        torch.logsumexp(_rand(2, 300000), 1))),
    "cross_entropy_grad_in_forward": ("cross_entropy_grad_in_forward", lambda: (
        lambda x: (ops.cross_entropy_grad_in_forward(
            x, _targets((256,), 1000), None, MEAN, -100, 0.0, g := torch.empty_like(x)), g))(
        _rand(256, 1000))),
    "cross_entropy_grad_in_forward_in_place_bf16": ("cross_entropy_grad_in_forward", lambda: (
        lambda x: (ops.cross_entropy_grad_in_forward(
            x, _targets((256,), 1000), None, SUM, -100, 0.1, x), x))(
        _rand(256, 1000, dtype=torch.bfloat16))),
    # host code: ATen's matmuls and the cross-entropy kernels, a chunk of 128 rows at a time
    "linear_cross_entropy": ("linear_cross_entropy", lambda: ops.linear_cross_entropy(
        *_head(), None, NONE, -100, 0.1, 128)),
    "linear_cross_entropy_grads": ("linear_cross_entropy_grads", lambda: ops.linear_cross_entropy_grads(
        *_head(), None, MEAN, -100, 0.1, 128, [True, True, True])),
    "linear_cross_entropy_backward": ("linear_cross_entropy_backward",
                                      lambda: ops.linear_cross_entropy_backward(
        _rand(300, seed=4), *_head(), None, NONE, -100, 0.0, 128, [True, True, True])),
    "nll_loss": ("nll_loss", lambda: ops.nll_loss(_heavy(N, 3), _targets((N,), 3), None, SUM, -100)),
    "nll_loss_mean": ("nll_loss", lambda: ops.nll_loss(_heavy(N, 3), _targets((N,), 3), _rand(3, high=2), MEAN, -100)),
    "nll_loss_backward": ("nll_loss_backward", lambda: ops.nll_loss_backward(
        torch.ones(N), _rand(N, 3), _targets((N,), 3), _rand(3, high=2), NONE, -100)),
    "mse_loss": ("mse_loss", lambda: ops.mse_loss(_rand(N), _rand(N, seed=1), None, MEAN)),
    "mse_loss_weighted": ("mse_loss", lambda: ops.mse_loss(_rand(N), _rand(N, seed=1), _heavy(N, seed=2), MEAN)),
    "mse_loss_heavy": ("mse_loss", lambda: ops.mse_loss(_heavy(N), _heavy(N, seed=1), None, SUM)),
    "mse_loss_backward": ("mse_loss_backward", lambda: ops.mse_loss_backward(
        torch.tensor(2.0), _rand(N), _rand(N, seed=1), None, MEAN)),
    "bce_with_logits": ("binary_cross_entropy_with_logits", lambda: ops.binary_cross_entropy_with_logits(
        _rand(N), _rand(N, low=0, high=1), None, _rand(N, seed=2, low=0, high=3), SUM)),
    "bce_with_logits_backward": ("binary_cross_entropy_with_logits_backward",
                                 lambda: ops.binary_cross_entropy_with_logits_backward(
        _rand(N), _rand(N), _rand(N, low=0, high=1), None, None, NONE)),
    "bce": ("binary_cross_entropy", lambda: ops.binary_cross_entropy(
        _rand(N, low=0.01, high=0.99), _rand(N, low=0, high=1), None, MEAN)),
    "bce_backward": ("binary_cross_entropy_backward", lambda: ops.binary_cross_entropy_backward(
        torch.tensor(1.0), _rand(N, low=0.01, high=0.99), _rand(N, low=0, high=1), None, SUM)),
    "hinge_loss": ("hinge_loss", lambda: ops.hinge_loss(_rand(N), _rand(N).sign(), 1.0, MEAN)),
    "hinge_loss_backward": ("hinge_loss_backward", lambda: ops.hinge_loss_backward(
        torch.tensor(1.0), _rand(N), _rand(N).sign(), 1.0, MEAN)),
    "multi_margin_loss": ("multi_margin_loss", lambda: ops.multi_margin_loss(
        _rand(2048, 100), _targets((2048,), 100, ignore_every=None), 1, 1.0, None, MEAN)),
    "multi_margin_loss_backward": ("multi_margin_loss_backward", lambda: ops.multi_margin_loss_backward(
        torch.tensor(1.0), _rand(2048, 100), _targets((2048,), 100, ignore_every=None), 2, 1.0, None, SUM)),
}

# Every activation of csrc/activations.h, its in-place form and its backward.
for _name in ACTIVATIONS:
    CASES[_name] = (_name, lambda op=getattr(ops, _name): op(_rand(N)))
    CASES[_name + "_"] = (_name + "_", lambda op=getattr(ops, _name + "_"): (lambda x: (op(x), x)[1])(_rand(N)))
    CASES[_name + "_backward"] = (_name + "_backward", lambda op=getattr(ops, _name + "_backward"):
                                  op(_rand(N), _rand(N, seed=1)))

# Operators whose CPU kernel does no elementwise work of its own.
NO_KERNEL_WORK = {
    "scale_unless_one_": "reads one element, then calls torch's own (threaded) mul_ unless it is 1",
}


def _pyops_cpu_operators():
    names = [n[len("pyops::"):] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyops::")]
    return sorted(n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(f"pyops::{n}", "CPU"))


@contextlib.contextmanager
def num_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _flat_bits(result):
    """Every tensor in result as raw bytes, so -0.0 and NaN payloads count too."""
    tensors = result if isinstance(result, (tuple, list)) else [result]
    return [t.detach().contiguous().view(-1).view(torch.uint8).clone() for t in tensors if torch.is_tensor(t)]


needs_parallel_build = pytest.mark.skipif(
    not pyops.build_info()["cpu_parallel"], reason="this build's CPU kernels are serial (no OpenMP)")


def test_build_is_parallel_where_torch_is():
    assert pyops.build_info()["cpu_parallel"] == torch.backends.openmp.is_available()


def test_every_cpu_operator_has_a_case():
    covered = {op for op, _ in CASES.values()} | set(NO_KERNEL_WORK)
    missing = sorted(set(_pyops_cpu_operators()) - covered)
    assert not missing, f"no thread case for {missing}: add one to CASES"


@needs_parallel_build
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_thread_takes_part(case, threads):
    _, call = CASES[case]
    with num_threads(threads):
        _, used = pyops._cpu.threads_used(call)
    assert used == set(range(threads)), f"{case} ran on threads {sorted(used)} of {threads}"


@pytest.mark.parametrize("case", ["sigmoid", "softmax_long_rows", "cross_entropy_rows"])
def test_one_thread_when_torch_is_told_one(case):
    _, call = CASES[case]
    with num_threads(1):
        _, used = pyops._cpu.threads_used(call)
    assert used == {0}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bits_at_one_two_and_three_threads(case):
    _, call = CASES[case]
    results = {}
    for threads in (1, 2, 3):
        with num_threads(threads):
            results[threads] = _flat_bits(call())
    for threads in (2, 3):
        assert len(results[threads]) == len(results[1])
        for got, want in zip(results[threads], results[1]):
            assert torch.equal(got, want), f"{case}: {threads} threads differ from one"


def test_cases_would_catch_a_sum_split_by_thread_count():
    """The heavy-tailed cases above are sensitive: torch's own sum of them changes with threads."""
    x = _heavy(N, 3)[:, 0]
    sums = set()
    for threads in (1, 2, 3):
        with num_threads(threads):
            sums.add(x.sum().item())
    assert len(sums) > 1


def test_few_long_rows_use_every_thread_and_keep_their_bits():
    """Fewer rows than threads: each row is split across the threads (4 rows on 3 threads here,
    as 4 x 1,000,000 on 64 would be), with the same result as row by row on one thread."""
    x = _rand(2, 1_000_000, seed=3)
    t = torch.tensor([0, 999_999])
    with num_threads(1):
        want = _flat_bits(ops.cross_entropy(x, t, None, SUM, -100, 0.1)) + _flat_bits(ops.softmax(x, 1))
    with num_threads(3):
        (loss, lse), used_ce = pyops._cpu.threads_used(lambda: ops.cross_entropy(x, t, None, SUM, -100, 0.1))
        y, used_softmax = pyops._cpu.threads_used(lambda: ops.softmax(x, 1))
    if pyops.build_info()["cpu_parallel"]:
        assert used_ce == used_softmax == {0, 1, 2}
    for got, w in zip(_flat_bits((loss, lse)) + _flat_bits(y), want):
        assert torch.equal(got, w)
    torch.testing.assert_close(y, torch.softmax(x, 1))


def test_errors_raised_on_worker_threads_keep_their_type():
    x = _rand(N, 3)
    t = torch.zeros(N, dtype=torch.long)
    t[-1] = 3  # out of range, met by the last thread
    with num_threads(3), pytest.raises(IndexError, match="Target 3 is out of bounds"):
        ops.nll_loss(x, t, None, MEAN, -100)


def test_a_torch_other_than_the_built_one_is_refused_by_name(monkeypatch):
    from pyops import _loader

    built = type(sys)("pyops._built_for")
    built.TORCH_VERSION, built.TORCH_CUDA = "2.0.1", None
    monkeypatch.setitem(sys.modules, "pyops._built_for", built)
    with pytest.raises(ImportError) as err:
        _loader._check_torch()
    text = str(err.value)
    assert "2.0.1" in text and torch.__version__ in text and "--no-build-isolation" in text
    built.TORCH_VERSION = torch.__version__
    _loader._check_torch()
