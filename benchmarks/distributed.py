"""The distributed case: cross_entropy forward+backward with the classes sharded over 2 gloo
ranks on the CPU, one thread each. pyops (process_group=) next to torch's loss_parallel() on a
DTensor (the "torch" row) and a plain all-gather of the logits followed by torch's loss on the
whole. Each step starts at a barrier and takes the slowest rank's time; the bytes are what a rank
hands to collectives in a step (the tensors' sizes: gloo's traffic on the wire is a small
multiple of that); the memory is the larger rank's.
"""

import statistics
import time

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.multiprocessing as mp
import torch.nn.functional as TF
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.tensor.parallel import loss_parallel

import pyops.functional as PF
from pyops._ranks import run_rank

from . import harness, report

OP = "vocab_parallel_cross_entropy"
WORLD = 2
SHAPES = {"full": [(4096, 32000)], "quick": [(64, 1000)]}
# the collectives of torch.distributed and of the functional ones DTensor uses
COUNTED = [(dist, ("all_gather_single", "all_reduce", "all_gather", "reduce_scatter_tensor",
                   "broadcast")),
           (funcol, ("all_reduce", "all_gather_tensor", "reduce_scatter_tensor"))]


def _counting(sent):
    """Wraps the collectives to add the bytes of the tensor each is given to sent[0]."""
    for module, names in COUNTED:
        for name in names:
            original = getattr(module, name)

            def wrapper(*args, _original=original, **kwargs):
                tensor = args[1] if _original.__name__ == "all_gather_single" else args[0]
                sent[0] += tensor.numel() * tensor.element_size()
                return _original(*args, **kwargs)
            setattr(module, name, wrapper)


def _implementations(rank, mesh):
    group = mesh.get_group()

    def ours(x, dx, t):
        return torch.autograd.grad(PF.cross_entropy(x, t, process_group=group), x)[0]

    def theirs(x, dx, t):
        with loss_parallel():
            return torch.autograd.grad(TF.cross_entropy(dx, t), dx)[0]

    def gathered(x, dx, t):
        parts = x.new_empty((WORLD * x.shape[0], x.shape[1]))
        dist.all_gather_single(parts, x.detach().contiguous(), group=group)
        full = parts.view(WORLD, *x.shape).permute(1, 0, 2).reshape(x.shape[0], -1)
        full.requires_grad_()
        grad = torch.autograd.grad(TF.cross_entropy(full, t), full)[0]
        return grad[:, rank * x.shape[1]:(rank + 1) * x.shape[1]]

    return {"torch": theirs, "pyops": ours, "all-gather logits": gathered}


def _steps(fn, steps):
    """fn's time on this rank at each of the steps, every step started at a barrier."""
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return torch.tensor(times, dtype=torch.float64)


def _rank_records(rank, world, quick, huge_pages, dtypes, copy_bps, out):
    def body():
        mesh = init_device_mesh("cpu", (world,))
        sent = [0]
        _counting(sent)
        records = []
        for dtype in dtypes:
            for shape in SHAPES["quick" if quick else "full"]:
                records += _case_records(rank, mesh, dtype, shape, quick, huge_pages, copy_bps,
                                          sent)
        if rank == 0:
            torch.save(records, f"{out}/records.pt")

    run_rank(rank, world, f"{out}/store", body)


def _case_records(rank, mesh, dtype, shape, quick, huge_pages, copy_bps, sent):
    n, classes = shape
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(shape, generator=gen).to(dtype)
    target = torch.randint(0, classes, (n,), generator=gen)
    dx = distribute_tensor(full, mesh, [Shard(1)]).requires_grad_()
    x = dx.to_local().detach().requires_grad_()
    nbytes = 2 * n * classes // WORLD * dtype.itemsize  # a rank's logits read, gradient written
    records = []
    for impl, fn in _implementations(rank, mesh).items():
        record = report.new_record(
            op=OP, direction="fwd+bwd", dtype=str(dtype)[6:], shape="x".join(map(str, shape)),
            params=f"{WORLD} gloo ranks; torch: loss_parallel()", impl=impl, threads=1,
            huge_pages=huge_pages, bytes=nbytes, sent_bytes=None)
        try:
            call = lambda fn=fn: fn(x, dx, target)  # noqa: E731
            call()
            sent[0] = 0
            call()
            record["sent_bytes"] = sent[0]
            steps = _steps(call, 3 if quick else 10)
            peak = torch.tensor([harness.peak_extra_bytes(call, "cpu") or 0.0])
            dist.all_reduce(steps, dist.ReduceOp.MAX)
            dist.all_reduce(peak, dist.ReduceOp.MAX)
            quartiles = statistics.quantiles(steps.tolist(), n=4)
            median = steps.median().item()
            record.update(median_s=median, iqr_s=quartiles[2] - quartiles[0],
                          gbps=nbytes / median / 1e9, pct_copy=100 * nbytes / median / copy_bps,
                          peak_extra_bytes=int(peak.item()))
        except Exception as err:  # on every rank alike: the step is the same everywhere
            record["missing"] = f"{type(err).__name__}: {err}"
        records.append(record)
    return report.set_ratios(records)


def records(quick, huge_pages, dtypes, copy_bps, tmp):
    """The case's records, from WORLD spawned processes."""
    mp.spawn(_rank_records, args=(WORLD, quick, huge_pages, dtypes, copy_bps, tmp),
             nprocs=WORLD, join=True)
    return torch.load(f"{tmp}/records.pt")
