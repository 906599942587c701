"""Datasets saescope did not write: any folder or URL in the Transformer-Debugger layout, and the seed's public ones.

A TDB-layout dataset is `{root}/{layer}/{index}.json` NeuronRecords and nothing else (no manifest, no summary).
`open_root(spec)` turns a spec into a saescope data root that the viewer, `explain` and `score` read like a folder
`collate` wrote:

    spec                                  data root (under the saescope cache, `datasets/<model>/`)
    gpt2-small:mlp_neurons                the seed's registry name (`saescope datasets` lists them)
    gpt2-small                            every registry dataset of that model
    https://host/path  az:// gs:// s3://  a remote TDB-layout dataset (fsspec; the cloud schemes need adlfs,
                                          gcsfs or s3fs installed)
    /path/to/folder                       a local TDB-layout folder (read in place, never copied)

The root's `<model>/manifest.json` is synthesised; each dataset entry carries a `remote` block (URL templates,
layers, unit count). Records of remote datasets are fetched one at a time on first read, validated, and cached
under the root with atomic writes, so a second run works offline; a cached file that no longer parses is
fetched again. Statistics for the unit table come from the records at hand until `saescope summarize` has
written a dataset's summary.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.io import atomic_path, cache_dir, read_json, write_json
from saescope.records import NeuronRecord, dumps, loads, summary_row
from saescope.units import dataset_path

log = logging.getLogger(__name__)

BLOB = "https://openaipublic.blob.core.windows.net/neuron-explainer"


@dataclass(frozen=True)
class PublicDataset:
    """One published TDB dataset: where its records are, and how many layers and units it has."""

    name: str
    """Registry name, `<model>:<dataset>`."""
    unit_type: str
    """mlp_neurons, attention_heads or sae_latents."""
    sae: str
    """The autoencoder's name (sae_latents only); the dataset folder is sae_latents/<sae>."""
    templates: tuple[str, ...]
    """URL templates with {layer} and {index}: the seed's first, then the path TDB's own registry reads."""
    layers: int
    units: int
    by_token_pair: bool = False

    @property
    def model(self) -> str:
        return self.name.split(":")[0]


def _registry() -> dict[str, PublicDataset]:
    """The seed's datasets (`collated_activation_datasets.md`): URLs, layer counts and index ranges as it gives them.

    The seed writes the autoencoder datasets as `{latent}.pt` under `gpt2-small/`; TDB's dataset registry reads
    `{latent}.json` under `gpt2_small/` (v1 for the seed's unversioned ones). Both are tried, the seed's first.
    """
    out = [
        PublicDataset("gpt2-small:mlp_neurons", "mlp_neurons", "",
                      (f"{BLOB}/gpt2_small_data/collated-activations/{{layer}}/{{index}}.json",), 12, 3084),
        PublicDataset("gpt2-small:attn_heads", "attention_heads", "",
                      (f"{BLOB}/gpt2_small/attn_write_norm/collated-activations-by-token-pair/{{layer}}/{{index}}.json",),
                      12, 12, by_token_pair=True),
        PublicDataset("gpt2-xl:mlp_neurons", "mlp_neurons", "",
                      (f"{BLOB}/data/collated-activations/{{layer}}/{{index}}.json",), 48, 6400),
    ]
    for inp in ("mlp_post_act", "resid_delta_mlp"):
        for version, tdb in (("", "_v1"), ("_v4", "_v4")):
            sae = f"ae-{inp.replace('_', '-')}{version.replace('_', '-')}"
            out.append(PublicDataset(
                f"gpt2-small:{sae}", "sae_latents", sae,
                (f"{BLOB}/gpt2-small/autoencoder_latent/{inp}{version}/collated-activations/{{layer}}/{{index}}.pt",
                 f"{BLOB}/gpt2_small/autoencoder_latent/{inp}{tdb}/collated-activations/{{layer}}/{{index}}.json"),
                12, 32768))
    for sub, suffix, pair in (("collated-activations", "", False), ("collated-activations-by-token-pair",
                                                                     "-by-token-pair", True)):
        sae = "ae-resid-delta-attn-v4" + suffix
        out.append(PublicDataset(
            f"gpt2-small:{sae}", "sae_latents", sae,
            (f"{BLOB}/gpt2-small/autoencoder_latent/resid_delta_attn_v4/{sub}/{{layer}}/{{index}}.pt",
             f"{BLOB}/gpt2_small/autoencoder_latent/resid_delta_attn_v4/{sub}/{{layer}}/{{index}}.json"),
            12, 10240, by_token_pair=pair))
    return {d.name: d for d in out}


