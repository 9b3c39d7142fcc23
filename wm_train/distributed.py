"""Data-parallel training across processes: torchrun's environment -> a process group, and the few collectives
the trainer needs.

`torchrun --nproc-per-node N -m wm_train.cli train CONFIG.yaml` starts N processes and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each. Without those variables a run is one process and nothing here
touches torch.distributed, so single-process training is exactly what it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    """index of this process on its machine: its GPU"""
    owns_group: bool = False
    """this process created the process group (and destroys it at the end)"""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics, previews and logs; the others only compute."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; the identity in a single process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, value) -> list:
        """Every rank's `value`, in rank order; [value] in a single process."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_type: str) -> Distributed:
    """Join the run torchrun (or the caller) started; a single process when there is none.

    An already initialised process group is used as it is (a caller that spawned its own processes); otherwise
    WORLD_SIZE > 1 in the environment initialises one from torchrun's variables: NCCL for CUDA, gloo for CPU."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Distributed()
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} asks for distributed training, but this torch build has none")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # before NCCL initialises, so each rank talks from its own GPU
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
