"""What the suite measures: one Case per op × direction × dtype × shape.

A case knows the minimum bytes its op must move (each input read once, each output written
once) and builds, on demand, one zero-argument function per implementation.
"""

import dataclasses
import functools
from typing import Callable

import torch

import pyops.functional as PF

import torch.nn.functional as TF

aten = torch.ops.aten
ops = torch.ops.pyops


@dataclasses.dataclass
class Config:
    device: str
    dtypes: list
    peers: list          # besides pyops: "torch" always, "torch.compile" with --compile
    size_filter: set     # shape labels to keep; empty keeps all
    quick: bool


@dataclasses.dataclass
class Case:
    op: str
    direction: str       # "fwd", "bwd" or "fwd+bwd"
    dtype: torch.dtype
    shape: tuple
    params: str          # op arguments that are not shape or dtype, e.g. "dim=1"
    nbytes: int
    build: Callable      # (Config) -> {implementation name: zero-argument function}

    @property
    def label(self):
        return shape_label(self.shape)


def shape_label(shape):
    if len(shape) == 1 and shape[0] & (shape[0] - 1) == 0:
        return f"2^{shape[0].bit_length() - 1}"
    return "x".join(str(s) for s in shape)


def _compiled(fn):
    # A fresh cache per case: each shape and dtype compiles once, never hitting the recompile limit.
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _with_peers(cfg, torch_fn, pyops_fn, args):
    fns = {"torch": functools.partial(torch_fn, *args), "pyops": functools.partial(pyops_fn, *args)}
    if "torch.compile" in cfg.peers:
        fns["torch.compile"] = functools.partial(_compiled(torch_fn), *args)
    return fns


# ---- activations --------------------------------------------------------------------------

ACTIVATIONS = {
    # name: (torch forward, torch backward from the output, pyops forward, pyops backward)
    "sigmoid": (torch.sigmoid, aten.sigmoid_backward, ops.sigmoid, ops.sigmoid_backward),
    "tanh": (torch.tanh, aten.tanh_backward, ops.tanh, ops.tanh_backward),
    "relu": (torch.relu, lambda g, y: aten.threshold_backward(g, y, 0), ops.relu, ops.relu_backward),
}


def _activation_fwd(name, n, dtype, cfg):
    torch_fwd, _, pyops_fwd, _ = ACTIVATIONS[name]
    x = torch.randn(n, dtype=dtype, device=cfg.device)
    return _with_peers(cfg, torch_fwd, pyops_fwd, (x,))


def _activation_bwd(name, n, dtype, cfg):
    torch_fwd, torch_bwd, _, pyops_bwd = ACTIVATIONS[name]
    grad = torch.randn(n, dtype=dtype, device=cfg.device)
    out = torch_fwd(torch.randn(n, dtype=dtype, device=cfg.device))
    return _with_peers(cfg, torch_bwd, pyops_bwd, (grad, out))


def activation_cases(cfg):
    exponents = (16, 20) if cfg.quick else (16, 18, 20, 22, 24, 26)
    for name in ACTIVATIONS:
        for dtype in cfg.dtypes:
            size = dtype.itemsize
            for e in exponents:
                n = 1 << e
                yield Case(name, "fwd", dtype, (n,), "", 2 * n * size,
                           functools.partial(_activation_fwd, name, n, dtype))
                yield Case(name, "bwd", dtype, (n,), "", 3 * n * size,
                           functools.partial(_activation_bwd, name, n, dtype))


# ---- softmax, log_softmax ------------------------------------------------------------------

SOFTMAXES = {
    # name: (torch forward, torch backward, pyops forward, pyops backward), all (…, dim)
    "softmax": (torch.softmax, aten._softmax_backward_data, ops.softmax, ops.softmax_backward),
    "log_softmax": (torch.log_softmax, aten._log_softmax_backward_data, ops.log_softmax,
                    ops.log_softmax_backward),
}
SOFTMAX_SHAPES = [((4096, 4096), -1), ((1024, 32768), -1), ((16384, 1024), -1),
                  ((256, 1024, 64), 1)]
SOFTMAX_QUICK_SHAPES = [((256, 1024), -1), ((16, 256, 64), 1)]


def _softmax_fwd(name, shape, dim, dtype, cfg):
    torch_fwd, _, pyops_fwd, _ = SOFTMAXES[name]
    x = torch.randn(shape, dtype=dtype, device=cfg.device)
    return _with_peers(cfg, torch_fwd, pyops_fwd, (x, dim))


def _softmax_bwd(name, shape, dim, dtype, cfg):
    torch_fwd, torch_bwd, _, pyops_bwd = SOFTMAXES[name]
    grad = torch.randn(shape, dtype=dtype, device=cfg.device)
    out = torch_fwd(torch.randn(shape, dtype=dtype, device=cfg.device), dim)
    fns = _with_peers(cfg, lambda g, y, d: torch_bwd(g, y, d, dtype), pyops_bwd, (grad, out, dim))
    return fns


def softmax_cases(cfg):
    for name in SOFTMAXES:
        for dtype in cfg.dtypes:
            for shape, dim in SOFTMAX_QUICK_SHAPES if cfg.quick else SOFTMAX_SHAPES:
                n = 1
                for s in shape:
                    n *= s
                size = dtype.itemsize
                params = f"dim={dim}"
                yield Case(name, "fwd", dtype, shape, params, 2 * n * size,
                           functools.partial(_softmax_fwd, name, shape, dim, dtype))
                yield Case(name, "bwd", dtype, shape, params, 3 * n * size,
                           functools.partial(_softmax_bwd, name, shape, dim, dtype))


