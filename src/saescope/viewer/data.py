"""Read-only access to a collated data root for the viewer: datasets, unit summaries, records, explanations.

Every path is built from validated components (known unit types, names matching a safe pattern, integers) and
checked to resolve inside the data root, so no request can read outside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.records import loads
from saescope.units import KINDS, UNIT_TYPES, dataset_path

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class NotFound(Exception):
    pass


class BrokenFile(Exception):
    """A file exists but cannot be read; the message names it."""


@dataclass(frozen=True)
class DatasetRef:
    model: str
    unit_type: str
    name: str
    layer: int

    @property
    def path(self) -> str:
        return dataset_path(self.unit_type, self.layer, self.name)


def parse_dataset(model: str, parts: list[str]) -> DatasetRef:
    """['mlp_neurons', '9'] or ['sae_latents', 'sae', '9'] → DatasetRef (NotFound on anything else)."""
    if not SAFE.match(model) or not parts or parts[0] not in UNIT_TYPES:
        raise NotFound("unknown dataset")
    if KINDS[parts[0]].dictionary:  # sae_latents/<name>/<layer>, transcoder_latents/<name>/<layer>
        if len(parts) != 3 or not SAFE.match(parts[1]):
            raise NotFound("unknown dataset")
        name, layer = parts[1], parts[2]
    else:
        if len(parts) != 2:
            raise NotFound("unknown dataset")
        name, layer = "", parts[1]
    if not layer.isdigit():
        raise NotFound("unknown dataset")
    return DatasetRef(model, parts[0], name, int(layer))


class DataRoot:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._summaries: dict[tuple[str, float, float], dict[str, Any]] = {}
        self._valid: set[tuple[str, int, int]] = set()
        if not self.root.is_dir():
            raise SaescopeError(f"{root}: no such directory; point `saescope view` at a collated/ folder")

    def _inside(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts).resolve()
        if p != self.root and self.root not in p.parents:
            raise NotFound("outside the data root")
        return p

    def _json(self, path: Path) -> Any:
        if not path.is_file():
            raise NotFound(str(path.relative_to(self.root)))
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BrokenFile(f"{path.relative_to(self.root)} is not valid JSON ({e.msg} at line {e.lineno})") from None

    def manifests(self) -> list[dict[str, Any]]:
        out = []
        for m in sorted(self.root.glob("*/manifest.json")):
            try:
                data = self._json(m)
            except BrokenFile:
                continue
            if data.get("format") == "saescope-collated":
                out.append(data)
        return out

    def check(self) -> list[dict[str, Any]]:
        """The datasets, after checking every manifest (`saescope view` calls this before serving): a manifest that
        is not valid JSON or not a saescope-collated one is a SaescopeError, not a silently smaller list."""
        from saescope.io import read_json

        paths = sorted(self.root.glob("*/manifest.json"))
        for m in paths:
            data = read_json(m, "collated manifest")
            ok = isinstance(data, dict) and isinstance(data.get("datasets"), list) and all(
                isinstance(d, dict) and {"path", "unit_type", "layer"} <= set(d) for d in data["datasets"])
            if not ok or data.get("format") != "saescope-collated" or not isinstance(data.get("model"), str):
                raise SaescopeError(f"{m}: not a saescope-collated manifest (needs format, model and datasets with "
                                    f"path, unit_type, layer); restore it or re-run collate")
            for d in data["datasets"]:
                summary = m.parent / str(d["path"]) / "summary.json"
                if not d.get("remote") and not summary.is_file():
                    raise SaescopeError(f"{m}: lists dataset {d['path']} but {summary} is missing; re-run collate "
                                        f"(or restore the folder)")
        rows = self.datasets()
        if not rows:
            raise SaescopeError(f"{self.root}: no datasets (no <model>/manifest.json inside); point `saescope view` "
                                f"at a collated/ folder")
        return rows

    def datasets(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.manifests():
            for d in m.get("datasets", []):
                rows.append({"model": m["model"], "model_spec": m.get("model_spec", m["model"]), **d,
                             # each dataset's own count (pair datasets see fewer excerpts), the run's as a fallback
                             "tokens": d.get("tokens", m.get("tokens")), "excerpt_len": m.get("excerpt_len"),
                             **({"dictionary": ev} if (ev := dictionary_eval(d.get("source"), d)) else {})})
        return rows

    def manifest(self, model: str) -> dict[str, Any]:
        if not SAFE.match(model):
            raise NotFound("unknown model")
        return self._json(self._inside(model, "manifest.json"))

    def external(self, ds: DatasetRef) -> dict[str, Any] | None:
        """The manifest entry of a dataset saescope did not write (see `saescope.sources`), else None."""
        try:
            entries = self.manifest(ds.model).get("datasets", [])
        except NotFound:
            return None
        return next((d for d in entries if d.get("path") == ds.path and d.get("remote")), None)

    def _external_summary(self, ds: DatasetRef, entry: dict[str, Any]) -> dict[str, Any]:
        """Unit table of an external dataset without summary.json: every index in its range, with statistics for
        the records fetched so far (the page fills in as records arrive)."""
        from saescope.sources import known_rows

        rows = known_rows(self.root / ds.model, entry)
        n = entry.get("units") or (max(rows) + 1 if rows else 0)
        return {"unit_type": entry["unit_type"], "layer": entry["layer"], "external": True,
                "by_token_pair": bool(entry.get("by_token_pair")),
                "units": [rows.get(i) or {"index": i} for i in range(n)]}

    def summary(self, ds: DatasetRef) -> dict[str, Any]:
        """The dataset's unit table with explanations merged in; cached until either file changes (read-only)."""
        path = self._inside(ds.model, *ds.path.split("/"), "summary.json")
        scores = self._inside(ds.model, "explanations", *ds.path.split("/"), "scores.json")
        entry = self.external(ds) if not path.is_file() else None
        if not path.is_file() and entry is None:
            raise NotFound(str(path.relative_to(self.root)))
        key = (str(path), path.stat().st_mtime if entry is None else -1.0,
               scores.stat().st_mtime if scores.is_file() else 0.0)
        if entry is not None:  # rebuilt on every call: records arrive while the page is open
            s = self._external_summary(ds, entry)
            self._summaries.pop(key, None)
        if key not in self._summaries:
            s = self._json(path) if entry is None else s
            expl = self.explanations(ds)
            for row in s["units"]:
                e = expl.get(row["index"])
                row["explanation"] = e["explanation"] if e else None
                row["score"] = e["score"] if e else None
            self._summaries = {k: v for k, v in self._summaries.items() if k[0] != key[0]}
            self._summaries[key] = s
        return self._summaries[key]

    def record(self, ds: DatasetRef, index: int) -> dict[str, Any]:
        return json.loads(self.record_text(ds, index))

    def record_text(self, ds: DatasetRef, index: int) -> str:
        """The record's JSON text: built from the dataset's compact records, or a record file's text, validated (a
        broken file raises BrokenFile naming it)."""
        path = self._inside(ds.model, *ds.path.split("/"), f"{int(index)}.json")
        entry = self.external(ds)
        if entry is not None:  # fetched (and cached) on first read, or read from its local folder
            from saescope.sources import record_text

            try:
                return record_text(self.root / ds.model, entry, int(index))
            except FileNotFoundError:
                raise NotFound(f"{ds.path}/{index}.json") from None
            except SaescopeError as e:
                raise BrokenFile(str(e)) from None
        folder = path.parent
        from saescope.compact_records import PACK_FILE

        if (folder / PACK_FILE).is_file():  # compact records: built on demand (valid by construction)
            from saescope.compact_records import open_pack

            try:
                return open_pack(folder).record_text(int(index))
            except FileNotFoundError:
                raise NotFound(f"{ds.path}/{index}") from None
            except SaescopeError as e:
                raise BrokenFile(str(e)) from None
        if not path.is_file():
            raise NotFound(str(path.relative_to(self.root)))
        text = path.read_text(encoding="utf-8")
        key = (str(path), path.stat().st_mtime_ns, len(text))
        if key not in self._valid:  # parse each file version once; afterwards its text is served as it is
            try:
                loads(text)  # the record schema's own reader: valid JSON *and* a NeuronRecord
            except json.JSONDecodeError as e:
                raise BrokenFile(f"{path.relative_to(self.root)} is not valid JSON ({e.msg} at line {e.lineno})") from None
            except (ValueError, TypeError, KeyError) as e:
                raise BrokenFile(f"{path.relative_to(self.root)} is not a NeuronRecord ({e})") from None
            if len(self._valid) > 200_000:
                self._valid.clear()
            self._valid.add(key)
        return text

    def histogram(self, ds: DatasetRef, index: int) -> dict[str, Any] | None:
        """One unit's exact activation histogram over every collated token (see `collate.state.Moments`), or None
        for a dataset collated without one: {edges, positive, negative, zero, n}."""
        path = self._inside(ds.model, *ds.path.split("/"), "histogram.safetensors")
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if not 0 <= index < f.get_slice("n").get_shape()[0]:
                return None
            counts, n = f.get_slice("counts")[index], int(f.get_slice("n")[index : index + 1][0])
            edges = f.get_tensor("edges")
        pos, neg = counts[0].tolist(), counts[1].tolist()
        return {"edges": edges.tolist(), "positive": pos, "negative": neg, "zero": n - sum(pos) - sum(neg), "n": n}

    def scores_summary(self, ds: DatasetRef) -> dict[str, Any] | None:
        """The `summary` block of the dataset's scores.json (mean score, fraction ≥ 0.8, null score, backends)."""
        p = self._inside(ds.model, "explanations", *ds.path.split("/"), "scores.json")
        return _load_summary(str(p), p.stat().st_mtime) if p.is_file() else None

    def explanations(self, ds: DatasetRef) -> dict[int, dict[str, Any]]:
        """index → {explanation, score, scores} from <model>/explanations/<dataset path>/scores.json if present."""
        p = self._inside(ds.model, "explanations", *ds.path.split("/"), "scores.json")
        if not p.is_file():
            return {}
        return _load_scores(str(p), p.stat().st_mtime)

    def simulation_text(self, ds: DatasetRef, index: int) -> str | None:
        """Unit `index`'s scored simulation, `NeuronSimulationResults` JSON (`interp.outputs.simulation_results`:
        the file a language-model simulator wrote, the baseline's rebuilt), or None where none was scored."""
        from saescope.interp.outputs import simulation_results

        return simulation_results(self._inside(ds.model), ds.path, index)


