"""SAELens' pretrained-SAE registry (`pretrained_saes.yaml`) on the loading side: a (release, SAE id) → the SAE's
folder on disk, without downloading anything (`load_sae("saelens:<release>:<sae id>")`). Writing an entry for a
run's SAEs is `export/saelens.py`."""

from __future__ import annotations

import os
from pathlib import Path

from saescope.errors import SaescopeError


def _registry_files(registry: str | Path | None) -> list[Path]:
    if registry:
        return [Path(registry)]
    out = []
    if os.environ.get("SAESCOPE_SAELENS_REGISTRY"):
        out.append(Path(os.environ["SAESCOPE_SAELENS_REGISTRY"]))
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec and spec.origin:
        out.append(Path(spec.origin).parent / "pretrained_saes.yaml")
    return [p for p in out if p.is_file()]


def _hub_snapshot_dirs(repo_id: str) -> list[Path]:
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    snaps = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if snaps.is_dir() else []


def resolve_release(release: str, sae_id: str, registry: str | Path | None = None) -> Path:
    """(release, sae id) of a pretrained_saes.yaml → the SAE's folder on disk: `repo_id` as a local folder, else
    the Hugging Face hub cache's snapshot of it. Nothing is downloaded."""
    import yaml

    files = _registry_files(registry)
    if not files:
        raise SaescopeError("no pretrained_saes.yaml: pass one (--registry or SAESCOPE_SAELENS_REGISTRY), or "
                            "install sae-lens, whose registry is used")
    for f in files:
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SaescopeError(f"{f}: not valid YAML ({e.__class__.__name__})") from None
        if release not in data:
            continue
        rel = data[release]
        if not isinstance(rel, dict) or "repo_id" not in rel or not isinstance(rel.get("saes"), list):
            raise SaescopeError(f"{f}: release '{release}' lacks 'repo_id' or a 'saes' list")
        if rel.get("conversion_func"):
            raise SaescopeError(f"{f}: release '{release}' needs SAELens' conversion '{rel['conversion_func']}'; "
                                "point saescope at the converted folder or file instead")
        sae = next((s for s in rel["saes"] if isinstance(s, dict) and s.get("id") == sae_id), None)
        if sae is None:
            ids = ", ".join(str(s.get("id")) for s in rel["saes"][:8] if isinstance(s, dict))
            raise SaescopeError(f"{f}: release '{release}' has no SAE id '{sae_id}' (has {ids}, ...)")
        repo, sub = str(rel["repo_id"]), str(sae.get("path") or sae_id)
        local = Path(repo) if Path(repo).is_absolute() else f.parent / repo
        for base in ([local] if local.is_dir() else []) + _hub_snapshot_dirs(repo):
            if (base / sub).exists():
                return base / sub
        raise SaescopeError(f"{release}/{sae_id}: files not on disk (looked in {local} and the hub cache of {repo}); "
                            f"download them with `huggingface-cli download {repo} --include '{sub}/*'`")
    raise SaescopeError(f"no release '{release}' in {', '.join(map(str, files))}")