PUBLIC: dict[str, PublicDataset] = _registry()

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _mirrored(template: str) -> str:
    """SAESCOPE_PUBLIC_MIRROR=<url or folder> replaces the public blob's `.../neuron-explainer` prefix (a local copy
    or an institute mirror of the same layout)."""
    import os

    mirror = os.environ.get("SAESCOPE_PUBLIC_MIRROR", "").rstrip("/")
    if mirror and not is_remote(mirror) and not Path(mirror).is_dir():
        raise SaescopeError(f"SAESCOPE_PUBLIC_MIRROR={mirror}: no such folder; set it to a local copy of the public "
                            f"layout or a URL (or unset it)")
    return mirror + template[len(BLOB):] if mirror and template.startswith(BLOB) else template


def datasets_cache() -> Path:
    return cache_dir() / "datasets"


def is_remote(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+]*://", url)) and not url.startswith("file://")


# ---- opening a spec ---------------------------------------------------------------------------------------------
def open_root(spec: str, unit_type: str = "", cache: str | Path | None = None) -> Path:
    """A spec (see the module docstring) → a data root holding `<model>/manifest.json`. A folder that already has
    one (what `collate` writes) is returned as it is."""
    p = Path(spec)
    if p.is_dir() and (any(p.glob("*/manifest.json")) or (p / "manifest.json").is_file()):
        return p
    base = Path(cache) if cache else datasets_cache()
    if spec in PUBLIC or spec in {d.model for d in PUBLIC.values()}:
        chosen = [d for d in PUBLIC.values() if spec in (d.name, d.model)]
        model = chosen[0].model
        entries = [_entry(d.unit_type, d.sae, layer, d.units, d.by_token_pair, [_mirrored(t) for t in d.templates],
                          d.name)
                   for d in chosen for layer in range(d.layers)]
    elif is_remote(spec) or p.is_dir():
        model, entries = _tdb_entries(spec, unit_type)
    elif ":" in spec and not is_remote(spec):
        raise SaescopeError(f"{spec}: not a registry name; `saescope datasets` lists them")
    else:
        raise SaescopeError(f"{spec}: no such folder, URL or registry name (`saescope datasets` lists the names)")
    root = base / model
    _merge_manifest(root / model, model, entries)
    return root


def _entry(unit_type: str, name: str, layer: int, units: int | None, pair: bool | None, templates: list[str],
           source: str) -> dict[str, Any]:
    return {"unit_type": unit_type, "name": name, "layer": layer, "path": dataset_path(unit_type, layer, name),
            "units": units, "by_token_pair": pair, "hookpoints": [], "source": source,
            "remote": {"templates": templates}}