@lru_cache(maxsize=64)
def _load_scores(path: str, mtime: float) -> dict[int, dict[str, Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {int(k): v for k, v in data.get("units", {}).items()}


@lru_cache(maxsize=64)
def _load_summary(path: str, mtime: float) -> dict[str, Any] | None:
    summ = json.loads(Path(path).read_text(encoding="utf-8")).get("summary")
    if summ is None:
        return None
    # undefined means (no scored unit) are NaN in the file; JSON responses carry them as null
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in summ.items()}


DICTIONARY_KEYS = ("delta_ce", "delta_ce_se", "kl_div", "kl_div_se", "fvu", "l0", "dead_fraction", "ce_loss_recovered",
                   "ce_loss_recovered_reliable", "spliced_contexts", "spliced_from")
"""What the dataset list shows of an SAE's eval.json, the loss it adds to the model first."""


def dictionary_eval(source: str | None, dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of the eval.json next to an SAE's weights (written by `saescope run`), or {} where there
    is none (a source-less dataset, an SAE evaluated elsewhere, an unreadable file). A transcoder set's eval.json
    describes the whole replacement model: a transcoder dataset shows its own layer's row (FVU, L0, dead)."""
    if not source or not (Path(source) / "eval.json").is_file():
        return {}
    try:
        ev = json.loads((Path(source) / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(ev, dict):
        return {}
    if dataset is not None and dataset.get("unit_type") == "transcoder_latents":
        ev = ev.get("per_layer", {}).get(str(dataset.get("layer")), {})
    if not isinstance(ev, dict):
        return {}
    out = {k: ev[k] for k in DICTIONARY_KEYS if k in ev}
    if isinstance(ev.get("dead_fraction_training"), float):  # dead as training counts it, not the held-out shard's
        out["dead_fraction"] = ev["dead_fraction_training"]
    return out
