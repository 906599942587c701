"""What the debugger shows beside a node: its collated record's explanation, score, mean and viewer link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.debug.attribute import Node
from saescope.errors import SaescopeError
from saescope.models import HookedModel
from saescope.sae import BaseSAE
from saescope.units import node_dataset


def load_saes(spec: str, hm: HookedModel) -> tuple[dict[str, BaseSAE], dict[str, str]]:
    """'DIR,DIR@HOOKPOINT' → ({hookpoint: SAE}, {hookpoint: SAE name as collated (its folder name)})."""
    from saescope.sae import load_saes_at

    found = load_saes_at(spec, hm)
    return {hp: sae for sae, hp, _ in found}, {hp: path.name for _, hp, path in found}


class NodeNotes:
    """Looks nodes up in a collated model folder (records' summary rows and explanations), if one is given."""

    def __init__(self, root: str, sae_names: dict[str, str]) -> None:
        self.root = Path(root) if root else None
        self.sae_names = sae_names
        self._cache: dict[str, dict[int, dict[str, Any]]] = {}

    def dataset(self, n: Node) -> str | None:
        name = ""
        if n.kind == "latent":
            hp = n.name.split(".", 1)[1].rsplit(".", 1)[0]
            name = self.sae_names.get(hp, hp.split(".")[0])
        return node_dataset(n.kind, n.layer, name)

    def _rows(self, ds: str) -> dict[int, dict[str, Any]]:
        if ds not in self._cache:
            from saescope.io import read_json

            rows: dict[int, dict[str, Any]] = {}
            assert self.root is not None
            summary, scores = self.root / ds / "summary.json", self.root / "explanations" / ds / "scores.json"
            if summary.is_file():
                rows = {u["index"]: dict(u) for u in read_json(summary)["units"]}
            if scores.is_file():
                for k, v in read_json(scores).get("units", {}).items():
                    rows.setdefault(int(k), {}).update(explanation=v.get("explanation"), score=v.get("score"))
            self._cache[ds] = rows
        return self._cache[ds]

    def _has_record(self, ds: str, index: int) -> bool:
        from saescope.records import open_records

        assert self.root is not None
        try:
            return index in open_records(self.root / ds)
        except SaescopeError:  # a damaged records file: no link rather than a failed debug request
            return False

    def note(self, n: Node) -> dict[str, Any]:
        """{dataset, url, explanation, score, mean} where known."""
        ds = self.dataset(n)
        if ds is None or self.root is None:
            return {}
        row = self._rows(ds).get(n.index, {})
        # link only to a unit that has a record (layers not collated would lead to "not found")
        url = f"/u/{self.root.name}/{ds}/{n.index}" if self._has_record(ds, n.index) else None
        return {"dataset": ds, "url": url, "explanation": row.get("explanation"), "score": row.get("score"),
                "mean": row.get("mean")}

    def means(self, ablate: dict[str, str]) -> dict[str, float]:
        """Node name (without @position) → the unit's mean over the collated tokens, for mean-ablation."""
        out: dict[str, float] = {}
        if self.root is None:
            return out
        for name in ablate:
            base = name.split("@")[0]
            kind, _, rest = base.partition(".")
            parts = rest.rsplit(".", 1)
            if kind == "mlp":
                ds = node_dataset(kind, int(parts[0]))
            elif kind == "latent":
                hp = parts[0]
                ds = node_dataset(kind, int(hp.split(".")[1]), self.sae_names.get(hp, hp.split(".")[0]))
            else:
                continue
            assert ds is not None
            row = self._rows(ds).get(int(parts[1]), {})
            if row.get("mean") is not None:
                out[base] = float(row["mean"])
        return out