def _tdb_entries(spec: str, unit_type: str) -> tuple[str, list[dict[str, Any]]]:
    """A TDB-layout folder or URL → (model name, one dataset entry per layer)."""
    url = spec.rstrip("/")
    if is_remote(url):
        model = "url-" + hashlib.sha256(url.encode()).hexdigest()[:10]
        layers = None  # listing a remote folder is not always possible: layers are discovered as records arrive
    else:
        url = str(Path(url).resolve())
        model = "dir-" + _SAFE.sub("_", Path(url).name)[:40] + "-" + hashlib.sha256(url.encode()).hexdigest()[:6]
        layers = sorted(int(q.name) for q in Path(url).iterdir() if q.is_dir() and q.name.isdigit())
        if not layers:
            raise SaescopeError(f"{spec}: not a TDB-layout dataset (no {{layer}}/{{index}}.json folders inside)")
    template = url + "/{layer}/{index}.json"
    entries = []
    for layer in layers if layers is not None else [0]:
        units = None
        pair = None
        if layers is not None:
            files = [int(f.stem) for f in (Path(url) / str(layer)).glob("*.json") if f.stem.isdigit()]
            units = max(files) + 1 if files else 0
            if files:
                pair = _is_pair_record(loads_checked((Path(url) / str(layer) / f"{min(files)}.json").read_text(
                    encoding="utf-8"), f"{url}/{layer}/{min(files)}.json"))
        ut = unit_type or ("attention_heads" if pair else "mlp_neurons")
        entries.append(_entry(ut, "" if ut != "sae_latents" else "tdb", layer, units, pair, [template], spec))
    return model, entries


def _is_pair_record(rec: NeuronRecord) -> bool:
    r = next(iter(rec.most_positive_activation_records or rec.random_sample), None)
    if r is None:
        return False
    T = len(r.tokens)
    return len(r.activations) != T and len(r.activations) == T * (T + 1) // 2


def _merge_manifest(model_dir: Path, model: str, entries: list[dict[str, Any]]) -> None:
    path = model_dir / "manifest.json"
    old = read_json(path, "dataset manifest").get("datasets", []) if path.is_file() else []
    new = {e["path"]: e for e in entries}
    keep = [d for d in old if d["path"] not in new]
    write_json(path, {"format": "saescope-collated", "version": 1, "model": model, "model_spec": model,
                      "external": True, "datasets": keep + list(new.values())})


# ---- records ----------------------------------------------------------------------------------------------------
def loads_checked(text: str, where: str) -> NeuronRecord:
    """Parse a record, or a one-line SaescopeError naming where it came from."""
    try:
        return loads(text)
    except json.JSONDecodeError as e:
        raise SaescopeError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}); not a TDB NeuronRecord") from None
    except (ValueError, TypeError, KeyError) as e:
        raise SaescopeError(f"{where}: not a TDB NeuronRecord ({e})") from None


