"""Data-parallel training with ``torch.distributed``: which process am I, and how the processes agree.

``torchrun --nproc_per_node=N $(which mt-train) …`` starts N processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous variables; :func:`setup` joins the process
group (NCCL on CUDA, gloo on CPU) and picks this rank's device. Without those variables
everything here is a no-op for a single process, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """This process's place in the job.

    Attributes:
        rank: global rank, 0 … world_size - 1; rank 0 alone writes logs, metrics and checkpoints.
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes (1 = not distributed).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the torchrun process group if there is one.

    Args:
        device: the configured device; under torchrun a ``cuda`` device becomes ``cuda:LOCAL_RANK``.

    Returns: the context and this rank's device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(), device
    context = Context(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", context.rank, world_size, device)
    return context, device


def teardown(context: Context) -> None:
    """Leave the process group (after the last collective)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first(context: Context) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, tokenizer training, caches), the others after it.

    The other ranks then find rank 0's files in place instead of racing to write them.
    """
    if not context.is_main:
        barrier(context)
    yield
    if context.is_main:
        barrier(context)


def broadcast(context: Context, value: object) -> object:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across(context: Context, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (one small all-reduce)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()
