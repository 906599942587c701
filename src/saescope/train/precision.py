"""The dtype of the dense encoder matmul in training (measured in bench/train_bench.py)."""

from __future__ import annotations

import torch


def resolve_encoder_dtype(name: str, device: str) -> torch.dtype:
    """--encoder_dtype → a dtype; auto is bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16, else float32."""
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
