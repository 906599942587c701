"""`saescope capture` options (light: no torch, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saescope.config import DType, ModelConfig
from saescope.corpus import CorpusConfig
from saescope.errors import SaescopeError


@dataclass
class CaptureOptions:
    """How corpus contexts are cut, batched and stored (`saescope run` nests these as its capture options)."""

    context_len: int = 128
    """Tokens per context, BOS included (BOS is not stored)."""
    batch_size: int = 16
    """Contexts per forward pass."""
    shard_contexts: int = 64
    """Contexts per shard: the unit of resume (a kill loses at most one shard)."""
    max_tokens: int = 0
    """Stop after this many stored tokens (0 = the whole corpus)."""
    store_dtype: DType = "float32"
    """dtype of stored activations."""

    def __post_init__(self) -> None:
        if self.context_len < 2:
            raise SaescopeError(f"--context_len {self.context_len}: must be at least 2")
        if self.batch_size < 1 or self.shard_contexts < 1:
            raise SaescopeError("--batch_size and --shard_contexts must be positive")
        if self.max_tokens < 0:
            raise SaescopeError("--max_tokens must be >= 0")



@dataclass
class CaptureConfig:
    """Capture activations from a corpus into a store, or (with --generate N) a seed-format dataset from prompts."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    out: str = "runs/default/store"
    """Output directory: an activation store (corpus mode) or a seed dataset folder (generate mode)."""
    hookpoints: str = ""
    """Comma-separated hookpoints or globs (resid_post.5, mlp_out.*). Default: the middle layer's resid_post."""
    overwrite: bool = False
    """Start over instead of resuming an existing store."""
    generate: int = 0
    """Generate mode: greedily generate up to N tokens per prompt and record their activations (seed format)."""
    prompts: str = ""
    """Generate mode: a file with one prompt per line (default: the 7 seed prompts)."""
    chat_template: bool = False
    """Generate mode: wrap prompts in the tokenizer's chat template (instruction-tuned models)."""

    def __post_init__(self) -> None:
        from saescope import validate

        if self.generate < 0:
            raise SaescopeError("--generate must be >= 0")
        validate.not_a_file(self.out, "--out")
        if self.prompts:
            validate.existing_file(self.prompts, "--prompts", "file with one prompt per line")


@dataclass
class CaptureResult:
    """What `capture` wrote: an activation store (corpus mode) or a seed-format dataset (generate mode)."""

    out: Path
    """The store or seed dataset folder."""
    seed_format: bool
    """True for generate mode (activations_<i>.pt + metadata.json), False for a store."""
    hookpoints: list[str]
    rows: int
    """Token rows written: the store's rows, or the generated tokens of the seed dataset."""

