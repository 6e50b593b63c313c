"""What the suite measures: one Case per op × direction × dtype × shape.

A case knows the minimum bytes its op must move (each input read once, each output written
once), how to make a fresh set of inputs, and its implementations: torch's built-in, pyops,
and the peers asked for. Each implementation takes the inputs as arguments.
"""

import dataclasses
import functools
import itertools
from typing import Callable

import torch
import torch.nn.functional as TF

import pyops.functional as PF

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
    make_inputs: Callable  # (Config) -> tuple of fresh input tensors
    impls: Callable        # (Config) -> {implementation name: fn(*inputs)}

    @property
    def label(self):
        return shape_label(self.shape)

    def build(self, cfg, copies):
        """Zero-argument functions per implementation. With copies > 1 each call takes the next of
        `copies` input sets, so that inputs smaller than the cache are not served from it."""
        input_sets = [self.make_inputs(cfg) for _ in range(copies)]
        fns = {}
        for name, fn in self.impls(cfg).items():
            if copies == 1:
                fns[name] = functools.partial(fn, *input_sets[0])
            else:
                cycle = itertools.cycle(input_sets)
                fns[name] = lambda fn=fn, cycle=cycle: fn(*next(cycle))
        return fns


def shape_label(shape):
    if len(shape) == 1 and shape[0] & (shape[0] - 1) == 0:
        return f"2^{shape[0].bit_length() - 1}"
    return "x".join(str(s) for s in shape)


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _compiled(fn):
    # A fresh cache per case: each shape and dtype compiles once, never hitting the recompile limit.
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _peers(cfg, torch_fn, pyops_fn, liger=None):
    """The implementations of a case. `liger` makes Liger Kernel's version (CUDA only); when it
    cannot, the row says why instead of vanishing."""
    fns = {"torch": torch_fn, "pyops": pyops_fn}
    if "torch.compile" in cfg.peers:
        fns["torch.compile"] = _compiled(torch_fn)
    if liger is not None and "liger" in cfg.peers:
        try:
            fns["liger"] = liger()
        except (ImportError, AttributeError) as err:
            fns["liger"] = _unavailable(f"Liger Kernel: {type(err).__name__}: {err}")
    return fns


def _unavailable(reason):
    def fn(*args):
        raise RuntimeError(reason)
    return fn


def _liger_softmax(dim):
    def make():
        from liger_kernel.transformers import LigerSoftmax
        if dim not in (-1,):
            raise AttributeError("LigerSoftmax reduces over the last dim only")
        return LigerSoftmax()
    return make


def _liger_cross_entropy(smoothing):
    def make():
        from liger_kernel.transformers import LigerCrossEntropyLoss
        return LigerCrossEntropyLoss(ignore_index=-100, label_smoothing=smoothing)
    return make


def _randn(shape, dtype, cfg):
    return torch.randn(shape, dtype=dtype, device=cfg.device)


# ---- activations --------------------------------------------------------------------------

ACTIVATIONS = {
    # name: (torch forward, torch backward from the output, pyops forward, pyops backward)
    "sigmoid": (torch.sigmoid, aten.sigmoid_backward, ops.sigmoid, ops.sigmoid_backward),
    "tanh": (torch.tanh, aten.tanh_backward, ops.tanh, ops.tanh_backward),
    "relu": (torch.relu, lambda g, y: aten.threshold_backward(g, y, 0), ops.relu, ops.relu_backward),
}


