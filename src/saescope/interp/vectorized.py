"""The offline baseline over many units at once: token-lookup explanations, their lookup simulation and every score,
as array operations over a chunk of units instead of Python loops per unit.

The per-unit path (`baseline.token_lookup_explanation`, `pipeline.score_unit`) is the reference, and the results
are identical to it, float for float (a differential test holds them together on every unit, every score):

- sums run in the order Python's `sum` adds (left to right; from Python 3.12 on `sum` compensates floats
  (Neumaier), and so does `_seqsum` then), never numpy's pairwise order;
- squares go through libm's `pow` as Python's `x ** 2` does (`x * x` differs from it in the last bit for about one
  value in a thousand), by giving `np.power` an array exponent, which takes its generic libm loop;
- a lookup table is read back from the explanation text with `baseline.parse_table`, as the simulator does.

Each unit's excerpts sit in S = 15 slots: 0–4 the explainer's (train) top excerpts, 5–9 the valid top excerpts,
10–14 the valid random ones (`prompts.splits`); a slot or token position that is not there has string id −1 and
activation 0, which adds exactly nothing to a left-to-right sum. Shapes: U units, S slots, T tokens, K table entries.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from saescope.interp.baseline import PREFIX, parse_table
from saescope.records import ACTIVATING_FRACTION

TRAIN, VALID_TOP, VALID_RANDOM = slice(0, 5), slice(5, 10), slice(10, 15)
N_SLOTS = 15
N_TOKENS = 8
"""Tokens a token-lookup explanation lists (`token_lookup_explanation`'s default)."""


@dataclass
class Batch:
    """The excerpts the explainer and the scorer read, for U units (`slot_rows` says which slot holds one)."""

    units: list[int]
    ids: np.ndarray
    """[U, S, T] int64 index into `strings` of each token, −1 where there is none."""
    acts: np.ndarray
    """[U, S, T] float64 activation of each token (by-token-pair excerpts: the max over the token's pairs)."""
    present: np.ndarray
    """[U, S] bool: the slot holds an excerpt."""
    mx: np.ndarray
    """[U] float64 max activation over all the unit's top excerpts, at least 0 (`records.max_activation`)."""
    strings: list[str]
    """The token strings, distinct."""

    def take(self, rows: list[int]) -> Batch:
        return Batch([self.units[r] for r in rows], self.ids[rows], self.acts[rows], self.present[rows],
                     self.mx[rows], self.strings)


# ---- exact sums and squares ------------------------------------------------------------------------------------
_COMPENSATED = sum([1.0, 1e100, 1.0, -1e100]) == 2.0  # Python >= 3.12


def _seqsum(x: np.ndarray, compensated: bool = _COMPENSATED) -> np.ndarray:
    """[U, N] → [U]: each row summed left to right as Python's `sum` of a list of floats does."""
    U, N = x.shape
    if N == 0:
        return np.zeros(U)
    if not compensated:
        return np.add.accumulate(x, axis=1)[:, -1]  # accumulate is sequential (reduce would pair up)
    s, c = np.zeros(U), np.zeros(U)
    for j in range(N):  # CPython's builtin_sum: Neumaier's improved Kahan–Babuška summation
        v = x[:, j]
        t = s + v
        c += np.where(np.abs(s) >= np.abs(v), (s - t) + v, (v - t) + s)
        s = t
    return np.where((c != 0) & np.isfinite(c), s + c, s)


def _libm_pow_matches() -> bool:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4096) * 7.3
    return np.array_equal(np.power(x, np.full_like(x, 2.0)), np.array([v ** 2 for v in x.tolist()]))


_POW_OK: list[bool] = []


def _square(x: np.ndarray) -> np.ndarray:
    """x ** 2 element by element, bit for bit as Python computes it (libm pow)."""
    if not _POW_OK:
        _POW_OK.append(_libm_pow_matches())
    if _POW_OK[0]:
        return np.power(x, np.full_like(x, 2.0))  # an array exponent: numpy's libm loop, no x*x fast path
    flat = np.fromiter(map(pow, x.ravel().tolist(), repeat(2.0)), np.float64, x.size)  # a vendor pow differs
    return flat.reshape(x.shape)


