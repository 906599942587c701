"""The parts of a training step that are only about speed (each measured in bench/train_bench.py)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def resolve_encoder_dtype(name: str, device: str) -> torch.dtype:
    from saescope.errors import SaescopeError

    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16
        caps = torch.backends.cpu.get_cpu_capability()
        flags = ""
        try:
            flags = open("/proc/cpuinfo").read(200_000)
        except OSError:
            pass
        fast = " amx_bf16" in flags or " avx512_bf16" in flags or caps.startswith("AMX")
        return torch.bfloat16 if fast else torch.float32
    if name not in ("float32", "bfloat16"):
        raise SaescopeError(f"--encoder_dtype {name}: choose auto, float32 or bfloat16")
    return getattr(torch, name)


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks (up to 1 GiB each) for reuse instead of returning them to the OS.

    A training step allocates and frees several [F, d] tensors; by default glibc serves each from a fresh mmap, so
    every step pays page faults and kernel zeroing for them again (bench: 25 % of a step at F=16384 on CPU). The
    cost is that the process keeps its peak heap. Process-wide; Linux/glibc only; SAESCOPE_MALLOPT=0 turns it off.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SAESCOPE_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    log.debug("glibc malloc keeps freed blocks: %s", ok)
    return ok


def release_freed_memory() -> None:
    """Undo `retain_freed_memory` once training is over and hand the retained free blocks back to the OS, so a
    process that goes on (`saescope run`: evaluation, collation) does not carry the training peak."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def contiguous_alias(p: Tensor) -> Tensor:
    """`p` itself, or for a transposed 2-d parameter a contiguous leaf view of the same memory."""
    if p.dim() == 2 and not p.is_contiguous() and p.T.is_contiguous():
        return p.detach().T
    return p


@torch.no_grad()
def clip_grad_norm(params: list[Tensor], max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most `max_norm`; unlike torch's, no pass over the
    gradients when they are already within bounds (the common case). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
