"""The compact record format: one dataset's records as a handful of tensors, built into TDB JSON on demand.

Writing one JSON file per unit costs ~10 ms a record (40 s for 4,096 latents; the whole model has ~10⁵ units), so
collation writes each dataset as tensors instead, and `PackedRecords.record_text(i)` builds record i's
`NeuronRecord` JSON when it is asked for, byte for byte what `records.dumps` writes for the same record (a
differential test holds the two together; `saescope export tdb` writes the JSON folders).

Layout (all tensors in safetensors; U units, R excerpt rows, L values per excerpt: T tokens or T(T+1)/2 pairs)::

    <model>/excerpts.safetensors                 every excerpt a dataset of the folder refers to, stored once
        offsets [E+1] int64                      excerpt e's tokens are positions offsets[e]:offsets[e+1]
        token_ids [N] int32                      token ids (BOS not included)
        strings [N] int32                        the decoded string of each position, as an index into:
        string_bytes [B] uint8, string_offsets [S+1] int64   the table of distinct strings (UTF-8)
    <dataset>/<layer>/records.safetensors        (metadata: format, version, layer, length L, excerpts file)
        row_offsets [U+1] int64                  unit u's rows are row_offsets[u]:row_offsets[u+1]
        row_excerpt [R] int32                    each row's excerpt (a row of the excerpt table)
        acts [R, L] float32                      the unit's activations on that excerpt (dense), or in CSR:
        acts_ptr [R+1] int64, acts_pos [nnz] int32, acts_val [nnz] float32   (mostly-zero rows: dictionary latents)
        top_count [U] int32, top_ref [*] int32   top excerpts, best first (global row indices)
        random_count [U] int32, random_ref [*] int32          the uniform random sample
        quantile_count [U, 5] int32, quantile_ref [*] int32   the quantile buckets, bucket by bucket
        stats [U, 4] float64                     mean, variance, skewness, excess kurtosis (NaN where undefined)
        quantile_boundaries [U, 4] float64

The excerpt table is append-only (a collation adds the excerpts it does not find there; every dataset's rows stay
valid); summary.json (the unit table) and histogram.safetensors sit beside records.safetensors as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.records import ActivationRecord, NeuronId, NeuronRecord, dumps

PACK_FILE = "records.safetensors"
EXCERPTS_FILE = "excerpts.safetensors"
FORMAT = "saescope-records"
VERSION = "1"
N_BUCKETS = 5


# ---- the excerpt table ------------------------------------------------------------------------------------------
@dataclass
class ExcerptTable:
    """Token ids and decoded strings of excerpts (see the module docstring); `strings(e)` lists are shared, so
    `records.dumps`' memo encodes each excerpt's tokens once."""

    offsets: np.ndarray
    token_ids: np.ndarray
    string_index: np.ndarray
    table: list[str]

    def __post_init__(self) -> None:
        self._strings: dict[int, list[str]] = {}

    @classmethod
    def empty(cls) -> ExcerptTable:
        return cls(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32), [])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def ids(self, e: int) -> list[int]:
        return self.token_ids[self.offsets[e]:self.offsets[e + 1]].tolist()

    def strings(self, e: int) -> list[str]:
        got = self._strings.get(e)
        if got is None:
            t = self.table
            got = self._strings[e] = [t[i] for i in self.string_index[self.offsets[e]:self.offsets[e + 1]].tolist()]
        return got

    def extend(self, excerpts: list[tuple[list[int], list[str]]]) -> list[int]:
        """Add (token ids, strings) excerpts not already in the table; returns each one's row."""
        known = {self.token_ids[self.offsets[e]:self.offsets[e + 1]].tobytes(): e for e in range(len(self))}
        where = {s: i for i, s in enumerate(self.table)}
        rows, new_ids, new_strs, new_lens = [], [], [], []
        for ids, strs in excerpts:
            key = np.asarray(ids, np.int32).tobytes()
            if key not in known:
                known[key] = len(self) + len(new_lens)
                new_ids += ids
                new_strs += [where.setdefault(s, len(where)) for s in strs]
                new_lens.append(len(ids))
            rows.append(known[key])
        if new_lens:
            self.table = list(where)
            self.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(new_lens)]).astype(np.int64)
            self.token_ids = np.concatenate([self.token_ids, np.asarray(new_ids, np.int32)])
            self.string_index = np.concatenate([self.string_index, np.asarray(new_strs, np.int32)])
            self._strings = {}
        return rows

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        from saescope.io import atomic_path

        enc = [s.encode("utf-8") for s in self.table]
        sizes = np.fromiter((len(b) for b in enc), np.int64, len(enc))
        with atomic_path(path) as tmp:
            save_file({"offsets": self.offsets, "token_ids": self.token_ids, "strings": self.string_index,
                       "string_bytes": np.frombuffer(b"".join(enc), np.uint8).copy(),
                       "string_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)},
                      str(tmp), metadata={"format": "saescope-excerpts", "version": VERSION})

    @classmethod
    def load(cls, path: Path) -> ExcerptTable:
        """The table at `path`, shared while the file is unchanged (read-only: `read` gives one to extend)."""
        return _load_table(str(path), *_stamp(path))

    @classmethod
    def read(cls, path: Path) -> ExcerptTable:
        return _load_table.__wrapped__(str(path), 0, 0)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SaescopeError(f"{path}: the excerpt table of these records is missing; re-run collate") from None
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _load_table(path: str, mtime_ns: int, size: int) -> ExcerptTable:
    from safetensors.numpy import load_file

    t = _checked(load_file, path, "excerpt table")
    raw, offs = t["string_bytes"].tobytes(), t["string_offsets"].tolist()
    table = [raw[a:b].decode("utf-8") for a, b in zip(offs[:-1], offs[1:])]
    return ExcerptTable(t["offsets"], t["token_ids"], t["strings"], table)


def _read_index(path: str) -> tuple[dict[str, str], dict[str, np.ndarray], bool]:
    """(metadata, every tensor but the activations, whether they are dense) of a records file."""
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        t = {k: f.get_tensor(k) for k in keys - {"acts", "acts_pos", "acts_val"}}
    need = {"row_offsets", "row_excerpt", "stats", "quantile_boundaries"} | {
        f"{n}_{x}" for n in ("top", "random", "quantile") for x in ("count", "ref")}
    if meta.get("format") == FORMAT and not need <= set(t):
        raise ValueError(f"missing tensors {sorted(need - set(t))}")
    return meta, t, "acts" in keys


def _checked(fn: Any, path: str, what: str) -> Any:
    try:
        return fn(path)
    except FileNotFoundError:
        raise SaescopeError(f"{path}: {what} not found; re-run collate") from None
    except SaescopeError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise SaescopeError(f"{path}: not a readable {what} ({type(e).__name__}: {e}); re-run collate") from None


# ---- writing a dataset ------------------------------------------------------------------------------------------
def write_pack(folder: Path, tensors: dict[str, np.ndarray], layer: int, length: int, excerpts: Path) -> None:
    """Write one dataset's tensors (names as in the module docstring) into `folder` (the caller's temporary folder,
    renamed into place); `excerpts` is the model folder's excerpt table, recorded relative to the dataset."""
    from safetensors.numpy import save_file

    meta = {"format": FORMAT, "version": VERSION, "layer": str(layer), "length": str(length),
            "excerpts": os.path.relpath(excerpts, folder)}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / PACK_FILE), metadata=meta)


