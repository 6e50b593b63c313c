"""The op table: a row per function of pyops.functional. pyops.nn builds its module twins from
it, patch() and convert() read it, and so do the generic tests (tests/test_table.py and the
family tests) and the benchmark suite: a row added here is covered by all of them."""

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as TF

from . import functional as PF


@dataclasses.dataclass(frozen=True)
class Op:
    name: str                    # pyops.functional.<name>
    family: str                  # "activation", "softmax", "loss" or "head" (linear + loss)
    torch_fn: Callable           # torch's twin, called as the pyops function is
    inputs: Callable             # (shape, dtype, device, generator) -> positional arguments
    variants: tuple = ({},)      # keyword arguments to try, each a sample with every shape
    shapes: tuple = ((), (0,), (7,), (4, 33), (2, 3, 5))
    module: str = None           # the torch.nn twin: pyops.nn has a subclass of the same name
    module_args: tuple = ()      # the module's attributes the forward passes as keywords
    module_extra: tuple = ()     # (keyword, value) pairs the module's forward adds, as torch's
    patches: tuple = ()          # (namespace, name): where patch() puts the pyops function
    bench_shapes: dict = dataclasses.field(default_factory=dict)  # {"cpu"|"cuda"|"quick": shapes}
    double_backward: bool = True  # False: create_graph raises (gradients from fused kernels)

    @property
    def function(self):
        return getattr(PF, self.name)


def _uniform(shape, dtype, device, gen, low=-4.0, high=4.0):
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    return x.to(dtype=dtype, device=device)


def _one(shape, dtype, device, gen):
    return (_uniform(shape, dtype, device, gen),)


def _class_targets(shape, device, gen, ignore_index=None):
    classes = shape[1] if len(shape) > 1 else shape[0]
    positions = shape[:1] + shape[2:] if len(shape) > 1 else ()
    t = torch.randint(0, max(classes, 1), positions, generator=gen)
    if ignore_index is not None and t.numel() > 1:  # one position: kept, so the mean is not 0/0
        t.view(-1)[::3] = ignore_index
    return t.to(device)


def _logits_and_classes(shape, dtype, device, gen):
    return _uniform(shape, dtype, device, gen), _class_targets(shape, device, gen, -100)


def _scores_and_classes(shape, dtype, device, gen):
    return _uniform(shape, dtype, device, gen), _class_targets(shape, device, gen)


def _log_probs_and_classes(shape, dtype, device, gen):
    x = _uniform(shape, torch.float64, "cpu", gen)
    x = torch.log_softmax(x, 1 if x.dim() > 1 else 0).to(dtype=dtype, device=device)
    return x, _class_targets(shape, device, gen, -100)


def _pair(target):
    def make(shape, dtype, device, gen):
        return _uniform(shape, dtype, device, gen), target(shape, dtype, device, gen)
    return make


def _probabilities(shape, dtype, device, gen):
    return _uniform(shape, dtype, device, gen, 0.0, 1.0)


def _signs(shape, dtype, device, gen):
    return torch.where(_probabilities(shape, torch.float64, "cpu", gen) < 0.5, -1.0, 1.0).to(
        dtype=dtype, device=device)


def _probabilities_and_targets(shape, dtype, device, gen):
    p = _probabilities(shape, torch.float64, "cpu", gen).clamp(0.01, 0.99)
    return p.to(dtype=dtype, device=device), _probabilities(shape, dtype, device, gen)


def _torch_softmax(input, dim, dtype=None):
    # torch.softmax and torch.log_softmax take (input, dim, dtype): not F's signature.
    return PF.softmax(input, dim, dtype=dtype)


def _torch_log_softmax(input, dim, dtype=None):
    return PF.log_softmax(input, dim, dtype=dtype)


def _hinge_reference(input, target, margin=1.0, reduction="mean"):
    values = torch.clamp(margin - target * input, min=0)
    return {"none": values, "mean": values.mean(), "sum": values.sum()}[reduction]


def _hidden_weight_and_classes(shape, dtype, device, gen):
    """shape (N, H, C), or (H, C) unbatched: input, linear_weight (C, H) and class targets,
    every third one ignored."""
    *positions, hidden, classes = shape
    x = _uniform((*positions, hidden), dtype, device, gen, -1.0, 1.0)
    w = _uniform((classes, hidden), dtype, device, gen, -1.0, 1.0)
    return x, w, _class_targets((*positions, classes) if positions else (classes,), device, gen,
                                -100)


def _torch_linear_cross_entropy(input, linear_weight, target, options=None, **kwargs):
    # torch's chunked path (options) has no label smoothing: its reference gives the same values.
    return TF.linear_cross_entropy(input, linear_weight, target, **kwargs)


_ACTIVATION_BENCH = {"quick": ((1 << 16,), (1 << 20,)),
                     "cpu": tuple((1 << e,) for e in (16, 18, 20, 22, 24, 26)),
                     "cuda": tuple((1 << e,) for e in (16, 20, 24, 28))}
