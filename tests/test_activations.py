"""sigmoid, tanh, relu against torch: values, gradients, second order, registration, compile."""

import pytest
import torch
from torch.library import opcheck

import pyops
import pyops.functional as PF
from helpers import (FLOAT_DTYPES, LAYOUTS, assert_close, assert_compiles_like_eager,
                     device_params, make_tensor, special_values)

OPS = {
    "sigmoid": (PF.sigmoid, torch.sigmoid),
    "tanh": (PF.tanh, torch.tanh),
    "relu": (PF.relu, torch.relu),
}
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
    assert_close(y_ours, y_torch)
    grad = make_tensor(shape, dtype, device, seed=1)
    (g_ours,) = torch.autograd.grad(y_ours, x_ours, grad)
    (g_torch,) = torch.autograd.grad(y_torch, x_torch, grad)
    # tanh' = 1 - y*y cancels near |y| = 1, where our y and torch's may differ by up to two
    # ulps (each within one ulp of the truth; the baseline ISA uses libm): the gradient then
    # differs by up to |grad| * 2|y| * 2 ulp, with |grad| <= 4 here.
    assert_close(g_ours, g_torch, atol=8 * torch.finfo(dtype).eps)


@device_params
@op_params
@dtype_params
def test_special_values(device, name, dtype):
    ours, theirs = OPS[name]
    x = special_values(dtype, device)
    assert_close(ours(x), theirs(x))
    x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(x_ours).sum().backward()
    theirs(x_torch).sum().backward()
    assert_close(x_ours.grad, x_torch.grad)


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
@pytest.mark.parametrize("name", ["sigmoid_backward", "tanh_backward", "relu_backward"])
def test_backward_op_gradcheck(device, name):
    op = getattr(torch.ops.pyops, name)
    grad = make_tensor((3, 4), torch.float64, device, seed=2).requires_grad_()
    out = make_tensor((3, 4), torch.float64, device, low=0.1, high=0.9, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(op, (grad, out))
    assert torch.autograd.gradgradcheck(op, (grad, out))


@device_params
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "expanded"])
def test_opcheck(device, name, layout):
    x = make_tensor((5, 6), torch.float32, device, layout).requires_grad_()
    opcheck(getattr(torch.ops.pyops, name), (x,))
    grad = make_tensor((5, 6), torch.float32, device, seed=1)
    out = getattr(torch.ops.pyops, name)(x.detach())
    opcheck(getattr(torch.ops.pyops, name + "_backward"), (grad, out))
    opcheck(getattr(torch.ops.pyops, name + "_backward"), (grad.t().contiguous().t(), out))


@device_params
def test_opcheck_relu_inplace(device):
    opcheck(torch.ops.pyops.relu_, (make_tensor((5, 6), torch.float32, device),))
    opcheck(torch.ops.pyops.relu_, (make_tensor((5, 6), torch.float32, device, "sliced"),))


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


# ---- relu in place ------------------------------------------------------------------------

@device_params
@dtype_params
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_relu_inplace_values(device, dtype, layout):
    x = make_tensor((6, 7), dtype, device, layout)
    expected = torch.relu(x)
    storage_ptr = x.data_ptr()
    result = PF.relu(x, inplace=True)
    assert result is x and x.data_ptr() == storage_ptr
    assert_close(x, expected)


@device_params
def test_relu_inplace_autograd(device):
    base = make_tensor((6, 7), torch.float64, device).requires_grad_()
    ours_in, torch_in = base * 3, base * 3
    PF.relu(ours_in, inplace=True)
    torch.nn.functional.relu(torch_in, inplace=True)
    assert_close(ours_in, torch_in)
    grad = make_tensor((6, 7), torch.float64, device, seed=1)
    (g_ours,) = torch.autograd.grad(ours_in, base, grad)
    (g_torch,) = torch.autograd.grad(torch_in, base, grad)
    assert_close(g_ours, g_torch)


@device_params
def test_relu_inplace_on_leaf_raises_like_torch(device):
    leaf = make_tensor((3,), torch.float32, device).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        torch.nn.functional.relu(leaf, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        PF.relu(leaf, inplace=True)


# ---- integer inputs, errors ------------------------------------------------------------------

@device_params
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool])
def test_integer_inputs_follow_torch(device, dtype):
    x = torch.tensor([-3, -1, 0, 1, 2], device=device).to(dtype)
    for name, (ours, theirs) in OPS.items():
        try:
            expected = theirs(x)
        except RuntimeError as err:
            with pytest.raises(RuntimeError, match="Boolean inputs not supported"):
                ours(x)
            assert "Boolean" in str(err)
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
def test_modules_match_torch(device):
    x = make_tensor((4, 5), torch.float32, device)
    for ours, theirs in [(pyops.nn.Sigmoid(), torch.nn.Sigmoid()), (pyops.nn.Tanh(), torch.nn.Tanh()),
                         (pyops.nn.ReLU(), torch.nn.ReLU())]:
        assert_close(ours(x), theirs(x))
    assert repr(pyops.nn.ReLU(inplace=True)) == repr(torch.nn.ReLU(inplace=True))
    y = x.clone()
    pyops.nn.ReLU(inplace=True)(y)
    assert_close(y, torch.relu(x))