# ---- explanations ----------------------------------------------------------------------------------------------
def explain(b: Batch, n_tokens: int = N_TOKENS, parsed: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Every unit's token-lookup explanation from its train slots (`baseline.token_lookup_explanation`); `parsed`
    gets each explanation's lookup table (text → `baseline.parse_table(text)`)."""
    ids, acts = b.ids[:, TRAIN], b.acts[:, TRAIN]  # [U, 5, T]
    U = len(b.units)
    on = ids >= 0
    mx = np.maximum(np.where(on, acts, -np.inf).reshape(U, -1).max(axis=1, initial=-np.inf), 0.0)  # [U]
    safe = np.where(mx > 0, mx, 1.0)[:, None, None]
    norm = np.where(mx[:, None, None] > 0, np.minimum(10.0, np.floor(10 * np.maximum(acts, 0.0) / safe)), 0.0)
    u, s = np.nonzero(on.reshape(U, -1))
    sid = ids.reshape(U, -1)[u, s]
    key = u * len(b.strings) + sid
    groups, inv = np.unique(key, return_inverse=True)
    sums = np.bincount(inv, weights=norm.reshape(U, -1)[u, s])  # integers: exact in any order
    mean = sums / np.bincount(inv)
    g_unit, g_sid = groups // len(b.strings), groups % len(b.strings)
    distinct = np.unique(g_sid)
    present = [b.strings[k] for k in distinct.tolist()]
    rank = np.empty(len(distinct), np.int64)  # Python's string order (code points) among the strings present
    rank[sorted(range(len(distinct)), key=present.__getitem__)] = np.arange(len(distinct))
    order = np.lexsort((rank[np.searchsorted(distinct, g_sid)], -mean, g_unit))
    g_unit, g_sid, mean = g_unit[order], g_sid[order], mean[order]
    first = np.searchsorted(g_unit, g_unit)  # each group's unit starts here in the sorted order
    keep = (np.arange(len(g_unit)) - first < n_tokens) & (mean > 0)
    items: list[list[str]] = [[] for _ in range(U)]
    tabs: list[dict[str, float]] = [{} for _ in range(U)]
    quoted: dict[int, str] = {}
    shown: dict[float, tuple[str, float]] = {}  # mean → (its text, the value the simulator reads back)
    for k, t, m in zip(g_unit[keep].tolist(), g_sid[keep].tolist(), mean[keep].tolist()):
        q = quoted.get(t)
        if q is None:
            q = quoted[t] = json.dumps(b.strings[t], ensure_ascii=False)
        v = shown.get(m)
        if v is None:
            text = f"{m:.1f}"
            v = shown[m] = (text, float(text))
        items[k].append(f"{q} ({v[0]})")
        tabs[k][b.strings[t]] = v[1]
    texts = [f"{PREFIX} " + ", ".join(it) if it else f"{PREFIX} (no activating tokens)" for it in items]
    if parsed is not None:  # parse_table(text) of each, known without parsing (a test holds the two equal)
        parsed.update(zip(texts, tabs))
    return texts


# ---- simulation and scores -------------------------------------------------------------------------------------
_WHERE: list[tuple[list[str], dict[str, int]]] = []


def _index(strings: list[str]) -> dict[str, int]:
    """string → its id, kept for the last string table asked (a dataset's chunks share one)."""
    if not _WHERE or _WHERE[0][0] is not strings:
        _WHERE[:] = [(strings, {s: i for i, s in enumerate(strings)})]
    return _WHERE[0][1]


def tables(texts: list[str | None], strings: list[str],
           known: dict[str, dict[str, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([U, K] string ids, −1 padded, [U, K] values) of each explanation's lookup table, as the simulator parses it
    (`known`: tables already parsed, by text; tokens that occur in no excerpt are dropped: they predict nothing)."""
    where, known = _index(strings), known or {}
    parsed = []
    for x in texts:
        tab = known.get(x or "")
        if tab is None:
            tab = parse_table(x or "")
        parsed.append([(where[t], v) for t, v in tab.items() if t in where])
    K = max((len(p) for p in parsed), default=0)
    sid, val = np.full((len(texts), K), -1, np.int64), np.zeros((len(texts), K))
    for k, p in enumerate(parsed):
        if p:
            sid[k, :len(p)], val[k, :len(p)] = zip(*p)
    return sid, val


def simulate(ids: np.ndarray, sid: np.ndarray, val: np.ndarray) -> np.ndarray:
    """[U, S, T] predictions: each token's value in its unit's table, 0 elsewhere (`baseline.simulate_lookup`)."""
    pred = np.zeros(ids.shape)
    for k in range(sid.shape[1]):
        pred = np.where((ids == sid[:, k, None, None]) & (ids >= 0), val[:, k, None, None], pred)
    return pred


def correlation(true: np.ndarray, pred: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([U] Pearson r, [U] constant flag) over the tokens `on` of each row ([U, N]), as `scoring.correlation`."""
    n = on.sum(axis=1)
    nn = np.maximum(n, 1)
    dt = np.where(on, true - (_seqsum(true) / nn)[:, None], 0.0)
    dp = np.where(on, pred - (_seqsum(pred) / nn)[:, None], 0.0)
    vt, vp, cov = _seqsum(_square(dt)), _seqsum(_square(dp)), _seqsum(dt * dp)
    constant = (n < 2) | (vt <= 1e-24) | (vp <= 1e-24)
    r = np.clip(cov / np.sqrt(np.where(constant, 1.0, vt * vp)), -1.0, 1.0)
    return np.where(constant, 0.0, r), constant


def _balanced_accuracy(labels: np.ndarray, preds: np.ndarray, on: np.ndarray) -> list[float | None]:
    """[U, N] 0/1 labels and predictions over the slots `on` → `scoring.balanced_accuracy` per row."""
    P, N = (on & labels).sum(axis=1), (on & ~labels).sum(axis=1)
    tp, tn = (on & labels & preds).sum(axis=1), (on & ~labels & ~preds).sum(axis=1)
    acc = (tp / np.maximum(P, 1) + tn / np.maximum(N, 1)) / 2
    return [None if p == 0 or q == 0 else a for p, q, a in zip(P.tolist(), N.tolist(), acc.tolist())]


def score(b: Batch, texts: list[str], null_texts: list[str | None] | None = None,
          known: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Each unit's scores of its explanation (and "null": the top-and-random score of its null explanation, where
    one is given), the dict `pipeline.score_unit` returns; `known`: lookup tables by text (see `explain`)."""
    ids, true, present = b.ids[:, 5:], b.acts[:, 5:], b.present[:, 5:]  # [U, 10, T] the valid slots
    U, V, T = ids.shape
    on = ids >= 0
    pred = simulate(ids, *tables(texts, b.strings, known))
    allc, const = correlation(true.reshape(U, -1), pred.reshape(U, -1), on.reshape(U, -1))
    rt, rp, ron = (a[:, 5:].reshape(U, -1) for a in (true, pred, on))  # the random valid slots
    rc, _ = correlation(rt, rp, ron)
    hi = np.where(ron, rt, -np.inf).max(axis=1, initial=-np.inf)
    lo = np.where(ron, rt, np.inf).min(axis=1, initial=np.inf)
    random_only = [None if h <= m else r for h, m, r in zip(hi.tolist(), lo.tolist(), rc.tolist())]  # one value at most
    # detection: does an excerpt reach 0.3·max (the unit's max over its top excerpts), and does the simulation say 1+?
    mx = b.mx[:, None]
    y = (mx > 0) & (np.where(on, true, -np.inf).max(axis=2, initial=0.0) >= ACTIVATING_FRACTION * mx)  # [U, V]
    det = np.where(on, pred, -np.inf).max(axis=2, initial=0.0) >= 1.0
    # fuzzing: the mean prediction over the marked tokens (the activating ones, else every 4th) reaches 1
    hot = on & (mx[:, :, None] > 0) & (true >= ACTIVATING_FRACTION * mx[:, :, None])
    marked = np.where(y[:, :, None], hot, on & (np.arange(T) % 4 == 0))
    n_marked = marked.sum(axis=2)
    msum = _seqsum(np.where(marked, pred, 0.0).reshape(U * V, T)).reshape(U, V)
    fuzz = (n_marked > 0) & (msum / np.maximum(n_marked, 1) >= 1.0)
    detection, fuzzing = _balanced_accuracy(y, det, present), _balanced_accuracy(y, fuzz, present)
    null: list[float | None] = [None] * U
    if null_texts is not None:
        has = [k for k, t in enumerate(null_texts) if t is not None]
        if has:
            npred = simulate(ids[has], *tables([null_texts[k] for k in has], b.strings, known))
            H = len(has)
            nc, _ = correlation(true[has].reshape(H, -1), npred.reshape(H, -1), on[has].reshape(H, -1))
            for k, v in zip(has, nc.tolist()):
                null[k] = v
    out = []
    simulated = present.any(axis=1).tolist()  # the method is named by the excerpts simulated: none, none named
    for k, (a, c, ro, d, f) in enumerate(zip(allc.tolist(), const.tolist(), random_only, detection, fuzzing)):
        s = {"top_and_random": a, "random_only": ro, "detection": d, "fuzzing": f, "constant_prediction": c,
             "method": "baseline" if simulated[k] else ""}
        if null_texts is not None and null_texts[k] is not None:
            s["null"] = null[k]
        out.append(s)
    return out


def _python_sum_is_compensated() -> bool:  # pragma: no cover - a fact of the interpreter, for the docs/tests
    return _COMPENSATED and sys.version_info >= (3, 12)