def _to_text(data: bytes, where: str) -> str:
    """Bytes of a published record → its JSON text. JSON as it is; a `.pt` file only if it is a plain torch
    archive of JSON-like values (loaded with weights_only=True: nothing in it is executed)."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        return data.decode("utf-8")
    if data[:2] == b"PK":
        import io

        import torch

        try:
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any unpickling refusal becomes the one-line error below
            raise SaescopeError(f"{where}: a .pt file that is not plain data ({type(e).__name__}); "
                                "only JSON-like records are read, nothing is unpickled") from None
        return json.dumps(obj, default=lambda t: t.tolist())
    raise SaescopeError(f"{where}: neither JSON nor a torch archive; not a TDB NeuronRecord")


_LOCK = threading.Lock()


def fetch(url: str, timeout: float = 60.0) -> bytes | None:
    """The bytes at a URL or local path, or None when it does not exist there."""
    if not is_remote(url):
        p = Path(url.removeprefix("file://"))
        return p.read_bytes() if p.is_file() else None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **({"client_kwargs": {"timeout": _aiohttp_timeout(timeout)}}
                                                 if url.startswith(("http://", "https://")) else {}))
        return fs.cat_file(path)
    except FileNotFoundError:
        return None
    except ImportError as e:
        raise SaescopeError(f"{url}: reading this scheme needs a package fsspec names: {e}") from None
    except Exception as e:  # noqa: BLE001 - network errors of every backend become one line
        raise SaescopeError(f"{url}: cannot fetch ({type(e).__name__}: {e}); offline and not cached?") from None


def _aiohttp_timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


def record_text(model_dir: Path, entry: dict[str, Any], index: int) -> str:
    """The JSON text of one record of a dataset entry: from its local folder, or from the cache, fetching it once
    (validated before it is cached; a cached file that does not parse is fetched again)."""
    layer = int(entry["layer"])
    templates = entry["remote"]["templates"]
    if not any(is_remote(t) for t in templates):  # a local folder: read in place
        path = Path(templates[0].format(layer=layer, index=index))
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return dumps(loads_checked(path.read_text(encoding="utf-8"), str(path)))  # canonical: legacy names renamed
    cached = model_dir / entry["path"] / f"{index}.json"
    if cached.is_file():
        text = cached.read_text(encoding="utf-8", errors="replace")
        try:
            loads(text)
            return text
        except (ValueError, TypeError, KeyError):
            log.warning("%s: cached record does not parse; fetching it again", cached)
    for t in templates:
        url = t.format(layer=layer, index=index)
        data = fetch(url)
        if data is None:
            continue
        rec = loads_checked(_to_text(data, url), url)
        text = dumps(rec)  # cached in the canonical form (older TDB files' legacy names and string layers fixed)
        if rec.neuron_id.layer_index != layer or rec.neuron_id.neuron_index != index:
            raise SaescopeError(f"{url}: holds unit {rec.neuron_id.layer_index}/{rec.neuron_id.neuron_index}, "
                                f"not {layer}/{index}")
        with atomic_path(cached) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return text
    raise FileNotFoundError(" or ".join(t.format(layer=layer, index=index) for t in templates))


def known_rows(model_dir: Path, entry: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Summary rows of the records at hand (cached or local), index → row."""
    layer = int(entry["layer"])
    templates = entry["remote"]["templates"]
    folder = (model_dir / entry["path"] if any(is_remote(t) for t in templates)
              else Path(templates[0].format(layer=layer, index=0)).parent)
    seen = _ROWS.setdefault(str(folder), {})  # path → (mtime_ns, size, row): each file version parsed once
    rows = {}
    for f in folder.glob("*.json") if folder.is_dir() else []:
        if not f.stem.isdigit():
            continue
        st = f.stat()
        got = seen.get(f.name)
        if got is None or got[:2] != (st.st_mtime_ns, st.st_size):
            try:
                row = summary_row(loads(f.read_text(encoding="utf-8")), bool(entry.get("by_token_pair")))
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue
            got = seen[f.name] = (st.st_mtime_ns, st.st_size, row)
        rows[int(f.stem)] = got[2]
    return rows


_ROWS: dict[str, dict[str, tuple[int, int, dict[str, Any]]]] = {}


def summarize(root: Path, model: str, path: str, fetch_missing: bool = True) -> dict[str, Any]:
    """Write `<dataset>/summary.json` for an external dataset from all of its records (fetching the missing ones),
    so the unit table can be sorted by every statistic."""
    from tqdm.auto import tqdm

    model_dir = root / model
    manifest = read_json(model_dir / "manifest.json", "dataset manifest")
    entry = next((d for d in manifest["datasets"] if d["path"] == path), None)
    if entry is None:
        raise SaescopeError(f"{model_dir / 'manifest.json'}: no dataset '{path}'")
    rows = known_rows(model_dir, entry)
    n = entry.get("units") or (max(rows) + 1 if rows else 0)
    if fetch_missing:
        for i in tqdm([i for i in range(n) if i not in rows], desc=f"summarize {path}", unit="rec"):
            try:
                rows[i] = summary_row(loads(record_text(model_dir, entry, i)), bool(entry.get("by_token_pair")))
            except FileNotFoundError:
                continue
    if not rows:  # nothing readable: a wrong folder or mirror, not a dataset of missing units
        where = entry["remote"]["templates"][0].format(layer=entry["layer"], index=0)
        raise SaescopeError(f"{path}: none of its records could be read (first tried {where}); check the folder, "
                            f"URL or SAESCOPE_PUBLIC_MIRROR")
    units = [rows.get(i) or {"index": i, "missing": True} for i in range(n)]
    out = {"unit_type": entry["unit_type"], "layer": entry["layer"], "by_token_pair": bool(entry.get("by_token_pair")),
           "units": units}
    write_json(model_dir / path / "summary.json", out)
    return out
