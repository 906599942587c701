"""`saescope view` and `saescope search` options (light: no fastapi, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ViewOptions:
    """Where the viewer listens (`saescope run` nests these)."""

    host: str = "127.0.0.1"
    """Interface to bind; keep 127.0.0.1 unless you mean to expose the data."""
    port: int = 8000
    """Port."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.port(self.port)



@dataclass
class ViewConfig:
    """Serve the neuron viewer (a static page + JSON API) for a collated folder, on localhost by default."""

    view: ViewOptions = field(default_factory=ViewOptions)
    root: str = "runs/default/collated"
    """Collated data root (holds <model>/manifest.json), or a dataset saescope did not write: a TDB-layout folder or
    URL ({layer}/{index}.json), or a registry name such as gpt2-small:mlp_neurons (`saescope datasets`)."""
    unit_type: str = ""
    """For a TDB-layout folder or URL: mlp_neurons, attention_heads or sae_latents (default: attention_heads when
    its records are by token pair, else mlp_neurons)."""
    model: str = ""
    """Model spec for the live probe and logit lens (default: the one recorded at collation)."""

    def __post_init__(self) -> None:
        from saescope import validate
        from saescope.units import UNIT_TYPES

        validate.one_of(self.unit_type, ("", *UNIT_TYPES), "--unit_type")



@dataclass
class SearchConfig:
    """For every token of a text, the units of every collated dataset that fire most on it (relative to their own
    collated max), with explanations — the viewer's /search page in the terminal."""

    text: str = ""
    """The text to run through the model."""
    root: str = "runs/default/collated"
    """Collated data root (holds <model>/manifest.json)."""
    collated_model: str = ""
    """Which collated model folder (default: the first)."""
    model: str = ""
    """Model spec to run (default: the one recorded at collation)."""
    per_token: int = 3
    """Units listed per token."""
    max_density: float = 0.1
    """Leave out units that fire on more than this fraction of tokens (they top every token); 1 keeps them all."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.per_token, 1, "--per_token")
        validate.existing_dir(self.root, "--root", "collated data root")


@dataclass
class ViewResult:
    """What `view` serves: the data root (a cache folder for a URL or registry name) and its datasets."""

    root: Path
    source: str
    """What was asked for (--root)."""
    cached: bool
    """The records were fetched into a cache folder (a URL or registry name), not served where they were."""
    datasets: int
    url: str
