"""The activations of the op table against torch: values, gradients, second order,
registration, compile, in place."""

import functools

import pytest
import torch
from torch.library import opcheck

import pyops
import pyops.functional as PF
from helpers import (FLOAT_DTYPES, LAYOUTS, TOLERANCES, assert_as_accurate_as_torch, assert_close,
                     assert_compiles_like_eager, assert_within_one_ulp, device_params,
                     float32_sweep, make_tensor, special_values)
from pyops._autograd import ACTIVATIONS
from pyops.table import OPS as TABLE

ROWS = [op for op in TABLE if op.family == "activation"]
# label -> (pyops function, torch function), a pair per row and keyword variant
OPS = {op.name + "".join(f"-{k}={v}" for k, v in kw.items()):
       (functools.partial(op.function, **kw), functools.partial(op.torch_fn, **kw))
       for op in ROWS for kw in op.variants}
ROW_OF = {label: op for op in ROWS for label in OPS if label.split("-")[0] == op.name}
INPLACE = [op for op in ROWS if "inplace" in op.module_args]
SHAPES = [(), (0,), (3, 0, 5), (1,), (7,), (33, 17), (2, 3, 5, 7), (65537,), (3, 1000)]

op_params = pytest.mark.parametrize("name", list(OPS))
dtype_params = pytest.mark.parametrize("dtype", FLOAT_DTYPES)


@device_params
@op_params
@dtype_params
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_and_grads_match_torch(device, name, dtype, shape, layout):
    ours, theirs = OPS[name]
    x = make_tensor(shape, dtype, device, layout)
    x_ours = x.detach().clone().requires_grad_() if layout == "contiguous" else x.detach().requires_grad_()
    x_torch = x.detach().clone().requires_grad_()
    y_ours, y_torch = ours(x_ours), theirs(x_torch)
    x_exact = x.detach().double().requires_grad_()
    y_exact = theirs(x_exact)
    # Within the dtype's tolerance of torch, or (formulas that cancel, such as gelu's) as close
    # to float64 as torch's, element by element.
    tol = TOLERANCES[dtype]
    assert_as_accurate_as_torch(y_ours, y_torch, y_exact, atol=tol["atol"] + tol["rtol"] * 1e-30)
    assert torch.allclose(y_ours.double(), y_torch.double(), equal_nan=True, **tol) or \
        ROW_OF[name].name == "gelu"
    grad = make_tensor(shape, dtype, device, seed=1)
    (g_ours,) = torch.autograd.grad(y_ours, x_ours, grad)
    (g_torch,) = torch.autograd.grad(y_torch, x_torch, grad)
    (g_exact,) = torch.autograd.grad(y_exact, x_exact, grad.double())
    # tanh' = 1 - y*y cancels near |y| = 1, where our y and torch's may differ by up to two
    # ulps (each within one ulp of the truth; the baseline ISA uses libm): the gradient then
    # differs by up to |grad| * 2|y| * 2 ulp, with |grad| <= 4 here. For float64 the reference
    # is torch's float64 itself, no more exact than pyops: where terms of size ~|grad| cancel
    # (gelu's tanh form, whose pyops formula is the more accurate) each side rounds apart.
    eps = torch.finfo(dtype).eps
    assert_as_accurate_as_torch(g_ours, g_torch, g_exact,
                                atol=(32 if dtype == torch.float64 else 8) * eps)


@device_params
@op_params
@dtype_params
def test_special_values(device, name, dtype):
    ours, theirs = OPS[name]
    x = special_values(dtype, device)
    if name == "gelu":  # torch's CPU kernel says NaN at inf, the limit (and pyops) says inf
        assert ours(x[x == float("inf")]).item() == float("inf")
        x = x[x != float("inf")]
    x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
    x_exact = x.double().requires_grad_()
    results = [f(v) for f, v in ((ours, x_ours), (theirs, x_torch), (theirs, x_exact))]
    assert_as_accurate_as_torch(*results, atol=TOLERANCES[dtype]["atol"])
    for r in results:
        r.sum().backward()
    assert_as_accurate_as_torch(x_ours.grad, x_torch.grad, x_exact.grad,
                                atol=TOLERANCES[dtype]["atol"])


def test_tanh_within_one_ulp():
    """The float tanh of the CPU kernels (exp_of and a polynomial, not ATen's Sleef call)."""
    x = float32_sweep(-100.0, 100.0, 97)
    assert_within_one_ulp(torch.ops.pyops.tanh(x), x.double().tanh(), x)


@device_params
@op_params
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_and_gradgradcheck(device, name, layout):
    ours, _ = OPS[name]
    # relu is not differentiable at 0: keep inputs away from it.
    x = make_tensor((4, 5), torch.float64, device, layout, low=0.1, high=2.0)
    x = torch.where(torch.arange(20, device=device).reshape(4, 5) % 2 == 0, x, -x).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))


