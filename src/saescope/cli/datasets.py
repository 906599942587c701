"""`saescope datasets` (the seed's public datasets by name) and `saescope summarize` (a unit table for a dataset
saescope did not write)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SummarizeConfig:
    """Fetch every record of a TDB-layout dataset (registry name, URL or folder) and write its summary.json, so the
    viewer's unit table sorts by every statistic."""

    root: str = ""
    """Registry name (gpt2-small:mlp_neurons), TDB-layout URL or folder."""
    dataset: str = ""
    """Dataset path inside it, e.g. mlp_neurons/5 (default: every one)."""
    unit_type: str = ""
    """For a folder or URL: mlp_neurons, attention_heads or sae_latents."""

    def __post_init__(self) -> None:
        from saescope import validate
        from saescope.units import UNIT_TYPES

        validate.one_of(self.unit_type, ("", *UNIT_TYPES), "--unit_type")


def list_public(argv: list[str]) -> int:
    from saescope.sources import PUBLIC

    if argv:
        print("usage: saescope datasets   (lists the seed's public datasets; open one with `saescope view NAME`;\n"
              "SAESCOPE_PUBLIC_MIRROR=<url or folder> reads them from a mirror of the public blob's layout)")
        return 0 if argv[0] in ("-h", "--help") else 2
    print(f"{'name':<48} {'unit type':<16} {'layers':>6} {'units':>6}  first URL")
    for d in PUBLIC.values():
        print(f"{d.name:<48} {d.unit_type:<16} {d.layers:>6} {d.units:>6}  {d.templates[0]}")
    return 0


def summarize(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.errors import SaescopeError
    from saescope.io import read_json
    from saescope.sources import open_root
    from saescope.sources import summarize as run

    cfg = parse(SummarizeConfig, argv, "saescope summarize")
    if not cfg.root:
        raise SaescopeError("--root: give a registry name, URL or TDB-layout folder to summarize")
    root = open_root(cfg.root, cfg.unit_type)
    for m in sorted(root.glob("*/manifest.json")):
        data = read_json(m, "dataset manifest")
        if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
            raise SaescopeError(f"{m}: not a dataset manifest (no 'datasets' list); delete it and re-open the dataset")
        paths = [d["path"] for d in data["datasets"] if isinstance(d, dict) and d.get("remote")]
        if cfg.dataset and cfg.dataset not in paths:
            raise SaescopeError(f"{m}: no external dataset '{cfg.dataset}' (have {', '.join(paths)})")
        for p in [cfg.dataset] if cfg.dataset else paths:
            s = run(root, m.parent.name, p)
            print(f"{p}: {sum(1 for u in s['units'] if not u.get('missing'))} of {len(s['units'])} records → "
                  f"{m.parent / p / 'summary.json'}")
    return 0