def activation_cases(cfg):
    if cfg.quick:
        exponents = (16, 20)
    else:  # a GPU needs 2^28 elements to leave its caches far behind
        exponents = (16, 20, 24, 28) if cfg.device == "cuda" else (16, 18, 20, 22, 24, 26)
    for name, (torch_fwd, torch_bwd, pyops_fwd, pyops_bwd) in ACTIVATIONS.items():
        for dtype in cfg.dtypes:
            for e in exponents:
                shape = (1 << e,)
                nbytes = _numel(shape) * dtype.itemsize
                yield Case(name, "fwd", dtype, shape, "", 2 * nbytes,
                           lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg),),
                           lambda cfg, f=torch_fwd, p=pyops_fwd: _peers(cfg, f, p))
                yield Case(name, "bwd", dtype, shape, "", 3 * nbytes,
                           lambda cfg, s=shape, d=dtype, f=torch_fwd:
                               (_randn(s, d, cfg), f(_randn(s, d, cfg))),
                           lambda cfg, f=torch_bwd, p=pyops_bwd: _peers(cfg, f, p))


# ---- softmax, log_softmax ------------------------------------------------------------------

SOFTMAXES = {
    # name: (torch forward, torch backward, pyops forward, pyops backward)
    "softmax": (torch.softmax, aten._softmax_backward_data, ops.softmax, ops.softmax_backward),
    "log_softmax": (torch.log_softmax, aten._log_softmax_backward_data, ops.log_softmax,
                    ops.log_softmax_backward),
}
SOFTMAX_SHAPES = [((4096, 4096), -1), ((1024, 32768), -1), ((16384, 1024), -1), ((32, 1000), -1),
                  ((256, 1024, 64), 1)]
SOFTMAX_QUICK_SHAPES = [((256, 1024), -1), ((16, 256, 64), 1)]
SOFTMAX_CUDA_SHAPES = [((32768, 4096), -1), ((4096, 32768), -1), ((8192, 131072), -1),
                       ((256, 1024, 64), 1), ((32, 1000), -1)]


def softmax_cases(cfg):
    for name, (torch_fwd, torch_bwd, pyops_fwd, pyops_bwd) in SOFTMAXES.items():
        for dtype in cfg.dtypes:
            shapes = SOFTMAX_CUDA_SHAPES if cfg.device == "cuda" else SOFTMAX_SHAPES
            for shape, dim in SOFTMAX_QUICK_SHAPES if cfg.quick else shapes:
                nbytes = _numel(shape) * dtype.itemsize
                params = f"dim={dim}"
                liger = _liger_softmax(dim) if name == "softmax" else None
                yield Case(name, "fwd", dtype, shape, params, 2 * nbytes,
                           lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg),),
                           lambda cfg, f=torch_fwd, p=pyops_fwd, dim=dim, lg=liger:
                               _peers(cfg, lambda x: f(x, dim), lambda x: p(x, dim), lg))
                yield Case(name, "bwd", dtype, shape, params, 3 * nbytes,
                           lambda cfg, s=shape, d=dtype, f=torch_fwd, dim=dim:
                               (_randn(s, d, cfg), f(_randn(s, d, cfg), dim)),
                           lambda cfg, f=torch_bwd, p=pyops_bwd, dim=dim, d=dtype:
                               _peers(cfg, lambda g, y: f(g, y, dim, d), lambda g, y: p(g, y, dim)))


# ---- losses: forward, and forward+backward ----------------------------------------------------

def _fwd_bwd(loss_fn):
    """loss and the input's gradient (returned, not accumulated, so every call does the same work)."""
    def run(x, *rest):
        return torch.autograd.grad(loss_fn(x, *rest), x)[0]
    return run


def _loss_peers(cfg, direction, torch_fn, pyops_fn, liger=None, pyops_variants=None):
    """Peers of a loss case; pyops_variants adds other pyops modes ({name: fn}) to fwd+bwd."""
    fns = _peers(cfg, torch_fn, pyops_fn, liger)
    if direction == "fwd":
        return fns
    fns.update(pyops_variants or {})
    return {name: _fwd_bwd(fn) for name, fn in fns.items()}


CE_SHAPES = [(8192, 1000), (4096, 4096), (1024, 32768), (256, 128256), (32, 1000)]
CE_QUICK_SHAPES = [(64, 1000)]
CE_CUDA_SHAPES = [(8192, 128256), (8192, 32000), (4096, 32000), (32, 1000)]