_LOSS_SHAPES = ((7,), (4, 33), (2, 3, 5))
_ELEMENTWISE_LOSS_BENCH = {"quick": ((1 << 16,),), "cpu": ((1 << 22,), (1 << 24,)),
                           "cuda": ((1 << 22,), (1 << 24,))}
_REDUCTIONS = ({}, {"reduction": "none"}, {"reduction": "sum"})


def _activation(name, torch_fn, module, module_args=(), variants=({},), torch_name=True):
    patches = ((TF, name),) + (((torch, name),) if torch_name else ())
    return Op(name, "activation", torch_fn, _one, variants, module=module,
              module_args=module_args, patches=patches, bench_shapes=_ACTIVATION_BENCH)


def _softmax(name, torch_fn, module, torch_replacement):
    return Op(name, "softmax", torch_fn, _one, ({"dim": 0}, {"dim": -1}),
              shapes=((7,), (4, 33), (2, 3, 5), (3, 1000)), module=module, module_args=("dim",),
              module_extra=(("_stacklevel", 5),),  # the implicit-dim warning where torch's points
              patches=((TF, name), (torch, name, torch_replacement)))


OPS = [
    _activation("sigmoid", torch.sigmoid, "Sigmoid"),
    _activation("tanh", torch.tanh, "Tanh"),
    _activation("relu", TF.relu, "ReLU", ("inplace",)),
    _activation("silu", TF.silu, "SiLU", ("inplace",), torch_name=False),
    _activation("gelu", TF.gelu, "GELU", ("approximate",),
                ({}, {"approximate": "tanh"}), torch_name=False),
    _softmax("softmax", TF.softmax, "Softmax", _torch_softmax),
    _softmax("log_softmax", TF.log_softmax, "LogSoftmax", _torch_log_softmax),
    Op("cross_entropy", "loss", TF.cross_entropy, _logits_and_classes,
       ({}, {"reduction": "none"}, {"reduction": "sum", "label_smoothing": 0.1}),
       shapes=_LOSS_SHAPES, module="CrossEntropyLoss",
       module_args=("weight", "ignore_index", "reduction", "label_smoothing"),
       patches=((TF, "cross_entropy"),)),
    Op("linear_cross_entropy", "head", _torch_linear_cross_entropy, _hidden_weight_and_classes,
       ({}, {"reduction": "none"},
        {"reduction": "sum", "label_smoothing": 0.1,
         "options": torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)}),
       shapes=((5, 3, 7), (6, 4), (0, 3, 4)), patches=((TF, "linear_cross_entropy"),),
       double_backward=False),
    Op("nll_loss", "loss", TF.nll_loss, _log_probs_and_classes, _REDUCTIONS, shapes=_LOSS_SHAPES,
       module="NLLLoss", module_args=("weight", "ignore_index", "reduction"),
       patches=((TF, "nll_loss"),)),
    Op("mse_loss", "loss", TF.mse_loss, _pair(_uniform),
       _REDUCTIONS, module="MSELoss", module_args=("reduction",), patches=((TF, "mse_loss"),),
       bench_shapes=_ELEMENTWISE_LOSS_BENCH),
    Op("binary_cross_entropy_with_logits", "loss", TF.binary_cross_entropy_with_logits,
       _pair(_probabilities), _REDUCTIONS, module="BCEWithLogitsLoss",
       module_args=("weight", "pos_weight", "reduction"),
       patches=((TF, "binary_cross_entropy_with_logits"),), bench_shapes=_ELEMENTWISE_LOSS_BENCH),
    Op("binary_cross_entropy", "loss", TF.binary_cross_entropy, _probabilities_and_targets,
       _REDUCTIONS, module="BCELoss", module_args=("weight", "reduction"),
       patches=((TF, "binary_cross_entropy"),), bench_shapes=_ELEMENTWISE_LOSS_BENCH),
    Op("hinge_loss", "loss", _hinge_reference, _pair(_signs), _REDUCTIONS,
       bench_shapes=_ELEMENTWISE_LOSS_BENCH),
    Op("multi_margin_loss", "loss", TF.multi_margin_loss, _scores_and_classes,
       ({}, {"reduction": "none", "p": 2}, {"reduction": "sum", "margin": 0.5}),
       shapes=((7,), (4, 33)), module="MultiMarginLoss",
       module_args=("p", "margin", "weight", "reduction"), patches=((TF, "multi_margin_loss"),),
       bench_shapes={"quick": ((256, 256),), "cpu": ((4096, 1024), (16384, 1024)),
                     "cuda": ((4096, 1024), (16384, 1024))}),
]


def samples(op, dtype, device, seed=0):
    """(args, kwargs) for every shape and variant of `op`."""
    gen = torch.Generator().manual_seed(seed)
    return [(op.inputs(shape, dtype, device, gen), dict(kwargs))
            for shape in op.shapes for kwargs in op.variants]
