"""Threads, memory over many calls, and tensors of more than 2^31 elements."""

import concurrent.futures
import ctypes
import ctypes.util
import gc

import pytest
import torch
import torch.nn.functional as TF

import pyops.functional as PF


def _inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 33, generator=gen)
    return {
        "x": x, "p": torch.rand(64, 33, generator=gen).clamp(0.01, 0.99),
        "y": torch.rand(64, 33, generator=gen),
        "t": torch.randint(0, 33, (64,), generator=gen),
        "x3": torch.randn(4, 33, 17, generator=gen), "t3": torch.randint(0, 33, (4, 17), generator=gen),
    }


# One forward+backward per op: name -> fn(inputs) returning (loss, input gradient). New ops add
# a line here.
FWD_BWD = {
    "sigmoid": lambda d: PF.sigmoid(d["x"]).sum(),
    "tanh": lambda d: PF.tanh(d["x"]).sum(),
    "relu": lambda d: PF.relu(d["x"]).sum(),
    "softmax": lambda d: (PF.softmax(d["x"], 1) * d["y"]).sum(),
    "log_softmax": lambda d: (PF.log_softmax(d["x3"], 1) * 0.1).sum(),
    "cross_entropy": lambda d: PF.cross_entropy(d["x"], d["t"], label_smoothing=0.1),
    "cross_entropy_nd": lambda d: PF.cross_entropy(d["x3"], d["t3"]),
    "cross_entropy_grad_in_forward": lambda d: PF.cross_entropy(d["x"] * 1, d["t"], grad_in_forward=True),
    "nll_loss": lambda d: PF.nll_loss(d["x"], d["t"]),
    "mse_loss": lambda d: PF.mse_loss(d["x"], d["y"]),
    "binary_cross_entropy": lambda d: PF.binary_cross_entropy(d["p"], d["y"]),
    "binary_cross_entropy_with_logits": lambda d: PF.binary_cross_entropy_with_logits(d["x"], d["y"]),
    "hinge_loss": lambda d: PF.hinge_loss(d["x"], d["y"].sign()),
    "multi_margin_loss": lambda d: PF.multi_margin_loss(d["x"], d["t"]),
}


def run(name, data):
    """loss and the gradient of every floating input that takes part."""
    leaves = {k: v.detach().clone().requires_grad_() if v.is_floating_point() else v for k, v in data.items()}
    loss = FWD_BWD[name](leaves)
    loss.backward()
    return [loss.detach()] + [v.grad for v in leaves.values() if torch.is_tensor(v) and v.grad is not None]


def test_concurrent_threads_give_correct_results():
    seeds = range(16)
    expected = {(name, s): run(name, _inputs(s)) for name in FWD_BWD for s in seeds}

    def work(seed):
        data = _inputs(seed)
        return {(name, seed): run(name, data) for name in FWD_BWD for _ in range(5)}

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for results in pool.map(work, list(seeds) * 2):
            for key, got in results.items():
                for a, b in zip(got, expected[key]):
                    assert torch.equal(a, b), key


def _rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FWD_BWD))
def test_memory_stays_flat(name):
    data = _inputs(0)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))

    def settle():
        gc.collect()
        libc.malloc_trim(0)
        return _rss_bytes()

    for _ in range(500):  # warm-up: allocator caches, autograd's first-call state
        run(name, data)
    before = settle()
    for _ in range(10_000):
        run(name, data)
    growth = settle() - before
    assert growth < 8 << 20, f"{name}: resident memory grew by {growth / 2**20:.1f} MiB"


# ---- more than 2^31 elements ----------------------------------------------------------------

BIG = (1 << 31) + (1 << 17)


def _tiled(rows, cols, dtype, seed=0):
    """A (rows, cols) tensor repeating one random (256, cols) block: cheap to fill."""
    block = torch.randn(256, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = torch.empty(rows, cols, dtype=dtype)
    full = rows // 256 * 256
    out[:full].view(-1, 256, cols).copy_(block.expand(full // 256, 256, cols))
    out[full:].copy_(block[: rows - full])
    return out, block


@pytest.mark.slow
def test_sigmoid_beyond_2_31_elements():
    cols = 1 << 17
    x, block = _tiled(BIG // cols, cols, torch.bfloat16)
    assert x.numel() > 2**31
    y = PF.sigmoid(x.view(-1))
    del x
    last_rows = y.view(-1, cols)[-256:]  # rows 16128.. repeat the block in order
    rows = torch.arange(y.numel() // cols - 256, y.numel() // cols) % 256
    torch.testing.assert_close(last_rows, torch.sigmoid(block[rows]), rtol=1.6e-2, atol=1e-3)


@pytest.mark.slow
def test_softmax_beyond_2_31_elements():
    rows, cols = (1 << 16) + 2, 1 << 15
    x, block = _tiled(rows, cols, torch.bfloat16, seed=1)
    assert x.numel() > 2**31
    y = PF.softmax(x, 1)
    del x
    tail = torch.arange(rows - 300, rows)
    torch.testing.assert_close(y[tail], torch.softmax(block[tail % 256], 1), rtol=1.6e-2, atol=1e-5)


@pytest.mark.slow
def test_cross_entropy_beyond_2_31_logits():
    rows, cols = (1 << 14) + 2, 1 << 17
    x, block = _tiled(rows, cols, torch.bfloat16, seed=2)
    assert x.numel() > 2**31
    t = torch.randint(0, cols, (rows,), generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    loss = PF.cross_entropy(x, t, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    tail = torch.arange(rows - 64, rows)
    ref_x = block[tail % 256].float().requires_grad_()
    ref = TF.cross_entropy(ref_x, t[tail], reduction="none")
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_x)
    torch.testing.assert_close(loss[tail].float(), ref, rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(grad[tail].float(), ref_grad, rtol=1.6e-2, atol=1e-3)
