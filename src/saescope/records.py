"""Transformer-Debugger `NeuronRecord` JSON: the one door to records (collate writes, interp and the viewer read).

Declared here once: the schema (with legacy renames on reading), a record's max activation and the "activating"
threshold (the unit kinds and their dataset paths are `saescope.units`'). Every object carries `dataclass_name` (TDB's
FastDataclass convention); NaN statistics are written as null. Files live at `{dataset}/{layer}/{index}.json`
under a model folder, where `{dataset}` is `units.dataset_dir(unit_type, name)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.io import atomic_path, clean_nans

ACTIVATING_FRACTION = 0.3
"""A token (or excerpt, by its max) is "activating" when its activation is ≥ this fraction of the unit's max
activation (TDB/delphi's convention for detection and fuzzing)."""


def max_activation(activations: Any) -> float:
    """Largest activation over records (dicts or ActivationRecords), at least 0."""
    best = 0.0
    for r in activations:
        acts = r["activations"] if isinstance(r, dict) else r.activations
        if len(acts):
            best = max(best, float(np.max(acts)) if isinstance(acts, np.ndarray) else max(acts))
    return float(best)


def is_activating(value: float, max_act: float) -> bool:
    return max_act > 0 and value >= ACTIVATING_FRACTION * max_act


@dataclass
class ActivationRecord:
    """One excerpt: decoded tokens (leading spaces kept) and the unit's activation per token (per token pair for
    attention heads: the row-major lower triangle, length T(T+1)/2). Collation hands a float64 array here, which
    `dumps` writes without making a Python float of every zero."""

    activations: list[float] | np.ndarray
    tokens: list[str]


@dataclass
class NeuronId:
    neuron_index: int
    """Neuron / head / latent index within the layer."""
    layer_index: int


@dataclass
class NeuronRecord:
    neuron_id: NeuronId
    random_sample: list[ActivationRecord] = field(default_factory=list)
    """Uniform random excerpts, drawn independently for every unit."""
    random_sample_by_quantile: list[list[ActivationRecord]] | None = None
    """Five buckets of random excerpts whose max activation lies in [q0, q.5), [.5, .9), [.9, .99), [.99, .999), [.999, 1]."""
    quantile_boundaries: list[float] | None = None
    """The four excerpt-max activation values at quantiles 0.5, 0.9, 0.99, 0.999."""
    mean: float | None = float("nan")
    variance: float | None = float("nan")
    skewness: float | None = float("nan")
    kurtosis: float | None = float("nan")
    most_positive_activation_records: list[ActivationRecord] = field(default_factory=list)
    """Excerpts with the highest max activation, descending."""

    @property
    def max_activation(self) -> float:
        return max_activation(self.most_positive_activation_records)


_CLASSES = {c.__name__: c for c in (ActivationRecord, NeuronId, NeuronRecord)}
_RENAMES = {"NeuronId": {"idx": "neuron_index", "layer": "layer_index"}}


def to_dict(obj: Any) -> Any:
    """Dataclass → JSON-ready dict with `dataclass_name` on every object."""
    if isinstance(obj, list):
        if not obj or isinstance(obj[0], (int, float, str)):  # activations / tokens: plain values, no recursion
            return obj
        return [to_dict(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        d = {"dataclass_name": type(obj).__name__}
        d.update({f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)})
        return d
    return obj


def _fieldset(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _hook(d: dict[str, Any]) -> Any:
    name = d.pop("dataclass_name", None)
    cls = _CLASSES.get(name) if name else None
    if cls is None:  # older files: pick the class by its field names (legacy renames applied first)
        for exact in (True, False):
            for cname, c in _CLASSES.items():
                keys = {_RENAMES.get(cname, {}).get(k, k) for k in d}
                if keys and (keys == _fieldset(c) if exact else keys <= _fieldset(c)):
                    cls = c
                    break
            if cls is not None:
                break
    if cls is None:
        return d
    d = {_RENAMES.get(cls.__name__, {}).get(k, k): v for k, v in d.items()}
    d = {k: v for k, v in d.items() if k in _fieldset(cls)}
    if cls is NeuronId:
        d = {k: int(v) for k, v in d.items()}  # some published files have string layer indices
    if cls is NeuronRecord:
        for k in ("mean", "variance", "skewness", "kurtosis"):
            if d.get(k) is None:
                d[k] = float("nan")
    return cls(**d)


_ZEROS: dict[int, list[str]] = {}


def json_numbers(values: list[float] | np.ndarray) -> str:
    """A JSON array of activations: exact zeros as 0 (sparse units' excerpts are mostly zeros; by-token-pair records
    hold T(T+1)/2 values per excerpt), the others as Python's shortest float repr, which is what json.dumps writes."""
    a = np.asarray(values, dtype=np.float64)
    nz = np.flatnonzero(a)
    vals = a[nz]
    if not np.isfinite(vals).all():
        raise ValueError(f"activation {vals[~np.isfinite(vals)][0]} is not a JSON number")
    zeros = _ZEROS.get(a.size)
    if zeros is None:
        zeros = _ZEROS[a.size] = ["0"] * a.size
    parts = zeros.copy()
    for i, v in zip(nz.tolist(), vals.tolist()):
        parts[i] = repr(v)
    return "[" + ",".join(parts) + "]"


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _tokens_json(tokens: list[str], memo: dict[int, tuple[list[str], str]] | None) -> str:
    if memo is None:
        return _json(tokens)
    got = memo.get(id(tokens))
    if got is None or got[0] is not tokens:
        got = memo[id(tokens)] = (tokens, _json(tokens))  # holds the list: its id is not reused while memoised
    return got[1]


def _records_json(rs: list[ActivationRecord], memo: dict[int, tuple[list[str], str]] | None = None) -> str:
    return "[" + ",".join('{"dataclass_name":"ActivationRecord","activations":' + json_numbers(r.activations)
                          + ',"tokens":' + _tokens_json(r.tokens, memo) + "}" for r in rs) + "]"


def dumps(record: NeuronRecord, tokens_memo: dict[int, tuple[list[str], str]] | None = None) -> str:
    """Compact JSON of a record (statistics' NaN as null, as orjson does); activations through `json_numbers`.
    `tokens_memo` (collation: excerpts' token lists are shared between records and never changed) keeps each token
    list's JSON, so an excerpt in many records is encoded once."""
    out = ['{"dataclass_name":"NeuronRecord"']
    for f in fields(record):
        v = getattr(record, f.name)
        if f.name in ("random_sample", "most_positive_activation_records"):
            text = _records_json(v, tokens_memo)
        elif f.name == "random_sample_by_quantile":
            text = "null" if v is None else "[" + ",".join(_records_json(b, tokens_memo) for b in v) + "]"
        elif f.name in ("mean", "variance", "skewness", "kurtosis", "quantile_boundaries"):
            text = _json(clean_nans(v))
        else:
            text = _json(to_dict(v))
        out.append(f'"{f.name}":{text}')
    return ",".join(out) + "}"


def summary_row(record: NeuronRecord, by_token_pair: bool) -> dict[str, Any]:
    """A record's row of its dataset's unit table (summary.json): index, max activation, moments, the token of its
    top activation (the query token for by-token-pair records) and how many top excerpts fire."""
    top = record.most_positive_activation_records
    top_token: str | None = None  # a dead unit (never fired) has no top token
    if top and len(top[0].activations) and float(np.max(top[0].activations)) > 0:
        j = int(np.argmax(top[0].activations))
        if by_token_pair:
            j = int((math.isqrt(8 * j + 1) - 1) // 2)  # row of flattened lower-triangle index j: the query token
        top_token = top[0].tokens[j] if j < len(top[0].tokens) else ""
    return {"index": record.neuron_id.neuron_index, "max_activation": record.max_activation,
            "mean": clean_nans(record.mean), "variance": clean_nans(record.variance), "top_token": top_token,
            "firing_excerpts": sum(float(np.max(x.activations)) > 0 for x in top if len(x.activations))}


def loads(text: str) -> NeuronRecord:
    obj = json.loads(text, object_hook=_hook)
    if not isinstance(obj, NeuronRecord):
        raise ValueError("not a NeuronRecord")
    return obj


def record_path(root: str | Path, layer: int, index: int) -> Path:
    return Path(root) / str(layer) / f"{index}.json"


def write_record(root: str | Path, record: NeuronRecord,
                 tokens_memo: dict[int, tuple[list[str], str]] | None = None) -> Path:
    path = record_path(root, record.neuron_id.layer_index, record.neuron_id.neuron_index)
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(record, tokens_memo), encoding="utf-8")
    return path


def read_record(path: str | Path) -> NeuronRecord:
    path = Path(path)
    try:
        return loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaescopeError(f"{path}: no such record") from None
    except (ValueError, TypeError, KeyError) as e:
        raise SaescopeError(f"{path}: not a valid NeuronRecord ({e})") from None


class JsonRecords:
    """A TDB-layout folder of `{index}.json` records (what `export tdb` writes, and datasets from elsewhere), read with
    the same face as `compact_records.PackedRecords`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and (self.folder / f"{index}.json").is_file()

    def record_text(self, index: int) -> str:
        return (self.folder / f"{int(index)}.json").read_text(encoding="utf-8")  # FileNotFoundError when absent

    def record(self, index: int) -> NeuronRecord:
        return read_record(self.folder / f"{int(index)}.json")

    def record_dict(self, index: int) -> dict[str, Any]:
        return read_record_dict(self.folder / f"{int(index)}.json")


def open_records(folder: str | Path) -> Any:
    """A dataset folder's records, whichever way they are stored: `compact_records.PackedRecords` where collation
    wrote records.safetensors, else `JsonRecords` (`{index}.json` files). Both give `record(i)`, `record_text(i)`
    and `i in records`; a unit that is not there raises FileNotFoundError."""
    from saescope.compact_records import PACK_FILE  # light: numpy only

    if (Path(folder) / PACK_FILE).is_file():
        from saescope.compact_records import open_pack

        return open_pack(folder)
    return JsonRecords(folder)


def read_unit(folder: str | Path, index: int) -> NeuronRecord:
    """Unit `index` of a dataset folder (compact or JSON), or a SaescopeError naming it."""
    try:
        return open_records(folder).record(int(index))
    except FileNotFoundError:
        raise SaescopeError(f"{Path(folder) / str(index)}: no such record") from None


def read_unit_dict(folder: str | Path, index: int) -> dict[str, Any]:
    """`read_record_dict` of unit `index` of a dataset folder (compact or JSON)."""
    recs = open_records(folder)
    if isinstance(recs, JsonRecords):
        return recs.record_dict(index)
    return _collapsed(json.loads(recs.record_text(int(index))))


def read_record_dict(path: str | Path) -> dict[str, Any]:
    """A record as its canonical JSON dict (validated, legacy names renamed), for code that works on JSON.

    Excerpts of by-token-pair records (T tokens, T(T+1)/2 activations) are collapsed to one activation per token,
    the largest over the token's pairs as query (`token_activations`), so explainers and simulators, which read
    one value per token, see where the unit acts; other records are returned as they are."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        d = None
    if not _is_canonical(d):  # older or foreign files (legacy names, no dataclass_name): the full reader
        return record_dict(read_record(path))
    return _collapsed(d)


def _is_canonical(d: Any) -> bool:
    """A record as saescope and current TDB write it: every object named, the fields the readers use present."""
    if not isinstance(d, dict) or d.get("dataclass_name") != "NeuronRecord":
        return False
    nid = d.get("neuron_id")
    if not isinstance(nid, dict) or not isinstance(nid.get("neuron_index"), int) or not isinstance(nid.get("layer_index"), int):
        return False
    groups = [d.get("most_positive_activation_records"), d.get("random_sample"),
              *(d.get("random_sample_by_quantile") or [])]
    return all(isinstance(g, list) and all(isinstance(r, dict) and r.get("dataclass_name") == "ActivationRecord"
                                           and isinstance(r.get("activations"), list) and isinstance(r.get("tokens"), list)
                                           for r in g) for g in groups)


def _collapsed(d: dict[str, Any]) -> dict[str, Any]:
    for key in ("most_positive_activation_records", "random_sample"):
        d[key] = [_per_token(r) for r in d[key]]
    d["random_sample_by_quantile"] = [[_per_token(r) for r in b] for b in d.get("random_sample_by_quantile") or []]
    return d


def record_dict(record: NeuronRecord) -> dict[str, Any]:
    """`read_record_dict` of a record already read."""
    d = to_dict(record)
    for key in ("most_positive_activation_records", "random_sample"):
        d[key] = [_per_token(r) for r in d[key]]
    d["random_sample_by_quantile"] = [[_per_token(r) for r in b] for b in d.get("random_sample_by_quantile") or []]
    return d


def token_activations(tokens: list[str], activations: list[float]) -> list[float]:
    """Per-token activations of an excerpt: as they are, or for by-token-pair excerpts (row-major lower triangle
    over T tokens) the maximum over each query token's pairs."""
    T = len(tokens)
    if len(activations) == T or len(activations) != T * (T + 1) // 2:
        return activations
    starts = np.arange(T) * (np.arange(T) + 1) // 2  # row i of the lower triangle starts at i(i+1)/2
    return np.maximum.reduceat(np.asarray(activations, dtype=np.float64), starts).tolist()


def _per_token(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "activations": token_activations(r["tokens"], r["activations"])}
