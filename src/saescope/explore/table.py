"""The unit table: one page of a dataset's summary rows, filtered, searched and sorted (no model, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saescope.errors import SaescopeError

SORT_KEYS = ("index", "max_activation", "density", "mean", "variance", "score")


@dataclass
class TableQuery:
    """Which rows of the unit table, in which order."""

    offset: int = 0
    limit: int = 100
    """Rows per page (clamped to 1..1000)."""
    sort: str = "index"
    """One of SORT_KEYS."""
    desc: bool = False
    q: str = ""
    """Case-insensitive substring of the explanation or the top token."""
    min_density: float | None = None
    min_score: float | None = None
    hide_dead: bool = False
    """Leave out units whose max activation is 0."""
    hide_constant: bool = False
    """Leave out units whose simulator predicted a constant (scored 0 by definition)."""


def keep(row: dict[str, Any], query: TableQuery) -> bool:
    """Whether a row (with its `constant` flag) passes the query's filters and text search."""
    if query.min_density is not None and (row.get("density") or 0.0) < query.min_density:
        return False
    if query.min_score is not None and (row.get("score") is None or row["score"] < query.min_score):
        return False
    if query.hide_dead and not (row.get("max_activation") or 0.0) > 0:
        return False
    if query.hide_constant and row["constant"]:
        return False
    ql = query.q.lower()
    return not ql or ql in (row.get("explanation") or "").lower() or ql in (row.get("top_token") or "").lower()


def unit_table(rows: list[dict[str, Any]], scores: dict[int, dict[str, Any]], query: TableQuery) -> dict[str, Any]:
    """{"total": rows after filtering, "offset", "units": the page}. Each row gains `constant` (its scores flag a
    constant prediction); units without a value for the sort key come last in either order."""
    if query.sort not in SORT_KEYS:
        raise SaescopeError(f"cannot sort by {query.sort!r}")
    flagged = [{**r, "constant": bool(((scores.get(r["index"]) or {}).get("scores") or {}).get("constant_prediction"))}
               for r in rows]
    kept = [r for r in flagged if keep(r, query)]
    known = sorted((r for r in kept if r.get(query.sort) is not None), key=lambda r: r[query.sort],
                   reverse=query.desc)
    ordered = known + [r for r in kept if r.get(query.sort) is None]
    limit = max(1, min(query.limit, 1000))
    return {"total": len(ordered), "offset": query.offset, "units": ordered[query.offset:query.offset + limit]}
