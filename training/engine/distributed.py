"""Collectives that work the same with one process (no process group) and many."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x_BD: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows, [world * B, D]; gradients flow back to their owners."""
    if world()[1] == 1:
        return x_BD
    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(x_BD), dim=0)


def all_gather_uneven(x_ND: torch.Tensor) -> torch.Tensor:
    """Concatenate rows from every rank when ranks hold different row counts (no gradient)."""
    if world()[1] == 1:
        return x_ND
    counts = [torch.zeros(1, dtype=torch.long, device=x_ND.device) for _ in range(world()[1])]
    dist.all_gather(counts, torch.tensor([x_ND.shape[0]], device=x_ND.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *x_ND.shape[1:]), dtype=x_ND.dtype, device=x_ND.device)
    padded[: x_ND.shape[0]] = x_ND
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)], dim=0)


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """A DTensor (an FSDP2-sharded parameter, a norm over sharded gradients) whole on this rank (a
    collective where it is sharded: every rank calls it); any other tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (a collective: every rank calls it), on the device."""
    rank_count = world()[1]
    if rank_count == 1:
        return x
    total = x.detach().clone().float()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / rank_count
