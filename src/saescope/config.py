"""Configuration shared by every stage. Each stage has one dataclass; the CLI is generated from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    """Which model to load and how."""

    model: str = "default"
    """Model spec: default (= gemma-3-270m), smollm2-135m, a local HF directory, a HF id in the local cache, or a .gguf file."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype."""
    device: str = "auto"
    """cpu, cuda, cuda:1, ... or auto (cuda when available)."""

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self):  # noqa: ANN201 - returns HookedModel; imported lazily
        from saescope.models import load_model

        return load_model(self.model, dtype=self.dtype, device=self.resolved_device())
