"""The offline baseline's run over a dataset: chunks of units read straight from the compact record tensors (or, for
JSON datasets, from their records), explained and scored by `interp.vectorized`, the files written per large chunk.

It makes the same choices as the per-unit run (`pipeline._Run.run`): which units are explained (those without an
explanation, or all with --overwrite), which are scored (stale ones), each unit's null explanation (the next live
unit's, the last one's the first's), and merges into explanations.json / scores.json the same way. It writes no
`<index>.jsonl`: a baseline simulation is a function of the explanation and the record, rebuilt on demand
(`outputs.simulation_results`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from saescope.errors import SaescopeError
from saescope.interp.outputs import merge, now, write_explanations
from saescope.interp.prompts import splits
from saescope.interp.vectorized import N_SLOTS, Batch, explain, score
from saescope.records import JsonRecords, max_activation, open_records

if TYPE_CHECKING:  # pragma: no cover
    from saescope.compact_records import PackedRecords
    from saescope.interp.pipeline import _Run

CHUNK = 2048
"""Units read and processed together (a chunk's slots: 2,048 × 15 × T values)."""
SAVE_EVERY = 16384
"""Units between two writes of explanations.json / scores.json (and one at the end)."""


# ---- reading a chunk --------------------------------------------------------------------------------------------
def batch_from_dicts(units: list[int], recs: list[dict[str, Any]]) -> Batch:
    """A Batch from record dicts as `records.read_unit_dict` gives them (one value per token)."""
    where: dict[str, int] = {}
    slots = []
    for rec in recs:
        top = rec["most_positive_activation_records"]
        s = splits(top, rec["random_sample"])
        slots.append([*s["train"], *[None] * (5 - len(s["train"])), *top[2::4][:5], *[None] * (5 - len(top[2::4][:5])),
                      *s["valid_random"], *[None] * (5 - len(s["valid_random"]))])
    T = max((len(r["tokens"]) for row in slots for r in row if r is not None), default=0)
    ids, acts = np.full((len(units), N_SLOTS, T), -1, np.int64), np.zeros((len(units), N_SLOTS, T))
    for k, (u, row) in enumerate(zip(units, slots)):
        for j, r in enumerate(row):
            if r is None:
                continue
            if len(r["activations"]) != len(r["tokens"]):
                raise SaescopeError(f"unit {u}: an excerpt has {len(r['tokens'])} tokens but {len(r['activations'])} "
                                    f"activations; re-run collate")
            n = len(r["tokens"])
            ids[k, j, :n] = [where.setdefault(t, len(where)) for t in r["tokens"]]
            acts[k, j, :n] = r["activations"]
    present = np.array([[r is not None for r in row] for row in slots], bool).reshape(len(units), N_SLOTS)
    mx = np.array([max_activation(rec["most_positive_activation_records"]) for rec in recs])
    return Batch(list(units), ids, acts, present, mx, list(where))


def _per_token(acts: np.ndarray, lens: np.ndarray) -> np.ndarray | None:
    """[R, L] → [R, T] one value per token (`records.token_activations`), or None where the rows' lengths differ."""
    L = acts.shape[1]
    if (lens == L).all():
        return acts
    T = int(lens[0])
    if (lens == T).all() and L == T * (T + 1) // 2:  # by token pair: row i of the lower triangle starts at i(i+1)/2
        return np.maximum.reduceat(acts, np.arange(T) * (np.arange(T) + 1) // 2, axis=1)
    return None


def batch_from_pack(p: PackedRecords, units: list[int]) -> Batch | None:
    """A Batch straight from the compact tensors (the values `PackedRecords.record` would put in the JSON), or None
    where excerpt lengths vary (then the records are read one by one)."""
    from saescope.compact_records import ExcerptTable

    u = np.asarray(units, np.int64)
    U = len(u)
    lo, hi = int(p.row_offsets[u.min()]), int(p.row_offsets[u.max() + 1])
    table = ExcerptTable.load(p.excerpts_path)
    exc = p.row_excerpt[lo:hi].astype(np.int64)  # [R]
    lens = np.diff(table.offsets)[exc]
    acts = _per_token(p._acts(lo, hi), lens)  # [R, T] rounded as the JSON holds them
    if acts is None or len(exc) == 0:
        return None
    T = acts.shape[1]
    rows = np.full((U, N_SLOTS), -1, np.int64)
    (t0, tref), (r0, rref) = p.refs["top"], p.refs["random"]
    ntop, nrnd = t0[u + 1] - t0[u], r0[u + 1] - r0[u]
    for j in range(5):  # prompts.splits: train top[0::4], valid top[2::4], valid random[1::3], 5 of each
        for slot, start, count, ref, k in ((j, t0[u], ntop, tref, 4 * j), (5 + j, t0[u], ntop, tref, 2 + 4 * j),
                                           (10 + j, r0[u], nrnd, rref, 1 + 3 * j)):
            m = k < count
            rows[m, slot] = ref[start[m] + k]
    present = rows >= 0
    local = np.where(present, rows - lo, 0)  # [U, S]
    starts = table.offsets[exc[local]]  # [U, S]
    ids = np.where(present[..., None], table.string_index[starts[..., None] + np.arange(T)], -1).astype(np.int64)
    vals = np.where(present[..., None], acts[local], 0.0)
    # the max over every top excerpt (records.max_activation, at least 0)
    seg = np.repeat(np.arange(U), ntop)
    pos = np.repeat(t0[u], ntop) + np.arange(int(ntop.sum())) - np.repeat(np.cumsum(ntop) - ntop, ntop)
    mx = np.zeros(U)
    np.maximum.at(mx, seg, acts.max(axis=1, initial=-np.inf)[tref[pos].astype(np.int64) - lo])
    return Batch(list(units), ids, vals, present, mx, table.table)


def load(job: _Run, units: list[int], records: Any) -> Batch:
    if records is not None and not isinstance(records, JsonRecords):
        b = batch_from_pack(records, units)
        if b is not None:
            return b
    return batch_from_dicts(units, [job.read(i) for i in units])


# ---- the run ----------------------------------------------------------------------------------------------------
def run(job: _Run) -> None:
    """Explain and/or score the job's live units (see the module docstring)."""
    from tqdm.auto import tqdm

    records = None if job.entry.get("remote") else open_records(job.manifest_dir / job.ds)
    written = {p.name for p in job.out.glob("*.jsonl")} if job.out.is_dir() else set()
    todo = job.todo_e
    carried: Batch | None = None  # the last explained unit, its null not known yet
    first: str | None = None
    n_ok = since = 0
    what = " + ".join(w for w, on in (("explain", job.do_explain), ("score", job.do_score)) if on)
    with tqdm(total=len(job.live), desc=f"{what} {job.ds} (vectorised)", unit="unit") as bar:
        for start in range(0, len(job.live), CHUNK):
            units = job.live[start:start + CHUNK]
            batch = load(job, units, records)
            if job.do_explain:
                _explain(job, batch, [k for k, i in enumerate(units) if i in todo])
            if job.do_score:
                ok = [k for k, i in enumerate(units) if _text(job, i)]
                if ok:
                    n_ok += len(ok)
                    first = first if first is not None else _text(job, units[ok[0]])
                    if carried is not None:
                        _score(job, carried, [_text(job, units[ok[0]])], written)
                    _score(job, batch.take(ok[:-1]), [_text(job, units[k]) for k in ok[1:]], written)
                    carried = batch.take(ok[-1:])
            since += len(units)
            if since >= SAVE_EVERY:
                job.save()
                since = 0
            bar.update(len(units))
        if carried is not None:
            _score(job, carried, [first if n_ok > 1 else None], written)
    if job.do_score:
        write_explanations(job.expl_path, job.expl)  # scores.json, with its summary, is written by job.report()
    else:
        job.save()


def _text(job: _Run, i: int) -> str | None:
    return (job.expl.get(str(i)) or {}).get("explanation")


def _explain(job: _Run, batch: Batch, todo: list[int]) -> None:
    if not todo:
        return
    texts = explain(batch if len(todo) == len(batch.units) else batch.take(todo), parsed=job.tables)
    prov = {"explainer": job.opt.explainer, "prompt_style": job.opt.prompt_style, "model": job.model, "time": now()}
    for k, text in zip(todo, texts):
        merge(job.expl, batch.units[k], {"explanation": text, "failure": None, **prov}, "explanation")
        job.explained.add(batch.units[k])


def _score(job: _Run, batch: Batch, nulls: list[str | None], written: set[str]) -> None:
    """Score the stale units of `batch` (nulls[k]: unit k's null explanation) and merge their entries."""
    keep = [k for k, i in enumerate(batch.units) if job.stale(i)]
    if not keep:
        return
    b = batch if len(keep) == len(batch.units) else batch.take(keep)
    texts = [job.expl[str(i)]["explanation"] for i in b.units]
    results = score(b, texts, [nulls[k] for k in keep] if job.opt.null_baseline else None, job.tables)
    t = now()
    for i, text, s in zip(b.units, texts, results):
        merge(job.scores, i, {"explanation": text, "score": s["top_and_random"], "scores": s, "failure": None,
                              "explainer": job.expl[str(i)].get("explainer"), "simulator": job.sim_name,
                              "model": job.model, "time": t}, "score")
        job.scored.add(i)
        if f"{i}.jsonl" in written:  # an earlier simulator's results, now replaced by the baseline's
            (job.out / f"{i}.jsonl").unlink(missing_ok=True)
