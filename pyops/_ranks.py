"""One process of a group that the tests and the benchmark suite spawn (torch.multiprocessing)."""

import os
import sys

import torch
import torch.distributed as dist


def run_rank(rank, world, store, body, backend="gloo"):
    """body() on rank `rank` of a process group joined over the file `store`; then the process
    ends at once, without tearing the group down: the gloo group's destructor can deadlock (it
    holds the GIL while joining a thread that frees the last barrier's work, which takes the
    GIL; seen with DDP's reducer) or abort."""
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        body()
        dist.barrier()  # no rank leaves while another may still call the group
    except BaseException:
        dist.destroy_process_group()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
