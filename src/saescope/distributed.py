"""Data parallelism under torchrun (gloo on CPU, NCCL on GPU): each rank takes its slice of every global batch.

All ranks read the same seeded batch stream, so no data is exchanged; gradients are averaged with all_reduce.
Everything here is a no-op in a single process.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_env() -> None:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)


def shutdown() -> None:
    """Wait for every rank, then end the process group: a rank that exits while another still holds the group open
    can abort in gloo's teardown ("terminate called without an active exception")."""
    if is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def local_slice(x: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch [N, d]."""
    if not is_distributed():
        return x
    n = x.shape[0] // world_size()
    return x[rank() * n:(rank() + 1) * n]


def average_gradients(module: nn.Module) -> None:
    if not is_distributed():
        return
    ws = world_size()
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= ws


def any_across_ranks(mask: Tensor) -> Tensor:
    if not is_distributed():
        return mask
    m = mask.to(torch.int32)
    torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
    return m.bool()


def broadcast_float(v: float) -> float:
    if not is_distributed():
        return v
    t = torch.tensor([v], dtype=torch.float64)
    torch.distributed.broadcast(t, 0)
    return float(t)


def broadcast_tensor(t: Tensor) -> Tensor:
    """Rank 0's values of `t` on every rank (in place)."""
    if is_distributed():
        torch.distributed.broadcast(t, 0)
    return t


def broadcast_params(module: nn.Module) -> None:
    if not is_distributed():
        return
    for p in module.parameters():
        torch.distributed.broadcast(p.data, 0)
    for b in module.buffers():
        torch.distributed.broadcast(b.data, 0)


def average_buffers(module: nn.Module) -> None:
    """Keep running statistics (e.g. BatchTopK's threshold) identical on every rank."""
    if not is_distributed():
        return
    for b in module.buffers():
        if b.is_floating_point():
            torch.distributed.all_reduce(b.data)
            b.data /= world_size()


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows [n_r, d], concatenated in rank order on every rank (n_r may differ between ranks)."""
    if not is_distributed():
        return x
    ws = world_size()
    n = torch.tensor([x.shape[0]], dtype=torch.long)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(ws)]
    torch.distributed.all_gather(sizes, n)
    top = int(max(int(s) for s in sizes))
    padded = torch.zeros(top, *x.shape[1:], dtype=x.dtype)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ws)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


def gather_objects(obj: object) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
