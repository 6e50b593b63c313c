"""CUDA kernels: agreement with the CPU kernels and torch on CUDA, no host synchronisation, the
current stream, long rows, deterministic reductions, device-side asserts, and more than 2^31
elements. Skipped without a GPU. (The device-parametrized tests of each op family run on CUDA
too.)"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF

import pyops
import pyops.functional as PF
from helpers import FLOAT_DTYPES, LAYOUTS, TOLERANCES, assert_close, make_tensor

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and pyops.build_info()["cuda"]),
    reason="needs a CUDA device and pyops built with its CUDA kernels")

ELEMENTWISE = ["sigmoid", "tanh", "relu"]  # every activation, silu and gelu too: test_table.py
SOFTMAX = ["softmax", "log_softmax"]


def run(name, x, dim=None):
    return getattr(PF, name)(x) if dim is None else getattr(PF, name)(x, dim)


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (1023, 17), (3, 5, 7, 11), ((1 << 20) + 3,)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_elementwise_cuda_agrees_with_cpu_and_torch(name, dtype, shape, layout):
    x = make_tensor(shape, dtype, "cuda", layout, low=-30, high=30)
    got = run(name, x)
    assert got.device.type == "cuda"
    assert_close(got.cpu(), run(name, x.cpu()))
    assert_close(got, getattr(torch, name)(x))


@pytest.mark.parametrize("name", SOFTMAX)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# 65536, 65544 and 131080 (uneven slices) and 262144 take a cluster of blocks per row on sm_90.
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((33, 17), 1), ((33, 17), 0), ((4, 1000, 3), 1),
                                       ((2, 262147), 1), ((3, 262144), -1), ((64, 5, 130), 2),
                                       ((2, 65536), 1), ((2, 65544), 1), ((2, 131080), 1)])
def test_softmax_cuda_agrees_with_cpu_and_torch(name, dtype, shape, dim):
    x = make_tensor(shape, dtype, "cuda", low=-20, high=20)
    got = run(name, x, dim)
    atol = 4 * torch.finfo(dtype).eps * (20 if name == "log_softmax" else 1)
    assert_close(got.cpu(), run(name, x.cpu(), dim), atol=atol)
    assert_close(got, getattr(torch, name)(x, dim), atol=atol)
    grad = make_tensor(shape, dtype, "cuda", seed=1)
    backward = getattr(torch.ops.pyops, name + "_backward")
    assert_close(backward(grad, got, dim).cpu(), backward(grad.cpu(), got.cpu(), dim), atol=atol * 10)


@pytest.mark.parametrize("name", SOFTMAX)
def test_softmax_cuda_extremes(name):
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[3e38, -3e38, 0.0], [-inf, -inf, -inf], [inf, 1.0, 0.0], [nan, 0.0, 1.0],
                      [-inf, 1.0, 2.0]], device="cuda")
    for dim, t in ((1, x), (0, x.t().contiguous())):
        assert_close(run(name, t, dim), getattr(torch, name)(t, dim))


def test_no_host_sync_and_current_stream():
    x = make_tensor((256, 1000), torch.float32, "cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = [PF.sigmoid(x), PF.tanh(x), PF.relu(x), PF.softmax(x, 1), PF.log_softmax(x, 0)]
            outs.append(torch.ops.pyops.softmax_backward(x, outs[3], 1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    stream.synchronize()
    assert_close(outs[3], torch.softmax(x, 1))


def test_gradcheck_float64_on_cuda():
    x = make_tensor((4, 6), torch.float64, "cuda").requires_grad_()
    for name in ELEMENTWISE:
        assert torch.autograd.gradgradcheck(getattr(PF, name), (x,))
    for name in SOFTMAX:
        assert torch.autograd.gradgradcheck(lambda t: run(name, t, 1), (x,))
        assert torch.autograd.gradcheck(lambda t: run(name, t, 0), (x,))


def test_opcheck_and_compile_on_cuda():
    x = make_tensor((8, 9), torch.float32, "cuda").requires_grad_()
    for name in ELEMENTWISE + SOFTMAX:
        args = (x,) if name in ELEMENTWISE else (x, 1)
        torch.library.opcheck(getattr(torch.ops.pyops, name), args)

    def f(t):
        return PF.log_softmax(PF.tanh(t), 1).sum()

    compiled = torch.compile(f, fullgraph=True)
    assert_close(compiled(x), f(x))


@pytest.mark.slow
def test_beyond_2_31_elements_on_cuda():
    n = (1 << 31) + 4099
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").uniform_(-4, 4)
    y = PF.sigmoid(x)
    assert_close(y[-8192:], torch.sigmoid(x[-8192:]))
    del y
    rows = x[: (n // 4099) * 4099].view(-1, 4099)
    s = PF.softmax(rows, 1)
    assert_close(s[-16:], torch.softmax(rows[-16:], 1))


# ---- cross_entropy and the losses ------------------------------------------------------------

def class_targets(n, classes, ignored_every=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, classes, (n,), generator=gen)
    t[::ignored_every] = -100
    return t.cuda()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 262147), (2, 131072), (5, 1000), (4, 33, 5, 7), (1000,)])
@pytest.mark.parametrize("smoothing,weighted", [(0.0, False), (0.1, True)])
def test_cross_entropy_cuda_agrees_with_cpu(dtype, shape, smoothing, weighted):
    x = make_tensor(shape, dtype, "cuda", low=-20, high=20)
    class_dim = 0 if len(shape) == 1 else 1
    classes = shape[class_dim]
    positions = shape[:class_dim] + shape[class_dim + 1:]
    t = class_targets(max(1, x.numel() // classes), classes).reshape(positions)
    w = make_tensor((classes,), dtype, "cuda", low=0.25, high=2, seed=3) if weighted else None
    ops = torch.ops.pyops
    for reduction in (0, 1, 2):
        args = (t, w, reduction, -100, smoothing)
        cpu_args = tuple(a.cpu() if torch.is_tensor(a) else a for a in args)
        loss, lse = ops.cross_entropy(x, *args)
        loss_cpu, lse_cpu = ops.cross_entropy(x.cpu(), *cpu_args)
        assert_close(loss.cpu(), loss_cpu, dtype)
        assert_close(lse.cpu(), lse_cpu, torch.float32 if dtype != torch.float64 else dtype)
        grad = torch.full_like(loss, 0.75)
        grad_in = ops.cross_entropy_backward(grad, x, *args, lse)
        grad_in_cpu = ops.cross_entropy_backward(grad.cpu(), x.cpu(), *cpu_args, lse_cpu)
        # softmax = exp(x - lse): an ulp of lse (|lse| ~ 20 here, computed in float32 or
        # float64), which the two devices' sums may round apart, is a relative change of 20 ulps
        # in every gradient element
        opmath = torch.float64 if dtype == torch.float64 else torch.float32
        rtol = max(TOLERANCES[dtype]["rtol"], 20 * torch.finfo(opmath).eps)
        assert_close(grad_in.cpu(), grad_in_cpu, dtype, rtol=rtol)


def test_cross_entropy_probability_targets_and_nll_on_cuda():
    x = make_tensor((64, 300), torch.float32, "cuda", low=-10, high=10)
    q = torch.softmax(make_tensor((64, 300), torch.float32, "cuda", seed=2), 1)
    for kw in (dict(), dict(label_smoothing=0.2), dict(weight=torch.rand(300, device="cuda") + 0.5)):
        assert_close(PF.cross_entropy(x, q, **kw), TF.cross_entropy(x, q, **kw))
    t = class_targets(64, 300)
    logp = torch.log_softmax(x, 1)
    assert_close(PF.nll_loss(logp, t), TF.nll_loss(logp, t))


# 128256 and 131080 (uneven slices) take a cluster of blocks per row on sm_90: the plain forward,
# smoothing, probability targets, the gradient in the forward.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", [128256, 131080])
def test_cross_entropy_long_rows_on_cuda(dtype, classes):
    x = make_tensor((3, classes), dtype, "cuda", low=-20, high=20)
    t = class_targets(3, classes)
    q = torch.softmax(make_tensor((3, classes), dtype, "cuda", seed=2).float(), 1).to(dtype)
    for target, kw in ((t, dict()), (t, dict(label_smoothing=0.1)), (q, dict()),
                       (q, dict(label_smoothing=0.2))):
        expected = TF.cross_entropy(x.float(), target if target is t else target.float(), **kw)
        assert_close(PF.cross_entropy(x, target, **kw), expected.to(dtype), dtype)
    for reduction in ("mean", "sum"):
        a, b = x.clone().requires_grad_(), x.float().requires_grad_()
        loss = PF.cross_entropy(a, t, reduction=reduction, grad_in_forward=True)
        expected = TF.cross_entropy(b, t, reduction=reduction)
        (loss * 0.5).backward()
        (expected * 0.5).backward()
        assert_close(loss, expected.to(dtype), dtype)
        assert_close(a.grad, b.grad.to(dtype), dtype)


def test_losses_no_host_sync_and_current_stream():
    x = make_tensor((64, 1000), torch.float32, "cuda").requires_grad_()
    t = class_targets(64, 1000, ignored_every=7)
    w = torch.rand(1000, device="cuda") + 0.5
    y = torch.rand(64, 1000, device="cuda")
    q = torch.softmax(y, 1)
    sign = torch.sign(y - 0.5)
    margin_t = t.clamp(min=0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = [PF.cross_entropy(x, t), PF.cross_entropy(x, t, weight=w, label_smoothing=0.1),
                      PF.cross_entropy(x, t, reduction="sum"), PF.cross_entropy(x, q),
                      PF.cross_entropy(x * 1, t, grad_in_forward=True),
                      PF.nll_loss(PF.log_softmax(x, 1), t, weight=w), PF.mse_loss(x, y),
                      PF.binary_cross_entropy_with_logits(x, y, pos_weight=w),
                      PF.binary_cross_entropy(PF.sigmoid(x), y), PF.hinge_loss(x, sign),
                      PF.multi_margin_loss(x, margin_t, weight=w)]
            for loss in losses:
                loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    stream.synchronize()
    assert torch.isfinite(x.grad).all()


def test_reductions_are_deterministic():
    x = make_tensor((4096, 1000), torch.float32, "cuda")
    t = class_targets(4096, 1000)
    y = make_tensor((1 << 22,), torch.float32, "cuda", seed=2)
    z = make_tensor((1 << 22,), torch.float32, "cuda", seed=3)
    runs = [(PF.cross_entropy(x, t, label_smoothing=0.1), PF.mse_loss(y, z),
             torch.ops.pyops.cross_entropy_backward(torch.ones(()).cuda(), x, t, None, 1, -100, 0.1,
                                                    torch.ops.pyops.cross_entropy(x, t, None, 1, -100, 0.1)[1]))
            for _ in range(3)]
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)


# Bad values caught on the device: a device-side assert, as torch raises, ends the CUDA context,
# so each runs in a fresh process, next to torch's own behaviour.
DEVICE_ASSERTS = {
    "cross_entropy target above range":
        "F.cross_entropy(torch.zeros(4, 5, device='cuda'), torch.tensor([0, 5, 1, 2], device='cuda'))",
    "nll_loss negative target":
        "F.nll_loss(torch.zeros(4, 5, device='cuda'), torch.tensor([0, -3, 1, 2], device='cuda'))",
    "multi_margin_loss target":
        "F.multi_margin_loss(torch.zeros(4, 5, device='cuda'), torch.tensor([0, 9, 1, 2], device='cuda'))",
    "binary_cross_entropy input above 1":
        "F.binary_cross_entropy(torch.tensor([0.5, 1.5], device='cuda'), torch.tensor([0.0, 1.0], device='cuda'))",
}


def run_child(module, call):
    code = (f"import torch, pyops\nimport {module} as F\nprint(float({call}))\n"
            "torch.cuda.synchronize()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("what", sorted(DEVICE_ASSERTS))
def test_bad_values_trip_a_device_assert_like_torch(what):
    ours = run_child("pyops.functional", DEVICE_ASSERTS[what])
    theirs = run_child("torch.nn.functional", DEVICE_ASSERTS[what])
    assert theirs.returncode != 0 and "device-side assert" in theirs.stderr, theirs.stderr[-2000:]
    assert ours.returncode == theirs.returncode, (ours.returncode, ours.stderr[-2000:])
    assert "device-side assert" in ours.stderr, ours.stderr[-2000:]


@pytest.mark.slow
def test_cross_entropy_beyond_2_31_elements_on_cuda():
    n, classes = 16400, 131072  # n * classes > 2^31
    x = torch.empty(n, classes, dtype=torch.bfloat16, device="cuda").uniform_(-4, 4)
    x.requires_grad_()
    t = torch.randint(0, classes, (n,), device="cuda")
    loss = PF.cross_entropy(x, t, reduction="none")
    loss.sum().backward()
    tail = slice(n - 4, n)
    x_tail = x.detach()[tail].clone().requires_grad_()
    expected = TF.cross_entropy(x_tail, t[tail], reduction="none")
    expected.sum().backward()
    assert_close(loss[tail], expected)
    assert_close(x.grad[tail], x_tail.grad)
