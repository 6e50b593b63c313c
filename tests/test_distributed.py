"""DistributedDataParallel (gloo, two processes on this machine) with pyops ops gives the
gradients of the single-process run."""


import torch

import pyops
from helpers import on_ranks

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


def ddp_gradients(rank, world):
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    x, t = data()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    loss_fn(model, x[shard], t[shard]).backward()
    return [p.grad for p in model.parameters()]


def test_ddp_gradients_equal_single_process(tmp_path):
    grads = on_ranks(ddp_gradients, 2, tmp_path)[0]
    model = make_model()
    loss_fn(model, *data()).backward()
    for got, want in zip(grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
