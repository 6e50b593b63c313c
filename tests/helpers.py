"""Shared test helpers: devices, dtypes, tolerances, input layouts."""

import pytest
import torch
import torch.multiprocessing as mp

import pyops
from pyops._ranks import run_rank

FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HALF_DTYPES = [torch.bfloat16, torch.float16]


def devices():
    found = ["cpu"]
    if torch.cuda.is_available() and pyops.build_info()["cuda"]:
        found.append("cuda")
    return found


DEVICES = devices()
device_params = pytest.mark.parametrize("device", DEVICES)


def checks_values_on_host(device):
    """Whether bad values (a target out of range, a probability outside [0, 1]) raise a Python
    exception. On CUDA they trip a device-side assert instead, as in torch, which ends the
    process's CUDA context: tests/test_cuda.py checks those in subprocesses."""
    return device == "cpu"

# Half types compute in float32 and round once; torch sometimes rounds intermediates (e.g. its
# float16 sigmoid_backward), so they are checked to two units in the last place.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-6, atol=1e-7),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
}


def assert_close(actual, expected, dtype=None, **overrides):
    tol = dict(TOLERANCES[dtype or expected.dtype])
    tol.update({k: v for k, v in overrides.items() if v is not None})
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]


def make_tensor(shape, dtype, device, layout="contiguous", low=-4.0, high=4.0, seed=0):
    """A tensor of `shape` whose memory is laid out as `layout` says, values uniform in [low, high)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(sz):
        return (torch.rand(sz, generator=gen, dtype=torch.float64) * (high - low) + low).to(
            dtype=dtype, device=device)

    if layout == "contiguous" or len(shape) == 0:
        return rand(shape)
    if layout == "transposed":
        return rand(tuple(reversed(shape))).permute(*reversed(range(len(shape))))
    if layout == "sliced":
        return rand(tuple(shape[:-1]) + (2 * shape[-1],))[..., ::2]
    if layout == "expanded":
        return rand((1,) + tuple(shape[1:])).expand(shape)
    raise ValueError(layout)


def special_values(dtype, device):
    """Values whose handling differs between careless and careful kernels."""
    finfo = torch.finfo(dtype)
    vals = [0.0, -0.0, 1.0, -1.0, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4, finfo.max, -finfo.max,
            finfo.tiny, float("inf"), float("-inf"), float("nan")]
    return torch.tensor(vals, dtype=dtype, device=device)


def float32_sweep(lo, hi, step):
    """Every `step`-th float32 of [lo, hi] by bit pattern, and the values that end exp's range."""
    bits = torch.arange(0, torch.tensor(hi, dtype=torch.float32).view(torch.int32).item(), step,
                        dtype=torch.int32)
    positive = bits.view(torch.float32)
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 88.72283, 88.72284,
                             -87.33654, -103.9720, -103.98, -200.0])
    return torch.cat([positive, -positive[positive <= -lo], specials])


def assert_within_one_ulp(ours, exact, x):
    """float32 results of inputs x within one ulp of the float64 `exact`; equal to it rounded
    where that is 0 or not finite; NaN where x is."""
    rounded = exact.float()
    finite = torch.isfinite(rounded) & (rounded != 0)
    assert torch.equal(torch.isnan(ours), torch.isnan(x))
    assert torch.equal(ours[~finite & ~torch.isnan(x)], rounded[~finite & ~torch.isnan(x)])
    magnitude = rounded.abs()
    ulp = (torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude).double()
    assert ((ours.double() - exact).abs() / ulp)[finite].max().item() <= 1.0


def assert_no_worse_than_torch(ours, theirs, reference, slack_ulps=1):
    """For half types, where torch and pyops may round differently: pyops' largest error against
    a float64 reference computed from the same inputs is at most torch's plus `slack_ulps`."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    ref = reference.double()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    assert torch.equal(ours[~finite & ~torch.isnan(ref)].double(), ref[~finite & ~torch.isnan(ref)])
    if not finite.any():
        return
    err_ours = (ours.double() - ref)[finite].abs().max().item()
    err_torch = (theirs.double() - ref)[finite].abs().max().item()
    ulp = torch.finfo(ours.dtype).eps * max(ref[finite].abs().max().item(), 1e-30)
    assert err_ours <= err_torch + slack_ulps * ulp, (err_ours, err_torch, ulp)


def assert_as_accurate_as_torch(ours, theirs, reference, ulps=2, atol=0.0):
    """Element by element, pyops is as close to a float64 `reference` as torch is, up to `ulps`
    of the reference value plus `atol`; NaN and infinities in the same places. For formulas
    that cancel (gelu's 1 + erf(x) for x << 0), where equally good kernels round differently."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (ours.dtype, theirs.dtype)
    a, b, r = ours.double(), theirs.double(), reference.double()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    finite = torch.isfinite(r) & ~torch.isnan(b)
    assert torch.equal(a[~finite & ~torch.isnan(b)], b[~finite & ~torch.isnan(b)])
    bound = (b - r).abs() + ulps * torch.finfo(ours.dtype).eps * r.abs() + atol
    worse = finite & ((a - r).abs() > bound)
    assert not worse.any(), (a[worse][:5], b[worse][:5], r[worse][:5])


def assert_results_match(ours, theirs, reference, dtype, slack_ulps=2, atol_ulps=16,
                         no_worse=None):
    """Pairs of results (losses, gradients) of pyops and torch for the same inputs.

    With no_worse (the default for half types): NaNs in the same places, and pyops no less
    accurate than torch against a float64 `reference` computed from the same inputs, up to
    `slack_ulps` of the largest value. Otherwise: equal to torch within `atol_ulps` of the
    largest value (sums of many terms round differently).
    """
    no_worse = dtype in HALF_DTYPES if no_worse is None else no_worse
    for o, t, r in zip(ours, theirs, reference):
        assert o.dtype == t.dtype and o.shape == t.shape, (o.dtype, t.dtype, o.shape, t.shape)
        assert torch.equal(torch.isnan(o), torch.isnan(t))
        if not o.numel():
            continue
        eps = torch.finfo(dtype).eps
        scale = r.double().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max().item()
        if no_worse:
            err_o = (o.double() - r.double()).abs().nan_to_num(nan=0.0).max().item()
            err_t = (t.double() - r.double()).abs().nan_to_num(nan=0.0).max().item()
            assert err_o <= err_t + slack_ulps * eps * max(scale, 1e-3), (err_o, err_t)
        else:
            assert_close(o, t, atol=atol_ulps * eps * max(1.0, scale))


def assert_compiles_like_eager(fn, x, *rest):
    """torch.compile(fn, fullgraph=True) gives eager's value and gradient with respect to x."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (g_eager,) = torch.autograd.grad(fn(x, *rest), x)
    out = compiled(x, *rest)
    (g_compiled,) = torch.autograd.grad(out, x)
    assert_close(out, fn(x, *rest))
    assert_close(g_compiled, g_eager)


def assert_raises_like_torch(exc, call, ours, theirs):
    """call(theirs) raises exc, and so does call(ours)."""
    with pytest.raises(exc):
        call(theirs)
    with pytest.raises(exc):
        call(ours)


def _rank(rank, world, backend, store, out, fn):
    run_rank(rank, world, store, lambda: torch.save(fn(rank, world), f"{out}/rank{rank}.pt"),
             backend)


def on_ranks(fn, world, tmp, backend="gloo"):
    """fn(rank, world) in world spawned processes joined by a process group (fn defined at a
    module's top level); what each returned, in rank order."""
    mp.spawn(_rank, args=(world, backend, str(tmp / "store"), str(tmp), fn), nprocs=world,
             join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
