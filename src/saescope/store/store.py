"""The activation store: fixed-size safetensors shards per hookpoint plus a small JSON manifest.

Layout::

    store/manifest.json
    store/tokens/shard_00000.safetensors        token_ids int32 [rows], context int64 [rows], position int32 [rows]
    store/<hookpoint>/shard_00000.safetensors   activations [rows, d]

A shard's files are written under temporary names and renamed; the manifest is rewritten (atomically) only after
all of a shard's files are in place, so a killed capture loses at most the shard in flight and a reader never
sees a half-written shard. Resuming continues after the last shard listed in the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.io import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "saescope-store"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    raise SaescopeError(f"dtype {dtype}: the store keeps float32, float16 or bfloat16")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _hp_dir(hookpoint: str) -> str:
    return hookpoint.replace("/", "_")


@dataclass
class StoreMeta:
    """What identifies a capture: a resume must match it exactly."""

    model: str
    hookpoints: dict[str, int]
    """hookpoint → width d."""
    dtype: str = "float32"
    context_len: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    """Corpus description (kind, path, sizes): part of the identity of the capture."""
    tokenizer: str = ""
    masks: dict[str, bool] = field(default_factory=lambda: {"bos": True, "pad": True})
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form data kept alongside (e.g. the seed metadata for a round trip)."""

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("model", "hookpoints", "dtype", "context_len", "source", "masks")}


def _save_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def write_shard(root: str | Path, meta: StoreMeta, index: int, acts: dict[str, Tensor], token_ids: Tensor,
                context: Tensor, position: Tensor, contexts: tuple[int, int]) -> dict[str, Any]:
    """Write shard number `index`'s files (rows with NaN/Inf at any hookpoint dropped) and return its manifest
    entry (plus `dropped`); listing it in the manifest is `StoreWriter.append`'s job."""
    root = Path(root)
    if set(acts) != set(meta.hookpoints):
        raise SaescopeError(f"shard has hookpoints {sorted(acts)}, store expects {sorted(meta.hookpoints)}")
    finite = torch.ones(token_ids.shape[0], dtype=torch.bool)
    for hp, a in acts.items():
        if a.ndim != 2 or a.shape[1] != meta.hookpoints[hp]:
            raise SaescopeError(f"{hp}: shard of shape {tuple(a.shape)}, store expects [rows, {meta.hookpoints[hp]}]")
        finite &= torch.isfinite(a).all(dim=1)
    dropped = int((~finite).sum())
    if dropped:
        log.warning("contexts %s: dropped %d rows with NaN/Inf activations", contexts, dropped)
    dtype = DTYPES[meta.dtype]
    name = shard_name(index)
    sums = {}
    tok_path = root / TOKENS / f"{name}.safetensors"
    _save_safetensors(tok_path, {
        "token_ids": token_ids[finite].to(torch.int32),
        "context": context[finite].to(torch.int64),
        "position": position[finite].to(torch.int32),
    })
    sums[TOKENS] = sha256_file(tok_path)
    for hp, a in acts.items():
        path = root / _hp_dir(hp) / f"{name}.safetensors"
        _save_safetensors(path, {"activations": a[finite].to(dtype)})
        sums[hp] = sha256_file(path)
    return {"name": name, "rows": int(finite.sum()), "contexts": list(contexts), "sha256": sums, "dropped": dropped}


def next_context(manifest: dict[str, Any]) -> int:
    """The first context index a store's manifest does not hold yet (resume point)."""
    return manifest["shards"][-1]["contexts"][1] if manifest["shards"] else 0


