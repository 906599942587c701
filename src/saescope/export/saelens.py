"""SAELens' pretrained-SAE registry (`pretrained_saes.yaml`): describe a run's SAEs as a release (loading an SAE by
release id and SAE id from files already on disk is `sae/releases.py`).

An entry, as SAELens reads it:

    <release>:
      repo_id: <org>/<repo>        # a Hugging Face repo, or a local folder
      model: <model name>
      conversion_func: null        # the files are in SAELens' own layout
      saes:
      - id: <sae id>               # saescope writes the hookpoint, e.g. resid_post.9
        path: <folder in the repo> # cfg.json + sae_weights.safetensors (+ sparsity.safetensors)
        l0: 32.0
        variance_explained: 0.85
        neuronpedia: <model>/<source id>
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.io import read_json


@dataclass
class SAELensEntryConfig:
    """Print a pretrained_saes.yaml entry for a run's SAEs (upload saes/ to repo_id, or keep it local)."""

    run: str = "runs/default"
    """A `saescope run` output folder (holds saes/<name>/)."""
    release: str = ""
    """Release id (default saescope-<model>-<run folder name>)."""
    repo_id: str = ""
    """Hugging Face repo the saes/ folder is uploaded to (default: the local saes/ folder's absolute path)."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.existing_dir(self.run, "RUN_DIR (--run)", "`saescope run` output folder")


def saelens_entry(cfg: SAELensEntryConfig) -> str:
    import yaml

    run = Path(cfg.run)
    dirs = sorted(p.parent for p in (run / "saes").glob("*/cfg.json"))
    if not dirs:
        raise SaescopeError(f"{run / 'saes'}: no SAE folders (cfg.json); run `saescope run` or `saescope train` first")
    saes, model = [], ""
    for d in dirs:
        c = read_json(d / "cfg.json", "SAE cfg.json")
        meta = c.get("metadata", {})
        model = model or meta.get("model_name", "")
        ev = read_json(d / "eval.json") if (d / "eval.json").is_file() else {}
        row: dict[str, Any] = {"id": meta.get("hook_name") or d.name, "path": d.name}
        for key in ("delta_ce", "delta_ce_se", "kl_div"):  # the loss it adds first (SAELens ignores unknown keys)
            if key in ev:
                row[key] = round(float(ev[key]), 4)
        if "l0" in ev:
            row["l0"] = round(float(ev["l0"]), 3)
        if "explained_variance" in ev:
            row["variance_explained"] = round(float(ev["explained_variance"]), 4)
        saes.append(row)
    release = cfg.release or f"saescope-{model or 'model'}-{run.resolve().name}"
    entry = {release: {"repo_id": cfg.repo_id or str((run / "saes").resolve()), "model": model,
                       "conversion_func": None, "saes": saes}}
    return yaml.safe_dump(entry, sort_keys=False)
