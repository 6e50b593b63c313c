"""DistributedDataParallel (gloo, two processes on this machine) with pyops ops gives the
gradients of the single-process run."""


import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyops

BATCH = 16


def make_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12),
                                torch.nn.Tanh(), torch.nn.Linear(12, 4))
    return pyops.convert(model)


def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=gen), torch.randint(0, 4, (BATCH,), generator=gen)


def loss_fn(model, x, t):
    return pyops.functional.cross_entropy(model(x), t, label_smoothing=0.1)


def worker(rank, world, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        x, t = data()
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss_fn(model, x[shard], t[shard]).backward()
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], out)
        # Neither rank tears the group down while the other may still use it: a gloo peer that
        # disappears mid-call aborts the other process.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    model = make_model()
    loss_fn(model, *data()).backward()
    for got, want in zip(torch.load(out), [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
