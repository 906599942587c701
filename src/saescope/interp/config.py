"""`saescope explain` / `score` options (light: no backend, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saescope.errors import SaescopeError


@dataclass
class InterpOptions:
    """Which backends explain and simulate, and how they are called (`saescope run` nests these)."""

    explainer: str = "baseline"
    """baseline (token lookup, offline), openai:<model> or hf:<model spec>."""
    simulator: str = "baseline"
    """baseline, openai:<model>, hf:<model spec>, or same (= the explainer's backend)."""
    base_url: str = ""
    """OpenAI-compatible server URL (default https://api.openai.com/v1)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never saved)."""
    prompt_style: Literal["tdb", "delphi"] = "tdb"
    """tdb: token<TAB>activation lines; delphi: <<highlighted>> tokens."""
    max_units: int = 0
    """At most this many live units (0 = all)."""
    concurrency: int = 4
    """Units in flight at once (language-model backends)."""
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 3
    """Retries per request (exponential backoff)."""
    null_baseline: bool = True
    """Also score another unit's explanation on each unit (the floor every score is compared with)."""

    def __post_init__(self) -> None:
        from saescope import validate
        from saescope.interp.backends import check_backend_name

        check_backend_name(self.explainer, "--explainer")
        check_backend_name(self.simulator, "--simulator", same=True)
        validate.at_least(self.max_units, 0, "--max_units", "0 = all")
        validate.at_least(self.concurrency, 1, "--concurrency")
        validate.positive(self.timeout, "--timeout", "seconds per request")
        validate.at_least(self.retries, 0, "--retries")



@dataclass
class InterpConfig:
    """Explain and score the units of a collated dataset."""

    interp: InterpOptions = field(default_factory=InterpOptions)
    root: str = "runs/default/collated/gemma-3-270m"
    """A collated model folder (holds manifest.json), a dataset folder inside it, or a dataset saescope did not
    write: a TDB-layout folder or URL, or a registry name such as gpt2-small:mlp_neurons (`saescope datasets`)."""
    dataset: str = ""
    """Dataset path inside root, e.g. sae_latents/resid_post/9 (default: the first SAE dataset, else the first)."""
    indices: str = ""
    """Comma-separated unit indices to explain (default: every live unit, in order)."""
    overwrite: bool = False
    """Redo the selected units even where already explained/scored (other units in the files are kept)."""

    def __post_init__(self) -> None:
        parse_indices(self.indices)



def parse_indices(text: str, option: str = "--indices") -> set[int] | None:
    """'3,5,9' → {3, 5, 9}; '' → None (every unit)."""
    if not text.strip():
        return None
    try:
        out = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise SaescopeError(f"{option} '{text}': expected comma-separated unit indices such as 3,5,9") from None
    if any(i < 0 for i in out):
        raise SaescopeError(f"{option} '{text}': unit indices are 0 or more")
    return out


@dataclass
class InterpResult:
    """One dataset's explanations and scores (the summary written into its scores.json)."""

    dataset: str
    out: Path
    """Its explanations folder (explanations.json, scores.json)."""
    mean_score: float
    """Mean score of the explained units (TDB's top-and-random correlation)."""
    mean_null_score: float
    """Mean score of another unit's explanation on each unit (the floor)."""
    summary: dict[str, Any]
    """Every summary figure, as written (the CLI prints them)."""

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> InterpResult:
        nan = lambda v: float("nan") if v is None else float(v)  # noqa: E731 - NaN is written as null
        return cls(summary["dataset"], Path(summary["out"]), nan(summary.get("mean_score")),
                   nan(summary.get("mean_null_score")), summary)

    @classmethod
    def read(cls, out: Path) -> InterpResult:
        """An earlier run's result, from `<out>/scores.json`."""
        from saescope.io import read_json

        return cls.from_summary(read_json(Path(out) / "scores.json", "scores")["summary"])
