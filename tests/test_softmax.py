"""softmax and log_softmax against torch: every dim, dtypes, layouts, extremes, autograd."""

import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch.library import opcheck

import pyops
import pyops.functional as PF
from helpers import (FLOAT_DTYPES, HALF_DTYPES, LAYOUTS, assert_close, assert_compiles_like_eager,
                     assert_no_worse_than_torch, assert_raises_like_torch,
                     assert_within_one_ulp, device_params, float32_sweep, make_tensor)

OPS = {"softmax": (PF.softmax, TF.softmax), "log_softmax": (PF.log_softmax, TF.log_softmax)}
BACKWARD = {"softmax": torch.ops.aten._softmax_backward_data,
            "log_softmax": torch.ops.aten._log_softmax_backward_data}
SHAPES = [(), (0,), (4, 0, 3), (1,), (7,), (33, 17), (2, 3, 5, 7), (3, 70, 130), (2, 40000)]
CASES = [(shape, dim) for shape in SHAPES for dim in range(-max(len(shape), 1), max(len(shape), 1))]

op_params = pytest.mark.parametrize("name", list(OPS))


def check_against_torch(name, x, dim, grad):
    """pyops' output and input gradient against torch's for the same x and upstream grad."""
    ours, theirs = OPS[name]
    y_ours, y_torch = ours(x, dim), theirs(x, dim)
    g_ours = getattr(torch.ops.pyops, name + "_backward")(grad, y_torch, dim)
    g_torch = BACKWARD[name](grad, y_torch, dim, x.dtype)
    if x.dtype in HALF_DTYPES:
        wide = x.double()
        assert_no_worse_than_torch(y_ours, y_torch, theirs(wide, dim))
        assert_no_worse_than_torch(g_ours, g_torch, BACKWARD[name](grad.double(), y_torch.double(), dim, torch.float64))
    elif x.numel():
        # Both are accurate to a few ulps of the largest term: log_softmax's x - lse cancels to
        # near zero, and the backward's terms are of the size of sum(|grad|).
        eps = torch.finfo(x.dtype).eps
        x_scale = max(1.0, x.abs().max().item())
        grad_scale = max(1.0, grad.abs().sum(dim).max().item()) if x.dim() else 1.0
        assert_close(y_ours, y_torch, atol=4 * eps * x_scale if name == "log_softmax" else None)
        assert_close(g_ours, g_torch, atol=4 * eps * grad_scale)
    else:
        assert y_ours.shape == y_torch.shape and g_ours.shape == g_torch.shape


@device_params
@op_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_and_grads_match_torch(device, name, dtype, shape, dim, layout):
    x = make_tensor(shape, dtype, device, layout, low=-8, high=8)
    grad = make_tensor(shape, dtype, device, seed=1)
    check_against_torch(name, x, dim, grad)


@device_params
@op_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_autograd_path_matches_torch(device, name, dtype):
    ours, theirs = OPS[name]
    x = make_tensor((6, 9, 5), dtype, device, low=-5, high=5)
    grad = make_tensor((6, 9, 5), dtype, device, seed=1)
    for dim in (0, 1, 2):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        (ga,) = torch.autograd.grad(ours(a, dim), a, grad)
        (gb,) = torch.autograd.grad(theirs(b, dim), b, grad)
        if dtype in HALF_DTYPES:
            assert_close(ga, gb, atol=4 * torch.finfo(dtype).eps)
        else:
            assert_close(ga, gb, atol=10 * torch.finfo(dtype).eps)