# ---- cross_entropy --------------------------------------------------------------------------

CE_SHAPES = [(8192, 1000), (4096, 4096), (1024, 32768), (256, 128256)]
CE_QUICK_SHAPES = [(64, 1000)]


def _class_targets(n, classes, device, ignored_fraction=0.1):
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, classes, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < ignored_fraction] = -100
    return t.to(device)


def _fwd_bwd(loss_fn):
    """loss and the logits' gradient (returned, not accumulated, so every call does the same work)."""
    def run(x, t):
        return torch.autograd.grad(loss_fn(x, t), x)[0]
    return run


def _ce_impls(cfg, direction, shape, dtype, smoothing):
    n, classes = shape
    x = torch.randn(shape, dtype=dtype, device=cfg.device).requires_grad_(direction != "fwd")
    t = _class_targets(n, classes, cfg.device)
    ours = functools.partial(PF.cross_entropy, label_smoothing=smoothing)
    theirs = functools.partial(TF.cross_entropy, label_smoothing=smoothing)
    fns = {"torch": theirs, "pyops": ours}
    if "torch.compile" in cfg.peers:
        fns["torch.compile"] = _compiled(theirs)
    if direction != "fwd":
        fns = {name: _fwd_bwd(fn) for name, fn in fns.items()}
    return {name: functools.partial(fn, x, t) for name, fn in fns.items()}


def cross_entropy_cases(cfg):
    shapes = CE_QUICK_SHAPES if cfg.quick else CE_SHAPES
    variants = [(shape, 0.0) for shape in shapes] + [(shapes[0], 0.1)]
    for dtype in cfg.dtypes:
        for shape, smoothing in variants:
            n, classes = shape
            size = dtype.itemsize
            params = "ignore~10%" + (f" smoothing={smoothing}" if smoothing else "")
            # minimum traffic: logits read once (+ targets); fwd+bwd also writes the gradient once
            yield Case("cross_entropy", "fwd", dtype, shape, params, n * classes * size + 8 * n,
                       functools.partial(_ce_impls, direction="fwd", shape=shape, dtype=dtype,
                                         smoothing=smoothing))
            yield Case("cross_entropy", "fwd+bwd", dtype, shape, params,
                       2 * n * classes * size + 8 * n,
                       functools.partial(_ce_impls, direction="fwd+bwd", shape=shape, dtype=dtype,
                                         smoothing=smoothing))


# ---- the lesson's other losses ---------------------------------------------------------------

def _hinge_expression(x, y):
    return torch.clamp(1 - y * x, min=0).mean()


LOSSES = {
    # name: (pyops, torch peer, makes (input, target) from a shape)
    "mse_loss": (PF.mse_loss, TF.mse_loss, lambda g, s: (g(s), g(s))),
    "binary_cross_entropy": (PF.binary_cross_entropy, TF.binary_cross_entropy,
                             lambda g, s: (g(s).sigmoid(), g(s).sigmoid())),
    "binary_cross_entropy_with_logits": (PF.binary_cross_entropy_with_logits,
                                         TF.binary_cross_entropy_with_logits,
                                         lambda g, s: (g(s), g(s).sigmoid())),
    "hinge_loss": (PF.hinge_loss, _hinge_expression, lambda g, s: (g(s), g(s).sign())),
    "multi_margin_loss": (PF.multi_margin_loss, TF.multi_margin_loss,
                          lambda g, s: (g(s), torch.randint(0, s[1], s[:1], device=g(()).device))),
}


def _loss_impls(cfg, name, shape, dtype):
    ours, theirs, make = LOSSES[name]
    x, y = make(lambda s: torch.randn(s, dtype=dtype, device=cfg.device), shape)
    x.requires_grad_()
    fns = {"torch": theirs, "pyops": ours}
    if "torch.compile" in cfg.peers:
        fns["torch.compile"] = _compiled(theirs)
    return {impl: functools.partial(_fwd_bwd(fn), x, y) for impl, fn in fns.items()}


def loss_cases(cfg):
    for name in LOSSES:
        if name == "multi_margin_loss":
            shapes = [(256, 256)] if cfg.quick else [(4096, 1024), (16384, 1024)]
        else:
            shapes = [(1 << 16,)] if cfg.quick else [(1 << 22,), (1 << 24,)]
        for dtype in cfg.dtypes:
            for shape in shapes:
                n = 1
                for s in shape:
                    n *= s
                # input and target read once, the gradient written once
                yield Case(name, "fwd+bwd", dtype, shape, "mean", 3 * n * dtype.itemsize,
                           functools.partial(_loss_impls, name=name, shape=shape, dtype=dtype))


FAMILIES = {
    "activations": (tuple(ACTIVATIONS), activation_cases),
    "softmax": (tuple(SOFTMAXES), softmax_cases),
    "cross_entropy": (("cross_entropy",), cross_entropy_cases),
    "losses": (tuple(LOSSES), loss_cases),
}


def all_op_names():
    return [name for names, _ in FAMILIES.values() for name in names]


def select_cases(cfg, op_names):
    for names, make_cases in FAMILIES.values():
        if not set(names) & set(op_names):
            continue
        for case in make_cases(cfg):
            if case.op in op_names and (not cfg.size_filter or case.label in cfg.size_filter):
                yield case