@device_params
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_backward_op_gradcheck(device, name):
    op = getattr(torch.ops.pyops, name + "_backward")
    grad = make_tensor((3, 4), torch.float64, device, seed=2).requires_grad_()
    # an output of sigmoid or tanh lies in (-1, 1); relu's must stay away from its kink at 0
    saved = make_tensor((3, 4), torch.float64, device, low=0.1, high=0.9, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(op, (grad, saved))
    assert torch.autograd.gradgradcheck(op, (grad, saved))


@device_params
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "expanded"])
def test_opcheck(device, name, layout):
    x = make_tensor((5, 6), torch.float32, device, layout).requires_grad_()
    opcheck(getattr(torch.ops.pyops, name), (x,))
    grad = make_tensor((5, 6), torch.float32, device, seed=1)
    saved = x.detach() if ACTIVATIONS[name] == "self" else getattr(torch.ops.pyops, name)(x.detach())
    opcheck(getattr(torch.ops.pyops, name + "_backward"), (grad, saved))
    opcheck(getattr(torch.ops.pyops, name + "_backward"), (grad.t().contiguous().t(), saved))


@device_params
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_opcheck_inplace(device, name):
    op = getattr(torch.ops.pyops, name + "_")
    opcheck(op, (make_tensor((5, 6), torch.float32, device),))
    opcheck(op, (make_tensor((5, 6), torch.float32, device, "sliced"),))


@device_params
@op_params
def test_compile_fullgraph_matches_eager(device, name):
    ours, _ = OPS[name]

    def f(x):
        return ours(x * 2).sum()

    assert_compiles_like_eager(f, make_tensor((8, 9), torch.float32, device).requires_grad_())


@device_params
@op_params
def test_no_grad_fn_without_requires_grad(device, name):
    ours, _ = OPS[name]
    assert ours(make_tensor((3,), torch.float32, device)).grad_fn is None
    x = make_tensor((3,), torch.float32, device).requires_grad_()
    assert ours(x).grad_fn is not None
    with torch.no_grad():
        assert ours(x).grad_fn is None


@device_params
@op_params
def test_grad_of_one_element(device, name):
    # As in the lesson: the gradient of a single output element.
    ours, theirs = OPS[name]
    a = torch.linspace(-1, 1, 10, device=device).requires_grad_()
    (g_ours,) = torch.autograd.grad(ours(a)[3], [a])
    (g_torch,) = torch.autograd.grad(theirs(a)[3], [a])
    assert_close(g_ours, g_torch)


# ---- in place (relu, silu) -------------------------------------------------------------------

inplace_params = pytest.mark.parametrize("op", INPLACE, ids=lambda op: op.name)


@device_params
@inplace_params
@dtype_params
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_inplace_values(device, op, dtype, layout):
    x = make_tensor((6, 7), dtype, device, layout)
    expected = op.torch_fn(x)
    storage_ptr = x.data_ptr()
    result = op.function(x, inplace=True)
    assert result is x and x.data_ptr() == storage_ptr
    assert_close(x, expected)


@device_params
@inplace_params
def test_inplace_autograd(device, op):
    base = make_tensor((6, 7), torch.float64, device).requires_grad_()
    ours_in, torch_in = base * 3, base * 3
    op.function(ours_in, inplace=True)
    op.torch_fn(torch_in, inplace=True)
    assert_close(ours_in, torch_in)
    grad = make_tensor((6, 7), torch.float64, device, seed=1)
    (g_ours,) = torch.autograd.grad(ours_in, base, grad)
    (g_torch,) = torch.autograd.grad(torch_in, base, grad)
    assert_close(g_ours, g_torch)


@device_params
@inplace_params
def test_inplace_on_leaf_raises_like_torch(device, op):
    leaf = make_tensor((3,), torch.float32, device).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        op.torch_fn(leaf, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        op.function(leaf, inplace=True)


# ---- integer inputs, errors ------------------------------------------------------------------

@device_params
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool])
def test_integer_inputs_follow_torch(device, dtype):
    x = torch.tensor([-3, -1, 0, 1, 2], device=device).to(dtype)
    for name, (ours, theirs) in OPS.items():
        try:
            expected = theirs(x)
        except RuntimeError as err:  # the same kind of error (NotImplementedError a subclass)
            with pytest.raises(type(err)):
                ours(x)
            continue
        result = ours(x)
        assert result.dtype == expected.dtype, name
        assert torch.allclose(result.double(), expected.double()), name


@device_params
def test_backward_op_rejects_mismatches(device):
    out = make_tensor((3, 4), torch.float32, device)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.pyops.sigmoid_backward(make_tensor((4, 3), torch.float32, device), out)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.pyops.tanh_backward(out.double(), out)


def test_complex_input_raises():
    with pytest.raises(RuntimeError, match="complex"):
        PF.sigmoid(torch.zeros(3, dtype=torch.complex64))


# ---- modules ---------------------------------------------------------------------------------

@device_params
@pytest.mark.parametrize("op", ROWS, ids=lambda op: op.name)
def test_modules_match_torch(device, op):
    x = make_tensor((4, 5), torch.float32, device)
    for kwargs in op.variants:
        ours = getattr(pyops.nn, op.module)(**kwargs)
        theirs = getattr(torch.nn, op.module)(**kwargs)
        assert_close(ours(x), op.function(x, **kwargs))  # values against torch: above
        assert repr(ours) == repr(theirs)
    if op in INPLACE:
        y = x.clone()
        getattr(pyops.nn, op.module)(inplace=True)(y)
        assert_close(y, op.torch_fn(x))
