"""The files an interp run merges into, under `<model root>/explanations/<dataset>/`:

    explanations.json        index → explanation (or failure), written as the explain phase goes
    <index>.jsonl            one NeuronSimulationResults line per unit (TDB/automated-interpretability schema)
    scores.json              index → scores (read by the viewer) + a summary

Units a run does not redo are kept byte for byte, and a failed attempt never replaces an earlier success.
Provenance is per unit (explainer or simulator, model, time); the file-level "explainer" that older readers look
for names the one backend behind every unit, or "mixed: ..." (files written before per-unit provenance get their
header's backend copied onto their units).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from saescope.errors import SaescopeError
from saescope.io import read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from saescope.interp.backends import Backend


def now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_units(path: Path, what: str, header: str) -> dict[str, Any]:
    """index → entry of an explanations/scores file. Files written before provenance was kept per unit carry it
    once in a header (explanations.json "explainer", scores.json summary "simulator"): copied onto each unit."""
    if not path.exists():
        return {}
    data = read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("units"), dict):
        raise SaescopeError(f"{path}: {what} has no 'units' object; move it aside and re-run")
    old = (data.get("summary") or {}) if header == "simulator" else data
    units = data["units"]
    for v in units.values():
        if isinstance(v, dict) and header not in v and old.get(header):
            v[header] = old[header]
    return units


def label(units: dict[str, Any], key: str) -> str:
    """The file-level name old readers look for: the one backend behind every unit, else all of them."""
    names = sorted({str(v.get(key)) for v in units.values() if v.get(key)})
    return names[0] if len(names) == 1 else ("mixed: " + ", ".join(names) if names else "")


def merge(units: dict[str, Any], i: int, new: dict[str, Any], value: str) -> None:
    """Put unit i's new result in; a failed attempt never replaces an earlier success (it is noted beside it)."""
    old = units.get(str(i))
    if new.get("failure") and old and old.get(value) is not None and not old.get("failure"):
        old["last_failure"] = new["failure"]
        return
    units[str(i)] = new


def write_explanations(path: Path, expl: dict[str, Any]) -> None:
    write_json(path, {"explainer": label(expl, "explainer"), "units": expl}, indent=None)


def write_scores(path: Path, scores: dict[str, Any], summ: dict[str, Any] | None = None) -> None:
    """scores.json on one line: with 10⁴–10⁵ units, an indented file takes json's pure-Python encoder (~10× slower)."""
    write_json(path, {"units": scores, **({"summary": summ} if summ is not None else {})}, indent=None)


def summary(ds: str, expl: dict[str, Any], scores: dict[str, Any], llms: list[Backend], out: Path) -> dict[str, Any]:
    """Over every unit of the file (this run's and kept ones); the backends named are those behind the units."""
    vals = [v["score"] for v in scores.values() if v.get("score") is not None]
    nulls = [v["scores"].get("null") for v in scores.values() if v.get("scores") and v["scores"].get("null") is not None]
    failures = [i for i, v in expl.items() if v.get("failure")] + [i for i, v in scores.items() if v.get("failure")]
    return {"dataset": ds, "explainer": label(scores, "explainer"), "simulator": label(scores, "simulator"),
            "units": len(scores),
            "mean_score": sum(vals) / len(vals) if vals else float("nan"),
            "fraction_ge_0.8": sum(v >= 0.8 for v in vals) / len(vals) if vals else float("nan"),
            "mean_null_score": sum(nulls) / len(nulls) if nulls else float("nan"),
            "constant_predictions": sum(1 for v in scores.values() if (v.get("scores") or {}).get("constant_prediction")),
            "failures": len(failures), "usage": {b.name: b.usage for b in llms}, "out": str(out)}



class Simulations:
    """A dataset's `NeuronSimulationResults`, one JSON line per scored unit: the `<index>.jsonl` a language-model
    simulator wrote, or, for the baseline simulator, which writes none (its simulation is a function of the
    explanation and the record), rebuilt: the same text the file held when the baseline wrote one."""

    def __init__(self, manifest_dir: Path, ds: str) -> None:
        self.manifest_dir, self.ds = Path(manifest_dir), ds
        self.out = self.manifest_dir / "explanations" / ds
        self.scores = load_units(self.out / "scores.json", "scores file", "simulator")
        manifest = read_json(self.manifest_dir / "manifest.json", "collated manifest")
        self.entry = next((d for d in manifest.get("datasets", []) if d.get("path") == ds), None)

    def text(self, index: int) -> str | None:
        """Unit `index`'s line (no newline), or None where it has no scored explanation."""
        import json

        path = self.out / f"{index}.jsonl"
        if path.is_file():
            return path.read_text(encoding="utf-8").rstrip("\n")
        entry = self.scores.get(str(index)) or {}
        if entry.get("simulator") not in ("baseline", "") or not entry.get("explanation") or entry.get("score") is None:
            return None
        from saescope.interp.backends import make_backend
        from saescope.interp.pipeline import _read, score_unit
        from saescope.records import to_dict

        rec = _read(self.manifest_dir, self.ds, index, self.entry)
        result, _ = score_unit(make_backend("baseline"), rec, entry["explanation"])
        return json.dumps(to_dict(result), ensure_ascii=False, allow_nan=False)


def simulation_results(manifest_dir: Path, ds: str, index: int) -> str | None:
    """`Simulations(manifest_dir, ds).text(index)`."""
    return Simulations(manifest_dir, ds).text(index)
