"""Every row of the op table (pyops.table), generically: values and gradients against its torch
twin, gradcheck and gradgradcheck, opcheck of every pyops operator it reaches, torch.compile
with fullgraph, compiled autograd, patch(), the module twin and convert(), integer inputs, and
CUDA against CPU. A row added to the table is tested here without a line added."""

import inspect
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch.library import opcheck
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import pyops
from helpers import DEVICES, FLOAT_DTYPES, HALF_DTYPES, assert_results_match, device_params
from pyops._ops import ops
from pyops.table import OPS, samples

rows = pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)


class PyopsCalls(TorchDispatchMode):
    """Records the pyops operators called below autograd, with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "pyops":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))

    @property
    def names(self):
        return {func._schema.name.split("::")[1] for func, _, _ in self.calls}


def _floating(args):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


def _with_grad(args, wanted):
    """args with the tensors at `wanted` fresh leaves requiring grad, the others detached."""
    return [a.detach().clone().requires_grad_() if i in wanted else
            a.detach() if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]


def _results(fn, args, kwargs, wanted, dtype=None):
    """fn's output and the gradients of args[i] for i in wanted, for a fixed upstream gradient
    (of values that `dtype` holds exactly, when given)."""
    leaves = _with_grad(args, wanted)
    out = fn(*leaves, **kwargs)
    gen = torch.Generator().manual_seed(1)
    up = torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5
    up = up.to(dtype or out.dtype).to(out)
    grads = torch.autograd.grad(out, [leaves[i] for i in wanted], up, allow_unused=True)
    return [out.detach(), *grads]


@device_params
@rows
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_values_and_gradients_match_torch(device, op, dtype):
    """Half types by the half-type rule: no less accurate than torch's own half result against
    float64 (or, where torch has no kernel for the type, than torch in float32 rounded once)."""
    for args, kwargs in samples(op, dtype, device):
        wanted = _floating(args)
        ours = _results(op.function, args, kwargs, wanted, dtype)
        exact = _results(op.torch_fn, [a.double() if i in wanted else a for i, a in enumerate(args)],
                         kwargs, wanted, dtype)
        try:
            theirs = _results(op.torch_fn, args, kwargs, wanted, dtype)
        except (RuntimeError, NotImplementedError):
            assert dtype in HALF_DTYPES
            wide = [a.float() if i in wanted else a for i, a in enumerate(args)]
            theirs = [r.to(dtype) for r in _results(op.torch_fn, wide, kwargs, wanted, dtype)]
        assert_results_match(ours, theirs, exact, dtype)


@device_params
@rows
def test_gradcheck_and_gradgradcheck(device, op):
    for args, kwargs in [s for s in samples(op, torch.float64, device) if s[0][0].numel()][:4]:
        leaves = _with_grad(args, _floating(args))
        fn = lambda *a: op.function(*a, **kwargs)  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves)
        if op.double_backward:
            assert torch.autograd.gradgradcheck(fn, leaves)
        else:
            with pytest.raises(RuntimeError, match="double backward"):
                torch.autograd.gradgradcheck(fn, leaves)


@device_params
@rows
def test_forward_mode_ad_is_refused(device, op):
    """No operator has a forward-mode derivative: a dual input raises, with or without grad,
    rather than losing its tangent."""
    import torch.autograd.forward_ad as fwAD

    args, kwargs = samples(op, torch.float32, device)[-1]
    for requires_grad in (False, True):
        with fwAD.dual_level():
            dual = fwAD.make_dual(args[0].detach().requires_grad_(requires_grad),
                                  torch.ones_like(args[0]))
            with pytest.raises(RuntimeError, match="forward-mode AD is not supported"):
                op.function(dual, *args[1:], **kwargs)


def _reached(op, args, kwargs):
    """The pyops calls a forward and second-order backward of `op` make."""
    leaves = _with_grad(args, _floating(args))
    with PyopsCalls() as mode:
        out = op.function(*leaves, **kwargs)
        grads = torch.autograd.grad(out.sum(), [a for a in leaves if isinstance(a, torch.Tensor)
                                                and a.requires_grad],
                                    create_graph=op.double_backward)
        if op.double_backward:
            torch.autograd.grad(sum(g.sum() for g in grads), leaves[0], allow_unused=True)
    return mode


@device_params
@rows
def test_opcheck_every_operator_reached(device, op):
    """opcheck of each pyops operator the op's forward, backward and double backward call, with
    the arguments they were called with: no tensor, each floating tensor alone, and all of them
    requiring grad."""
    args, kwargs = samples(op, torch.float32, device)[-1]
    seen = set()
    for func, call_args, call_kwargs in _reached(op, args, kwargs).calls:
        if func in seen:
            continue
        seen.add(func)
        floating = _floating(call_args)
        for wanted in [[], *([i] for i in floating), floating]:
            opcheck(func, tuple(_with_grad(call_args, wanted)), call_kwargs)


@device_params
@rows
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(device, op, dynamic):
    """Static shapes for the last sample; with dynamic shapes (as torch.compile recompiles once
    a shape changes), every variant of it: the backwards are traced with symbolic sizes."""
    for args, kwargs in samples(op, torch.float32, device)[-len(op.variants) if dynamic else -1:]:
        wanted = _floating(args)

        def fn(*a):
            return op.function(*a, **kwargs)

        torch._dynamo.reset()  # fn's code is the same for every row: a fresh cache, no limit
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        for ours, theirs in zip(_results(compiled, args, {}, wanted),
                                _results(fn, args, {}, wanted)):
            torch.testing.assert_close(ours, theirs, equal_nan=True)  # the mean of no positions


@device_params
@rows
def test_compiled_autograd_matches_eager(device, op):
    """The backward traced by compiled autograd (the graph of every node's backward, as
    torch.compile builds it for a training step) gives eager's gradients."""
    from torch._dynamo import compiled_autograd

    args, kwargs = samples(op, torch.float32, device)[-1]
    wanted = _floating(args)
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        traced = _results(op.function, args, kwargs, wanted)
    for ours, theirs in zip(traced, _results(op.function, args, kwargs, wanted)):
        torch.testing.assert_close(ours, theirs)


