"""Configuration parts shared by every stage, and the defaults several stages compute, declared once.

Each stage has one dataclass of options (nested as-is in `saescope run`'s config) plus its command's inputs and
outputs; the CLI is generated from them (`saescope/cli`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from saescope.models import HookedModel

DType = Literal["float32", "float16", "bfloat16"]
"""dtype names accepted wherever a dtype is chosen (weights, stored activations)."""


def resolve_device(name: str) -> str:
    """'auto' → cuda when available, else cpu; anything else as given (resolved at run time, never at import)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def middle_layer(n_layers: int) -> int:
    """The layer every stage studies by default."""
    return n_layers // 2


def resolve_layer(layer: int, n_layers: int) -> int:
    """-1 → the middle layer; otherwise checked to be a layer of the model."""
    from saescope.errors import SaescopeError

    if layer < 0:
        return middle_layer(n_layers)
    if layer >= n_layers:
        raise SaescopeError(f"--layer {layer}: out of range (the model has {n_layers} layers)")
    return layer


@dataclass
class ModelConfig:
    """Which model to load and how."""

    model: str = "default"
    """Model spec: default (= gemma-3-270m), smollm2-135m, a local HF directory, a HF id in the local cache, or a .gguf file."""
    dtype: DType = "float32"
    """Weights dtype."""
    device: str = "auto"
    """cpu, cuda, cuda:1, ... or auto (cuda when available)."""

    def __post_init__(self) -> None:
        import re

        from saescope.errors import SaescopeError

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise SaescopeError(f"--device '{self.device}': use auto, cpu, cuda, cuda:N or mps")

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def load(self) -> HookedModel:
        from saescope.models import load_model

        return load_model(self.model, dtype=self.dtype, device=self.resolved_device())
