"""CUDA kernels: agreement with the CPU kernels and torch on CUDA, no host synchronisation, the
current stream, long rows, and more than 2^31 elements. Skipped without a GPU."""

import pytest
import torch

import pyops
import pyops.functional as PF
from helpers import FLOAT_DTYPES, LAYOUTS, assert_close, make_tensor

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and pyops.build_info()["cuda"]),
    reason="needs a CUDA device and pyops built with its CUDA kernels")

ELEMENTWISE = ["sigmoid", "tanh", "relu"]
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
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((33, 17), 1), ((33, 17), 0), ((4, 1000, 3), 1),
                                       ((2, 262147), 1), ((3, 262144), -1), ((64, 5, 130), 2)])
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