def _ce_inputs(cfg, shape, dtype, requires_grad, ignored_fraction=0.1):
    n, classes = shape
    t = torch.randint(0, classes, (n,))
    t[torch.rand(n) < ignored_fraction] = -100
    return _randn(shape, dtype, cfg).requires_grad_(requires_grad), t.to(cfg.device)


def cross_entropy_cases(cfg):
    shapes = CE_QUICK_SHAPES if cfg.quick else CE_CUDA_SHAPES if cfg.device == "cuda" else CE_SHAPES
    variants = [(shape, 0.0) for shape in shapes] + [(shapes[0], 0.1)]
    for dtype in cfg.dtypes:
        for shape, smoothing in variants:
            logits = _numel(shape) * dtype.itemsize
            params = "ignore~10%" + (f" smoothing={smoothing}" if smoothing else "")
            ours = functools.partial(PF.cross_entropy, label_smoothing=smoothing)
            theirs = functools.partial(TF.cross_entropy, label_smoothing=smoothing)
            # the gradient written by the forward: the logits read once in all
            modes = {"pyops grad_in_forward": functools.partial(ours, grad_in_forward=True)}
            # minimum traffic: logits and targets read once; fwd+bwd also writes the gradient once
            for direction, nbytes in (("fwd", logits), ("fwd+bwd", 2 * logits)):
                yield Case("cross_entropy", direction, dtype, shape, params, nbytes + 8 * shape[0],
                           lambda cfg, s=shape, d=dtype, r=direction != "fwd": _ce_inputs(cfg, s, d, r),
                           lambda cfg, r=direction, o=ours, t=theirs, sm=smoothing, v=modes:
                               _loss_peers(cfg, r, t, o, _liger_cross_entropy(sm), v))


def _hinge_expression(x, y):
    return torch.clamp(1 - y * x, min=0).mean()


LOSSES = {
    # name: (pyops, torch peer, (input, target) from a shape, dtype and config)
    "mse_loss": (PF.mse_loss, TF.mse_loss,
                 lambda s, d, cfg: (_randn(s, d, cfg), _randn(s, d, cfg))),
    "binary_cross_entropy": (PF.binary_cross_entropy, TF.binary_cross_entropy,
                             lambda s, d, cfg: (_randn(s, d, cfg).sigmoid(),
                                                _randn(s, d, cfg).sigmoid())),
    "binary_cross_entropy_with_logits": (PF.binary_cross_entropy_with_logits,
                                         TF.binary_cross_entropy_with_logits,
                                         lambda s, d, cfg: (_randn(s, d, cfg),
                                                            _randn(s, d, cfg).sigmoid())),
    "hinge_loss": (PF.hinge_loss, _hinge_expression,
                   lambda s, d, cfg: (_randn(s, d, cfg), _randn(s, d, cfg).sign())),
    "multi_margin_loss": (PF.multi_margin_loss, TF.multi_margin_loss,
                          lambda s, d, cfg: (_randn(s, d, cfg),
                                             torch.randint(0, s[1], s[:1], device=cfg.device))),
}


def loss_cases(cfg):
    for name, (ours, theirs, make) in LOSSES.items():
        if name == "multi_margin_loss":
            shapes = [(256, 256)] if cfg.quick else [(4096, 1024), (16384, 1024)]
        else:
            shapes = [(1 << 16,)] if cfg.quick else [(1 << 22,), (1 << 24,)]
        for dtype in cfg.dtypes:
            for shape in shapes:
                # input and target read once, the gradient written once
                yield Case(name, "fwd+bwd", dtype, shape, "mean", 3 * _numel(shape) * dtype.itemsize,
                           lambda cfg, m=make, s=shape, d=dtype: _requires_grad_first(m(s, d, cfg)),
                           lambda cfg, o=ours, t=theirs: _loss_peers(cfg, "fwd+bwd", t, o))


def _requires_grad_first(inputs):
    inputs[0].requires_grad_()
    return inputs


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
