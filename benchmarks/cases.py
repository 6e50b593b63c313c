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
from pyops.table import OPS as TABLE



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


def _peers(cfg, torch_fn, pyops_fn, liger=None, floor=None):
    """The implementations of a case. `liger` makes Liger Kernel's version (CUDA only); when it
    cannot, the row says why instead of vanishing. `floor`: see _memory_floor."""
    fns = {"torch": torch_fn, "pyops": pyops_fn}
    if floor is not None and cfg.device == "cpu":
        fns["memory floor"] = floor
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


# ---- activations: every activation row of the op table -----------------------------------------

def _backward_only(fn):
    """fn's backward through autograd, as in training, without its forward: each input set's
    graph is built on its first call and kept, and every call backpropagates through it again."""
    graphs = {}

    def run(x, grad):
        if id(x) not in graphs:
            leaf = x.detach().requires_grad_()
            graphs[id(x)] = (leaf, fn(leaf))
        leaf, y = graphs[id(x)]
        return torch.autograd.grad(y, leaf, grad, retain_graph=True)[0]
    return run


def _memory_floor(direction):
    """The row's bytes moved by one elementwise op into a fresh output: a clone of the input, and
    for a backward, through autograd as the peers' are, the gradient of x * x.detach() (upstream
    gradient times a saved tensor). Where memory bounds a case, nothing moves its bytes faster.
    CPU only: there a fresh output costs page faults that '% copy' (into a kept buffer) omits."""
    return torch.clone if direction == "fwd" else _backward_only(lambda x: x * x.detach())


def _variant_label(kwargs):
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


def activation_cases(cfg):
    for op in TABLE:
        if op.family != "activation":
            continue
        shapes = op.bench_shapes["quick" if cfg.quick else cfg.device]
        for kwargs, dtype, shape in itertools.product(op.variants, cfg.dtypes, shapes):
            ours = functools.partial(op.function, **kwargs)
            theirs = functools.partial(op.torch_fn, **kwargs)
            nbytes = _numel(shape) * dtype.itemsize
            params = _variant_label(kwargs)
            yield Case(op.name, "fwd", dtype, shape, params, 2 * nbytes,
                       lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg),),
                       lambda cfg, t=theirs, o=ours: _peers(cfg, t, o,
                                                            floor=_memory_floor("fwd")))
            # the upstream gradient and the saved tensor read, the gradient written
            yield Case(op.name, "bwd", dtype, shape, params, 3 * nbytes,
                       lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg), _randn(s, d, cfg)),
                       lambda cfg, t=theirs, o=ours:
                           _peers(cfg, _backward_only(t), _backward_only(o),
                                  floor=_memory_floor("bwd")))


# ---- softmax, log_softmax ------------------------------------------------------------------

SOFTMAX_SHAPES = [((4096, 4096), -1), ((1024, 32768), -1), ((16384, 1024), -1), ((32, 1000), -1),
                  ((256, 1024, 64), 1)]
SOFTMAX_QUICK_SHAPES = [((256, 1024), -1), ((16, 256, 64), 1)]
SOFTMAX_CUDA_SHAPES = [((32768, 4096), -1), ((4096, 32768), -1), ((8192, 131072), -1),
                       ((256, 1024, 64), 1), ((32, 1000), -1)]


def softmax_cases(cfg):
    shapes = SOFTMAX_CUDA_SHAPES if cfg.device == "cuda" else SOFTMAX_SHAPES
    for op in TABLE:
        if op.family != "softmax":
            continue
        for dtype, (shape, dim) in itertools.product(
                cfg.dtypes, SOFTMAX_QUICK_SHAPES if cfg.quick else shapes):
            nbytes = _numel(shape) * dtype.itemsize
            ours = functools.partial(op.function, dim=dim)
            theirs = functools.partial(op.torch_fn, dim=dim)
            liger = _liger_softmax(dim) if op.name == "softmax" else None
            yield Case(op.name, "fwd", dtype, shape, f"dim={dim}", 2 * nbytes,
                       lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg),),
                       lambda cfg, t=theirs, o=ours, lg=liger:
                           _peers(cfg, t, o, lg, _memory_floor("fwd")))
            yield Case(op.name, "bwd", dtype, shape, f"dim={dim}", 3 * nbytes,
                       lambda cfg, s=shape, d=dtype: (_randn(s, d, cfg), _randn(s, d, cfg)),
                       lambda cfg, t=theirs, o=ours:
                           _peers(cfg, _backward_only(t), _backward_only(o),
                                  floor=_memory_floor("bwd")))


# ---- losses: forward, and forward+backward ----------------------------------------------------

