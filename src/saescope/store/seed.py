"""The seed activation dataset format: ``activations_<i>.pt`` ([seq_len, d] tensors) + ``metadata.json``.

Import never unpickles arbitrary objects (`torch.load(weights_only=True)`, and the result must be a plain 2-D
tensor). The whole metadata.json is kept in the store's manifest so an export reproduces it exactly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.io import atomic_path, read_json, write_json
from saescope.store.store import ActivationStore, StoreMeta, StoreWriter, dtype_name

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^activations_(\d+)\.pt$")


def seed_entries(metadata: Any) -> list[dict[str, Any]]:
    """The per-file entries of a seed metadata.json (a list, or a dict holding one under a known key)."""
    if isinstance(metadata, list):
        return [e if isinstance(e, dict) else {} for e in metadata]
    if isinstance(metadata, dict):
        for key in ("files", "entries", "prompts", "data", "activations"):
            if isinstance(metadata.get(key), list):
                return [e if isinstance(e, dict) else {} for e in metadata[key]]
    return []


def load_seed_tensor(path: Path) -> Tensor:
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain tensor file"
        raise SaescopeError(f"{path}: not a plain tensor file ({type(e).__name__}); save it with torch.save(tensor)") from None
    if not isinstance(t, Tensor):
        raise SaescopeError(f"{path}: holds a {type(t).__name__}, expected a [seq_len, d] tensor")
    if t.ndim != 2:
        raise SaescopeError(f"{path}: tensor of shape {tuple(t.shape)}, expected [seq_len, d]")
    return t


def write_seed_dataset(out: Path, tensors: list[Tensor], metadata: Any) -> None:
    """Write activations_<i>.pt files and metadata.json (atomically, metadata last)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tensors):
        with atomic_path(out / f"activations_{i}.pt") as tmp:
            torch.save(t.contiguous().clone(), tmp)
    write_json(out / "metadata.json", metadata)


def import_seed(seed_dir: str | Path, store_dir: str | Path, overwrite: bool = False) -> ActivationStore:
    """Turn a seed-format folder into a one-shard store (each file = one context)."""
    seed_dir = Path(seed_dir)
    files = sorted(
        (int(m.group(1)), p) for p in seed_dir.iterdir() if (m := _FILE_RE.match(p.name))
    ) if seed_dir.is_dir() else []
    if not files:
        raise SaescopeError(f"{seed_dir}: no activations_<i>.pt files; point at a seed activation dataset folder")
    idx = [i for i, _ in files]
    if idx != list(range(len(files))):
        raise SaescopeError(f"{seed_dir}: activation files are numbered {idx}, expected 0..{len(files) - 1} without gaps")
    meta_path = seed_dir / "metadata.json"
    metadata = read_json(meta_path, "seed metadata") if meta_path.exists() else None
    entries = seed_entries(metadata)
    tensors = [load_seed_tensor(p) for _, p in files]
    d, dtype = tensors[0].shape[1], tensors[0].dtype
    for (_, p), t in zip(files, tensors):
        if t.shape[1] != d or t.dtype != dtype:
            raise SaescopeError(f"{p}: shape {tuple(t.shape)} {t.dtype} disagrees with {files[0][1].name} ([n, {d}] {dtype})")
    first = entries[0] if entries else {}
    hookpoint = str(first.get("hookpoint") or (metadata or {}).get("hookpoint", "resid_post.0") if isinstance(metadata, dict) else "resid_post.0")
    model = str((metadata or {}).get("model", "unknown") if isinstance(metadata, dict) else "unknown")
    token_ids, context, position = [], [], []
    for i, t in enumerate(tensors):
        ids = entries[i].get("token_ids") if i < len(entries) else None
        ids = ids if isinstance(ids, list) and len(ids) == t.shape[0] else [-1] * t.shape[0]
        token_ids += ids
        context += [i] * t.shape[0]
        position += list(range(t.shape[0]))
    meta = StoreMeta(
        model=model, hookpoints={hookpoint: d}, dtype=dtype_name(dtype), context_len=max(t.shape[0] for t in tensors),
        source={"kind": "seed", "path": str(seed_dir.resolve()), "files": len(files)},
        extra={"seed_metadata": metadata, "seed_lengths": [t.shape[0] for t in tensors]},
    )
    w = StoreWriter(store_dir, meta, overwrite=True if overwrite else False)
    if w.shards:
        if w.complete:
            return ActivationStore(store_dir)
        raise SaescopeError(f"{store_dir}: a partial store is in the way; pass --overwrite")
    w.add_shard(
        {hookpoint: torch.cat(tensors)}, torch.tensor(token_ids), torch.tensor(context), torch.tensor(position),
        (0, len(tensors)),
    )
    if w.manifest["nonfinite_rows_dropped"]:
        raise SaescopeError(
            f"{seed_dir}: {w.manifest['nonfinite_rows_dropped']} rows hold NaN/Inf; fix the source tensors"
        )
    w.finish()
    log.info("imported %d seed files (%d rows, d=%d) into %s", len(files), sum(len(t) for t in tensors), d, store_dir)
    return ActivationStore(store_dir)


def export_seed(store_dir: str | Path, out_dir: str | Path, hookpoint: str | None = None) -> Path:
    """Write a store back as a seed-format folder: one activations_<i>.pt per context, plus metadata.json."""
    store = ActivationStore(store_dir)
    hp = hookpoint or next(iter(store.hookpoints))
    acts = store.load_all(hp)
    ctx = torch.cat([store.load_tokens(i)["context"] for i in range(len(store.shards))])
    contexts = torch.unique(ctx, sorted=True).tolist()
    tensors = [acts[ctx == c] for c in contexts]
    metadata = store.manifest.get("extra", {}).get("seed_metadata")
    if metadata is None:
        metadata = {"model": store.model, "hookpoint": hp, "files": [
            {"file": f"activations_{i}.pt", "shape": list(t.shape)} for i, t in enumerate(tensors)
        ]}
    write_seed_dataset(Path(out_dir), tensors, metadata)
    return Path(out_dir)


def seed_summary(metadata_path: Path) -> str:
    meta = json.loads(metadata_path.read_text())
    return "\n".join(f"{e.get('file')}: {e.get('shape')}  {e.get('prompt', '')!r}" for e in seed_entries(meta))
