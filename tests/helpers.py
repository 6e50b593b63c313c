"""Shared test helpers: devices, dtypes, tolerances, input layouts."""

import pytest
import torch

import pyops

FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HALF_DTYPES = [torch.bfloat16, torch.float16]


def devices():
    found = ["cpu"]
    if torch.cuda.is_available() and pyops.build_info()["cuda"]:
        found.append("cuda")
    return found


DEVICES = devices()
device_params = pytest.mark.parametrize("device", DEVICES)

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
    tol.update(overrides)
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