class SeenByTorchFunction(TorchFunctionMode):
    """Records the pyops operators that reach __torch_function__."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "namespace", None) == "pyops":
            self.names.add(func._schema.name)
        return func(*args, **(kwargs or {}))


class Recorded(torch.Tensor):
    """A tensor subclass whose __torch_function__ records the pyops operators it meets."""
    names = set()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "namespace", None) == "pyops":
            cls.names.add(func._schema.name)
        return super().__torch_function__(func, types, args, kwargs)


@device_params
@rows
def test_torch_function_modes_and_subclasses_see_the_operators(device, op):
    """Eager calls skip torch.ops' argument parsing (pyops._C.direct), but not
    __torch_function__: a mode and a tensor subclass still meet each operator, with the values
    of a plain call."""
    args, kwargs = samples(op, torch.float32, device)[-1]
    with PyopsCalls() as plain:
        expected = op.function(*args, **kwargs)
    reached = {func._schema.name for func, _, _ in plain.calls}
    with SeenByTorchFunction() as mode:
        torch.testing.assert_close(op.function(*args, **kwargs), expected)
    assert mode.names == reached
    Recorded.names = set()
    wrapped = [a.as_subclass(Recorded) if isinstance(a, torch.Tensor) else a for a in args]
    value = op.function(*wrapped, **kwargs)
    torch.testing.assert_close(value.as_subclass(torch.Tensor), expected)
    assert Recorded.names == reached


def test_direct_calls_fall_back_to_torch_ops():
    """What pyops._C.direct does not parse itself goes to the OpOverload: keywords, Python
    types other than the schema's, ints beyond int64, with the OpOverload's errors. An argument
    torch.nn.functional refuses (a float, a bool or None for an int, anything but a tensor for a
    tensor) raises its TypeError instead."""
    x = torch.randn(3, 4)
    direct, overload = ops().softmax, torch.ops.pyops.softmax.default
    assert direct is not overload and type(direct).__name__ == "builtin_function_or_method"
    torch.testing.assert_close(direct(x, dim=1), overload(x, 1))
    torch.testing.assert_close(direct(x, np.int64(1)), overload(x, 1))
    for bad in [(x, 2**70), (x,), (x, 1, 2)]:
        with pytest.raises(Exception) as theirs:
            overload(*bad)
        with pytest.raises(type(theirs.value), match="softmax"):
            direct(*bad)
    for bad, what in [((x, 1.5), "'dim' (position 2) must be int, not float"),
                      ((x, True), "'dim' (position 2) must be int, not bool"),
                      ((x, None), "'dim' (position 2) must be int, not NoneType"),
                      ((1.0, 1), "'input' (position 1) must be Tensor, not float")]:
        with pytest.raises(TypeError, match=re.escape(f"softmax(): argument {what}")):
            direct(*bad)
    with pytest.raises(IndexError, match="out of bounds"):
        ops().cross_entropy(x, torch.tensor([0, 1, 9]), None, 1, -100, 0.0)


_NOT_THE_TYPE = (None, 1.0, 2, True, "a", [1.0, 2.0], (0,), torch.float32, np.zeros(2))


@rows
def test_arguments_of_the_wrong_type_raise_torchs_error(op):
    """Each argument of a sample call (positional, and the keywords torch's twin takes) replaced
    by values of other Python types: pyops accepts what torch accepts, and raises the exception
    type torch raises for the rest."""
    if not hasattr(TF, op.name):
        pytest.skip("torch has no twin to compare with")
    args, kwargs = samples(op, torch.float32, "cpu")[-1]
    try:
        twin = inspect.signature(getattr(TF, op.name)).parameters
    except ValueError:  # a builtin: the keywords its module twin passes
        twin = op.module_args
    names = [n for n in list(inspect.signature(op.function).parameters)[len(args):]
             if n in twin and n not in kwargs]
    calls = [([*args[:i], value, *args[i + 1:]], kwargs)
             for i in range(len(args)) for value in _NOT_THE_TYPE]
    calls += [(args, {**kwargs, name: value}) for name in names for value in _NOT_THE_TYPE]
    compared = 0
    for call_args, call_kwargs in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                op.torch_fn(*call_args, **call_kwargs)
            except Exception as err:
                # a TypeError names the refused type as torch's does ("not torch.dtype")
                refused = re.search(r", not [\w.]+$", str(err)) if type(err) is TypeError else None
                with pytest.raises(type(err), match=re.escape(refused[0]) if refused else None):
                    op.function(*call_args, **call_kwargs)
                compared += 1
                continue
            op.function(*call_args, **call_kwargs)
    assert compared >= len(args) * len(_NOT_THE_TYPE) // 2


@device_params
@rows
def test_patch_routes_torch_to_pyops(device, op):
    args, kwargs = samples(op, torch.float32, device)[-1]
    for namespace, name, *_ in op.patches:
        original = getattr(namespace, name)
        with pyops.patch(), PyopsCalls() as mode:
            patched = getattr(namespace, name)(*args, **kwargs)
        assert mode.names, f"{namespace.__name__}.{name} did not reach pyops under patch()"
        assert getattr(namespace, name) is original
        torch.testing.assert_close(patched, original(*args, **kwargs))


@device_params
@rows
def test_module_twin_and_convert(device, op):
    if op.module is None:
        assert not hasattr(torch.nn, op.name)
        return
    for args, kwargs in samples(op, torch.float32, device)[-len(op.variants):]:
        theirs = getattr(torch.nn, op.module)(**kwargs).to(device)
        ours = pyops.convert(theirs)
        assert type(ours) is getattr(pyops.nn, op.module) and isinstance(ours, type(theirs))
        assert repr(ours) == repr(theirs)
        with PyopsCalls() as mode:
            value = ours(*args)
        assert mode.names
        torch.testing.assert_close(value, theirs(*args))


@device_params
@rows
def test_integer_input_follows_torch(device, op):
    """An integer input gives torch's value, or raises torch's kind of error."""
    args, kwargs = samples(op, torch.float32, device)[-1]
    args = [args[0].round().long(), *args[1:]]
    try:
        expected = op.torch_fn(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError) as err:
        with pytest.raises(type(err)):
            op.function(*args, **kwargs)
        return
    torch.testing.assert_close(op.function(*args, **kwargs), expected)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device and a CUDA build of pyops")
@rows
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_matches_cpu(op, dtype):
    for args, kwargs in samples(op, dtype, "cpu"):
        wanted = _floating(args)
        on_cpu = _results(op.function, args, kwargs, wanted)
        on_cuda = _results(op.function, [a.cuda() for a in args], kwargs, wanted)
        assert_results_match([r.cpu() for r in on_cuda], on_cpu, on_cpu, dtype, no_worse=False)
