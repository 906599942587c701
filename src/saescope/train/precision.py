"""The dtype of the dense encoder matmul in training, chosen by measuring it on this machine (bench/train_bench.py
measures the whole step).

A CPU's bfloat16 matmul is either much faster than float32 (AMX, AVX512-BF16) or hundreds of times slower (a
fallback path: 0.5 against 165 GFLOP/s on an AVX2 EPYC), and CPU flags do not always say which: `auto` times both.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

FASTER = 1.25
"""bfloat16 is chosen on a CPU only when its matmul is at least this much faster than float32's."""


def matmul_seconds(dtype: torch.dtype, n: int = 256, reps: int = 3) -> float:
    """Best-of-`reps` wall time of one [n, n] @ [n, 4n] matmul in `dtype` (after one warm-up)."""
    g = torch.Generator().manual_seed(0)  # not the global generator: probing must not change what a run draws
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, 4 * n, generator=g).to(dtype)
    a @ b  # warm-up: kernels selected, pages touched
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """True when this CPU's bfloat16 matmul beats float32's by FASTER (measured once per process, ~0.1-0.3 s)."""
    f32, bf16 = matmul_seconds(torch.float32), matmul_seconds(torch.bfloat16)
    log.info("encoder dtype probe: float32 %.2f ms, bfloat16 %.2f ms per 256x256x1024 matmul", f32 * 1e3, bf16 * 1e3)
    return bf16 * FASTER <= f32


def resolve_encoder_dtype(name: str, device: str) -> torch.dtype:
    """--encoder_dtype → a dtype; auto is bfloat16 on GPUs, and on CPUs where it measures faster, else float32."""
    from saescope.errors import SaescopeError

    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_bf16_is_faster() else torch.float32
    if name not in ("float32", "bfloat16"):
        raise SaescopeError(f"--encoder_dtype {name}: choose auto, float32 or bfloat16")
    return getattr(torch, name)