def extreme_rows(dtype, device):
    big = torch.finfo(dtype).max
    inf, nan = float("inf"), float("nan")
    rows = [
        [big, -big, big, 0.0, 1.0],
        [-big, -big, -big, -big, -big],
        [-inf, 1.0, 2.0, -inf, 0.5],
        [-inf, -inf, -inf, -inf, -inf],
        [inf, 1.0, 2.0, 3.0, 4.0],
        [inf, inf, 0.0, 0.0, 0.0],
        [nan, 1.0, 2.0, 3.0, 4.0],
        [1e4, -1e4, 0.0, 1e-3, -1e-3],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    return torch.tensor(rows, dtype=dtype, device=device)


@device_params
@op_params
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_extreme_values(device, name, dtype, transpose):
    ours, theirs = OPS[name]
    x = extreme_rows(dtype, device)
    dim = 1
    if transpose:  # the same rows, reduced over the outer dim through the tile path
        x, dim = x.t().contiguous(), 0
    assert_close(ours(x, dim), theirs(x, dim), rtol=0, atol=0) if dtype == torch.float64 else \
        assert_close(ours(x, dim), theirs(x, dim), atol=torch.finfo(dtype).eps)


@device_params
@op_params
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_gradcheck_and_gradgradcheck(device, name, layout, dim):
    ours, _ = OPS[name]
    if layout == "expanded":  # gradcheck needs non-overlapping inputs: expand inside
        x = make_tensor((1, 4, 5), torch.float64, device).requires_grad_()
        fn = lambda t: ours(t.expand(3, 4, 5), dim)  # noqa: E731
    else:
        x = make_tensor((3, 4, 5), torch.float64, device, layout).requires_grad_()
        fn = lambda t: ours(t, dim)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@device_params
@op_params
@pytest.mark.parametrize("dim", [0, 1])
def test_backward_op_gradcheck(device, name, dim):
    op = getattr(torch.ops.pyops, name + "_backward")
    x = make_tensor((4, 6), torch.float64, device)
    out = OPS[name][1](x, dim).requires_grad_()
    grad = make_tensor((4, 6), torch.float64, device, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda g, y: op(g, y, dim), (grad, out))
    assert torch.autograd.gradgradcheck(lambda g, y: op(g, y, dim), (grad, out))


@pytest.mark.parametrize("dim", [0, 1])
def test_log_softmax_backward_exp_within_one_ulp(dim):
    """The float exp of the CPU rows and tiles (an inline polynomial, not ATen's Sleef call),
    read through log_softmax_backward: g = (1, 0) and y = (0, v) give -exp(v) exactly."""
    v = float32_sweep(-105.0, 90.0, 97)
    y = torch.stack([torch.zeros_like(v), v], 1)
    g = torch.stack([torch.ones_like(v), torch.zeros_like(v)], 1)
    if dim == 0:
        y, g = y.t().contiguous(), g.t().contiguous()
    out = torch.ops.pyops.log_softmax_backward(g, y, dim)
    assert_within_one_ulp(-(out[:, 1] if dim == 1 else out[1]), v.double().exp(), v)


@device_params
@op_params
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "expanded"])
@pytest.mark.parametrize("dim", [0, -1])
def test_opcheck(device, name, layout, dim):
    x = make_tensor((5, 6, 3), torch.float32, device, layout).requires_grad_()
    op = getattr(torch.ops.pyops, name)
    opcheck(op, (x, dim))
    out = op(x.detach(), dim)
    grad = make_tensor((5, 6, 3), torch.float32, device, layout, seed=1)
    opcheck(getattr(torch.ops.pyops, name + "_backward"), (grad, out, dim))


@device_params
@op_params
def test_compile_fullgraph_matches_eager(device, name):
    ours, _ = OPS[name]

    def f(x):
        return (ours(x * 2, 1) * torch.arange(9, device=x.device)).sum()

    assert_compiles_like_eager(f, make_tensor((8, 9), torch.float32, device).requires_grad_())


@device_params
def test_lesson_softmax_jacobian(device):
    # The lesson's cell: rows of the softmax Jacobian through autograd.grad.
    a = torch.tensor([0.9387, 0.6220, 0.5901], device=device, requires_grad=True)
    p_ours, p_torch = PF.softmax(a, dim=0), TF.softmax(a, dim=0)
    for i in range(3):
        (j_ours,) = torch.autograd.grad(p_ours[i], [a], retain_graph=True)
        (j_torch,) = torch.autograd.grad(p_torch[i], [a], retain_graph=True)
        assert_close(j_ours, j_torch)
    (row1,) = torch.autograd.grad(p_ours[1], [a], retain_graph=True)
    assert torch.allclose(row1, torch.tensor([-0.1230, 0.2097, -0.0868], device=device), atol=1e-4)


@op_params
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_implicit_dim_warns_and_matches_torch(name, ndim):
    ours, theirs = OPS[name]
    x = make_tensor((3, 4, 5, 2)[:ndim], torch.float32, "cpu")
    with pytest.warns(UserWarning, match="Implicit dimension choice") as record:
        y_ours = ours(x)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_torch = theirs(x)
    assert_close(y_ours, y_torch)


@pytest.mark.parametrize("module", ["Softmax", "LogSoftmax"])
def test_module_implicit_dim_warns_where_torch_does(module):
    x = make_tensor((3, 4), torch.float32, "cpu")
    places = []
    for cls in (getattr(torch.nn, module), getattr(pyops.nn, module)):
        with pytest.warns(UserWarning, match="Implicit dimension choice") as record:
            cls()(x)
        places.append((record[0].filename, record[0].lineno))
    assert places[0] == places[1]


@device_params
@op_params
def test_dtype_argument_casts_first(device, name):
    ours, theirs = OPS[name]
    x = make_tensor((4, 7), torch.bfloat16, device)
    for dtype in (torch.float32, torch.float64):
        assert_close(ours(x, 1, dtype=dtype), theirs(x, 1, dtype=dtype))


@device_params
@op_params
def test_errors_like_torch(device, name):
    ours, theirs = OPS[name]
    x = make_tensor((3, 4), torch.float32, device)
    for exc, bad in [(IndexError, lambda f: f(x, 2)), (IndexError, lambda f: f(x, -3)),
                     (RuntimeError, lambda f: f(torch.arange(4, device=device), 0))]:
        assert_raises_like_torch(exc, bad, ours, theirs)


@device_params
def test_modules_match_torch(device):
    x = make_tensor((4, 5, 6), torch.float32, device)
    for dim in (0, 1, 2, -1):
        assert_close(pyops.nn.Softmax(dim)(x), torch.nn.Softmax(dim)(x))
        assert_close(pyops.nn.LogSoftmax(dim)(x), torch.nn.LogSoftmax(dim)(x))
    assert repr(pyops.nn.Softmax(dim=1)) == repr(torch.nn.Softmax(dim=1))
    assert repr(pyops.nn.LogSoftmax(dim=-1)) == repr(torch.nn.LogSoftmax(dim=-1))
