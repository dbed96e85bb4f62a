"""Data-parallel evaluation: one replica of the whole ensemble per process, started by `torchrun` or
`accelerate launch` (they set RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address). lm-eval gives each
rank its share of the documents and gathers the results on rank 0 through the LM's rank, world_size,
all_gather, gather_object and barrier, which the mixens model answers from torch.distributed."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Replicas:
    """This process's place among the replicas (rank 0 of 1 when it runs alone)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @classmethod
    def from_environment(cls) -> Replicas:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size < 2:
            return cls()
        if not dist.is_initialized():  # NCCL between GPUs, gloo between CPU processes
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device_for(self, device: str | None) -> str | None:
        """Each replica on its own GPU: 'auto' and 'cuda' mean this process's GPU (LOCAL_RANK)."""
        if self.world_size > 1 and device in (None, "auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor, concatenated (a scalar per rank becomes a vector), as accelerate gathers."""
        if self.world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst: int = 0) -> list | None:
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