class StoreWriter:
    """Append shards to a store, resuming an existing one when its identity matches."""

    def __init__(self, root: str | Path, meta: StoreMeta, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.meta = meta
        mpath = self.root / MANIFEST
        manifest = read_json(mpath, "store manifest") if mpath.exists() and not overwrite else {}
        if manifest.get("shards") and not overwrite:  # a store without shards holds nothing to keep: start over
            old = {k: manifest.get(k) for k in meta.identity()}
            if old != meta.identity():
                diff = [k for k in old if old[k] != meta.identity()[k]]
                raise SaescopeError(
                    f"{mpath}: existing store was captured with different {', '.join(diff)}; "
                    f"use another --out directory or pass --overwrite"
                )
            self.manifest = manifest
        else:
            if mpath.exists():
                mpath.unlink()
            self.manifest = {
                "format": FORMAT, "version": VERSION, **meta.identity(), "tokenizer": meta.tokenizer,
                "extra": meta.extra, "shards": [], "nonfinite_rows_dropped": 0, "complete": False,
            }
            self._flush()

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def next_context(self) -> int:
        """The first context index not yet stored (resume point)."""
        return next_context(self.manifest)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def complete(self) -> bool:
        """Finished, with rows: a 0-row store (written before this was checked) is resumed, not reused."""
        return bool(self.manifest.get("complete")) and self.rows > 0

    def _flush(self) -> None:
        write_json(self.root / MANIFEST, self.manifest)

    def add_shard(
        self,
        acts: dict[str, Tensor],
        token_ids: Tensor,
        context: Tensor,
        position: Tensor,
        contexts: tuple[int, int],
    ) -> int:
        """Write one shard: acts {hookpoint: [rows, d]}, per-row token ids/context/position. Returns rows kept."""
        info = write_shard(self.root, self.meta, len(self.shards), acts, token_ids, context, position, contexts)
        self.append(info)
        return info["rows"]

    def append(self, info: dict[str, Any]) -> None:
        """List a shard whose files `write_shard` wrote (in context order: under torchrun, rank 0 lists every
        rank's shards of a round) and flush the manifest."""
        if info["name"] != shard_name(len(self.shards)):
            raise SaescopeError(f"{self.root}: shard {info['name']} listed out of order (expected {shard_name(len(self.shards))})")
        if info.get("dropped"):
            self.manifest["nonfinite_rows_dropped"] += info["dropped"]
        self.shards.append({k: v for k, v in info.items() if k != "dropped"})
        self._flush()

    def finish(self, **info: Any) -> None:
        if self.rows == 0:
            raise SaescopeError(f"{self.root}: no rows were stored, so the store is not complete; capture a corpus "
                                f"that gives at least one context")
        self.manifest["complete"] = True
        self.manifest.update(info)
        self._flush()


class ActivationStore:
    """Read side: validated shard access, batch iteration, summary."""

    def __init__(self, root: str | Path, verify: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_json(self.root / MANIFEST, "store manifest (is this an activation store directory?)")
        if self.manifest.get("format") != FORMAT:
            raise SaescopeError(f"{self.root / MANIFEST}: field 'format' is not '{FORMAT}'; not a saescope store")
        self.verify = verify

    @property
    def hookpoints(self) -> dict[str, int]:
        return self.manifest["hookpoints"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def context_len(self) -> int | None:
        """Tokens per context, BOS included (None: a store imported from the seed format, one prompt a context)."""
        return self.manifest.get("context_len")

    def _check_hp(self, hookpoint: str) -> None:
        if hookpoint not in self.hookpoints:
            raise SaescopeError(
                f"{self.root}: no hookpoint '{hookpoint}' in this store; it has {', '.join(self.hookpoints)}"
            )

    def _load(self, path: Path, key: str, shard: dict[str, Any], part: str) -> Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise SaescopeError(f"{path}: shard file missing (listed in the manifest); re-run the capture")
        if self.verify and sha256_file(path) != shard["sha256"][part]:
            raise SaescopeError(f"{path}: checksum mismatch (truncated or corrupted shard); delete the store and re-capture")
        try:
            t = load_file(str(path))[key]
        except (SafetensorError, KeyError, OSError) as e:
            raise SaescopeError(f"{path}: unreadable shard ({e}); delete the store and re-capture") from None
        if t.shape[0] != shard["rows"]:
            raise SaescopeError(f"{path}: {t.shape[0]} rows, manifest says {shard['rows']}; re-capture")
        return t

    def load_shard(self, hookpoint: str, i: int) -> Tensor:
        """Activations of shard i: [rows, d] in the store's dtype."""
        self._check_hp(hookpoint)
        shard = self.shards[i]
        t = self._load(self.root / _hp_dir(hookpoint) / f"{shard['name']}.safetensors", "activations", shard, hookpoint)
        d = self.hookpoints[hookpoint]
        if t.ndim != 2 or t.shape[1] != d:
            raise SaescopeError(
                f"{self.root / _hp_dir(hookpoint) / shard['name']}.safetensors: width {tuple(t.shape)[1:]} but the "
                f"manifest says d={d}; the store is inconsistent, re-capture"
            )
        return t

    def load_tokens(self, i: int) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        shard = self.shards[i]
        path = self.root / TOKENS / f"{shard['name']}.safetensors"
        self._load(path, "token_ids", shard, TOKENS)
        return load_file(str(path))

    def load_all(self, hookpoint: str) -> Tensor:
        return torch.cat([self.load_shard(hookpoint, i) for i in range(len(self.shards))])

    def batches(self, hookpoint: str, batch_size: int, **kw: Any) -> Iterator[Tensor]:
        """Shuffled float32 batches forever (see `shuffled_batches`)."""
        from saescope.store.iterate import shuffled_batches

        self._check_hp(hookpoint)
        return shuffled_batches(lambda i: self.load_shard(hookpoint, i), len(self.shards), batch_size, **kw)

    def info(self) -> str:
        m = self.manifest
        width = max(len(h) for h in self.hookpoints) if self.hookpoints else 8
        bytes_per = torch.tensor([], dtype=DTYPES[m["dtype"]]).element_size()
        lines = [
            f"store      {self.root}",
            f"model      {m['model']}  (tokenizer {m.get('tokenizer') or '-'})",
            f"source     {m.get('source', {}).get('kind', '-')}  {m.get('source', {}).get('path', '')}",
            f"rows       {self.rows:,} in {len(self.shards)} shards, context length {m.get('context_len')}",
            f"dtype      {m['dtype']}   complete: {bool(m.get('complete')) and self.rows > 0}   NaN/Inf rows dropped: {m.get('nonfinite_rows_dropped', 0)}",
        ]
        for hp, d in self.hookpoints.items():
            mb = self.rows * d * bytes_per / 2**20
            lines.append(f"  {hp:<{width}}  d={d:<6} {mb:,.1f} MiB")
        return "\n".join(lines)
