"""`saescope collate` options (light: no torch, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from saescope.config import ModelConfig
from saescope.corpus import CorpusConfig
from saescope.errors import SaescopeError


@dataclass
class SlotSizes:
    """How many excerpts each record keeps (top, random, per quantile bucket) and the candidate pools."""

    top_k: int = 24
    """Top excerpts per unit (TDB's 4-way split with 5 per split needs ≥ 20)."""
    n_random: int = 16
    """Uniform random excerpts per unit (the 3-way split needs ≥ 15)."""
    n_quantile: int = 5
    """Excerpts per quantile bucket."""
    pool: int = 64
    """Uniform candidate pool with activations, from which random and quantile samples are drawn."""
    max_pool: int = 256
    """Uniform pool of excerpt maxima used to place the quantile boundaries."""



UnitOption = Literal["mlp", "heads"]



PAIR_SUFFIX = "-by-token-pair"
"""Dataset name suffix of an attention SAE's latents collated by token pair (beside the same SAE by token)."""



@dataclass
class CollateOptions:
    """What is collated per unit and from how many tokens (`saescope run` nests these as its collate options)."""

    sizes: SlotSizes = field(default_factory=SlotSizes)
    units: str = "mlp,heads"
    """Unit kinds, comma-separated: mlp (MLP neurons), heads (attention heads). SAE latents are added by --sae."""
    excerpt_len: int = 64
    """Tokens per excerpt (BOS is prepended for the forward pass and never recorded)."""
    max_tokens: int = 100_000
    """Tokens collated (0 = all): every unit's from a corpus; with --store, the heads' and token pairs' (the other
    units take --store_tokens)."""
    store_tokens: int = 0
    """With --store: tokens of the store (its first contexts) collated for the units it feeds, MLP neurons and
    SAE latents by token (0 = all of it)."""
    batch_size: int = 16
    """Excerpts per forward pass."""
    seed: int = 0
    """Seed of the random and quantile samples."""
    token_pairs: bool = True
    """Also collate SAEs at attn_out by token pair (the attention latents' pair attribution; large records)."""
    records: Literal["compact", "json"] = "compact"
    """compact: each dataset's records as tensors (records.safetensors), built into TDB JSON when read (fast to
    write); json: one TDB NeuronRecord file per unit, as `saescope export tdb` writes them."""

    def kinds(self) -> list[UnitOption]:
        return [u.strip() for u in self.units.split(",") if u.strip()]  # type: ignore[misc]

    def __post_init__(self) -> None:
        bad = set(self.kinds()) - set(get_args(UnitOption))
        if bad:
            raise SaescopeError(f"--units {self.units}: unknown kind(s) {', '.join(sorted(bad))}; use mlp,heads")
        if self.sizes.top_k < 1 or self.excerpt_len < 2:
            raise SaescopeError("--top_k must be ≥ 1 and --excerpt_len ≥ 2")
        from saescope import validate

        validate.at_least(self.max_tokens, 0, "--max_tokens", "0 = all")
        validate.at_least(self.store_tokens, 0, "--store_tokens", "0 = all of the store")
        validate.at_least(self.batch_size, 1, "--batch_size")



@dataclass
class CollateConfig:
    """Collate top-activating excerpts, random/quantile samples and moments for MLP neurons, heads and SAE latents."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    collate: CollateOptions = field(default_factory=CollateOptions)
    out: str = "runs/default/collated"
    """Output root; records go to <out>/<model>/<unit_type>/..."""
    layers: str = ""
    """Comma-separated layers for mlp/heads (default: the middle layer)."""
    sae: str = ""
    """SAE directories or files, comma-separated, each collated at its own hookpoint; PATH@HOOKPOINT for files
    that do not record it (OpenAI .pt: --sae layer_8.pt@resid_delta_mlp.8)."""
    transcoders: str = ""
    """Per-layer transcoder sets (saescope, circuit-tracer or Gemma Scope 2 layout), comma-separated: every layer's
    latents are collated as transcoder_latents/<set folder>/<layer> (a transcoder given by --sae: its folder)."""
    store: str = ""
    """An activation store of this model captured with --context_len excerpt_len+1: its contexts are the excerpts,
    and units whose hookpoints it holds are collated from it without running the model (MLP neurons and SAE
    latents by token on every stored context; heads and token pairs, from attn_pattern.L and attn_value.L, on the
    first --max_tokens); the model runs only for what it lacks."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.not_a_file(self.out, "--out")
        if self.store:
            validate.existing_dir(self.store, "--store", "activation store")
        if self.layers:
            try:
                [int(x) for x in self.layers.split(",") if x.strip()]
            except ValueError:
                raise SaescopeError(f"--layers '{self.layers}': expected comma-separated layer numbers such as 4,8") from None


@dataclass
class CollatedDataset:
    """One dataset of a collated model folder (a manifest `datasets` entry)."""

    path: str
    """`<dataset dir>/<layer>` inside the model folder."""
    unit_type: str
    layer: int
    units: int
    by_token_pair: bool
    name: str = ""


@dataclass
class CollateResult:
    """What `collate` wrote: the model folder, its datasets and how many tokens they were collated from."""

    root: Path
    """The collated model folder (holds manifest.json)."""
    model: str
    datasets: list[CollatedDataset]
    tokens: int
    tokens_per_second: float

    @classmethod
    def from_manifest(cls, root: Path, manifest: dict[str, Any]) -> CollateResult:
        ds = [CollatedDataset(d["path"], d["unit_type"], int(d["layer"]), int(d.get("units") or 0),
                              bool(d.get("by_token_pair")), d.get("name", "")) for d in manifest["datasets"]]
        return cls(Path(root), manifest["model"], ds, int(manifest.get("tokens") or 0),
                   float(manifest.get("tokens_per_second") or 0.0))

    @classmethod
    def read(cls, root: Path) -> CollateResult:
        """The result of an earlier collation, from `<root>/manifest.json`."""
        from saescope.io import read_json

        return cls.from_manifest(root, read_json(Path(root) / "manifest.json", "collated manifest"))