def _fwd_bwd(loss_fn):
    """loss and the input's gradient (returned, not accumulated: every call does the same work)."""
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
                           lambda cfg, s=shape, d=dtype, r=direction != "fwd":
                               _ce_inputs(cfg, s, d, r),
                           lambda cfg, r=direction, o=ours, t=theirs, sm=smoothing, v=modes:
                               _loss_peers(cfg, r, t, o, _liger_cross_entropy(sm), v))


def loss_cases(cfg):
    """Every loss row of the op table with benchmark shapes: forward+backward, 'mean'."""
    gen = torch.Generator().manual_seed(0)
    for op in TABLE:
        if op.family != "loss" or not op.bench_shapes:
            continue
        shapes = op.bench_shapes["quick" if cfg.quick else cfg.device]
        for dtype, shape in itertools.product(cfg.dtypes, shapes):
            # input and target read once, the gradient written once
            yield Case(op.name, "fwd+bwd", dtype, shape, "mean", 3 * _numel(shape) * dtype.itemsize,
                       lambda cfg, o=op, s=shape, d=dtype: _requires_grad_first(
                           list(o.inputs(s, d, cfg.device, gen))),
                       lambda cfg, o=op: _loss_peers(cfg, "fwd+bwd", o.torch_fn, o.function))


def _requires_grad_first(inputs):
    inputs[0].requires_grad_()
    return inputs


# ---- linear_cross_entropy: the LM head's loss ---------------------------------------------------

LCE_SHAPES = {"cpu": [(4096, 512, 32000)], "cuda": [(8192, 4096, 128256)],
              "quick": [(512, 128, 4096)]}


def _lce_inputs(cfg, shape, dtype):
    n, hidden, classes = shape
    x = (_randn((n, hidden), dtype, cfg) / hidden ** 0.25).requires_grad_()
    w = (_randn((classes, hidden), dtype, cfg) / hidden ** 0.25).requires_grad_()
    t = torch.randint(0, classes, (n,))
    t[torch.rand(n) < 0.1] = -100
    return x, w, t.to(cfg.device)


def _gemm_floor(x, w, t):
    """The three matmuls of the head alone (logits, input's and weight's gradients): the floor."""
    with torch.no_grad():
        logits = x @ w.t()
        return logits @ w, logits.t() @ x


def _fast_cpu_matmul(dtype):
    """Whether torch's CPU matmul is fast in dtype: in the half types it needs oneDNN's kernels,
    which need AVX-512 (AVX512-FP16 or AMX for float16); else ATen's plain loop runs."""
    supported = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
                 torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    return supported is None or supported()


def _liger_linear_cross_entropy():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda x, w, t: loss(w, x, t)


def linear_cross_entropy_cases(cfg):
    """Forward+backward of the head: the loss and the gradients of input and weight."""
    def grads(loss_fn):
        return lambda x, w, t: torch.autograd.grad(loss_fn(x, w, t), (x, w))

    chunked = functools.partial(TF.linear_cross_entropy,
                                options=torch.nn.LinearCrossEntropyOptions())
    shapes = LCE_SHAPES["quick" if cfg.quick else cfg.device]
    for dtype, shape in itertools.product(cfg.dtypes, shapes):
        n, hidden, classes = shape
        # input and weight read, their gradients written
        nbytes = 2 * (n + classes) * hidden * dtype.itemsize

        def impls(cfg, dtype=dtype):
            if cfg.device == "cpu" and not cfg.quick and not _fast_cpu_matmul(dtype):
                raise RuntimeError(f"torch's {str(dtype)[6:]} matmul has no fast path on this CPU "
                                   "(oneDNN does not support it here): minutes per call")
            fns = _peers(cfg, TF.linear_cross_entropy, PF.linear_cross_entropy,
                         _liger_linear_cross_entropy if cfg.device == "cuda" else None)
            fns = {name: grads(fn) for name, fn in fns.items()}
            fns["torch chunked"] = grads(chunked)
            fns["gemm floor"] = _gemm_floor
            return fns
        yield Case("linear_cross_entropy", "fwd+bwd", dtype, shape, "ignore~10%", nbytes,
                   lambda cfg, s=shape, d=dtype: _lce_inputs(cfg, s, d), impls)


FAMILIES = {
    "activations": (tuple(op.name for op in TABLE if op.family == "activation"), activation_cases),
    "softmax": (tuple(op.name for op in TABLE if op.family == "softmax"), softmax_cases),
    "cross_entropy": (("cross_entropy",), cross_entropy_cases),
    "losses": (tuple(op.name for op in TABLE if op.family == "loss" and op.bench_shapes),
               loss_cases),
    "linear_cross_entropy": (("linear_cross_entropy",), linear_cross_entropy_cases),
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