# ---- reading ----------------------------------------------------------------------------------------------------
class PackedRecords:
    """One dataset's records, built on demand. `record(i)` / `record_text(i)`: unit i's NeuronRecord / its JSON."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / PACK_FILE
        meta, t, self.dense = _checked(_read_index, str(self.path), "records file")
        if meta.get("format") != FORMAT:
            raise SaescopeError(f"{self.path}: not a saescope records file (format {meta.get('format')!r}); "
                                f"re-run collate")
        self.layer, self.length = int(meta["layer"]), int(meta["length"])
        self.excerpts_path = (self.folder / meta["excerpts"]).resolve()
        self.n_units = len(t["row_offsets"]) - 1
        self.row_offsets, self.row_excerpt = t["row_offsets"], t["row_excerpt"]
        self.acts_ptr = t.get("acts_ptr")
        self.stats, self.bounds = t["stats"].tolist(), t["quantile_boundaries"].tolist()
        self.refs = {name: (_starts(t[f"{name}_count"].reshape(-1)), t[f"{name}_ref"])
                     for name in ("top", "random", "quantile")}

    def __len__(self) -> int:
        return self.n_units

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < self.n_units

    def _acts(self, lo: int, hi: int) -> np.ndarray:
        """[hi - lo, L] float64 activations of rows lo..hi, rounded as collation writes them."""
        from safetensors import safe_open

        with safe_open(str(self.path), "np") as f:
            if self.dense:
                a = f.get_slice("acts")[lo:hi]
            else:
                p = self.acts_ptr[lo:hi + 1]
                pos = f.get_slice("acts_pos")[int(p[0]):int(p[-1])]
                val = f.get_slice("acts_val")[int(p[0]):int(p[-1])]
                a = np.zeros((hi - lo, self.length), np.float32)
                a[np.repeat(np.arange(hi - lo), np.diff(p)), pos] = val
        return a.astype(np.float64).round(6)  # in float64: 0.192219, not 0.19221900403499603

    def record(self, index: int) -> NeuronRecord:
        if index not in self:
            raise FileNotFoundError(f"{self.folder}/{index}: no unit {index} (the dataset has {self.n_units})")
        lo, hi = int(self.row_offsets[index]), int(self.row_offsets[index + 1])
        acts = _checked(lambda _: self._acts(lo, hi), str(self.path), "records file")
        table = ExcerptTable.load(self.excerpts_path)
        excerpt = self.row_excerpt[lo:hi].tolist()

        def recs(name: str, a: int, b: int) -> list[ActivationRecord]:
            starts, ref = self.refs[name]
            rows = ref[starts[a]:starts[b]].tolist()
            return [ActivationRecord(activations=acts[r - lo], tokens=table.strings(excerpt[r - lo])) for r in rows]

        b = index * N_BUCKETS
        mean, var, skew, kurt = self.stats[index]
        return NeuronRecord(
            neuron_id=NeuronId(neuron_index=index, layer_index=self.layer),
            random_sample=recs("random", index, index + 1),
            random_sample_by_quantile=[recs("quantile", b + q, b + q + 1) for q in range(N_BUCKETS)],
            quantile_boundaries=self.bounds[index],
            mean=mean, variance=var, skewness=skew, kurtosis=kurt,
            most_positive_activation_records=recs("top", index, index + 1))

    def record_text(self, index: int) -> str:
        return dumps(self.record(index), self._memo)

    @property
    def _memo(self) -> dict[int, tuple[list[str], str]]:
        if not hasattr(self, "_tokens_memo") or len(self._tokens_memo) > 50_000:
            self._tokens_memo: dict[int, tuple[list[str], str]] = {}
        return self._tokens_memo


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts.astype(np.int64))])


def open_pack(folder: str | Path) -> PackedRecords:
    """A dataset folder's PackedRecords, reused while its file is unchanged."""
    path = Path(folder) / PACK_FILE
    return _open(str(Path(folder)), *_stamp(path))


@lru_cache(maxsize=64)
def _open(folder: str, mtime_ns: int, size: int) -> PackedRecords:
    return PackedRecords(folder)
