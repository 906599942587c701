"""Search by inference: for every token of a text, the units of every collated dataset that fire most on it, each
normalised by the unit's own max activation over the collated tokens (the viewer's /search, `saescope search`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.explore.inputs import prompt_ids, with_bos
from saescope.models import HookedModel
from saescope.units import UnitGroup


@dataclass
class SearchSource:
    """One collated dataset searched by inference: its units' extractor and their max activations (collated)."""

    path: str
    group: UnitGroup
    max_act: Tensor  # [n_units]; 0 for dead units (never reported)
    explanations: dict[int, str]
    density: Tensor | None = None
    """[n_units] fraction of collated tokens the unit fires on (None: unknown, nothing is left out)."""


MAX_DENSITY = 0.1
"""/search leaves out units that fire on more than this fraction of tokens: a unit firing nearly everywhere tops
every token and says nothing about any one of them (heads, by token pair, always write: never left out)."""


@torch.no_grad()
def search(hm: HookedModel, sources: list[SearchSource], text: str, per_token: int = 5,
           max_tokens: int = 128, max_density: float = MAX_DENSITY) -> dict[str, Any]:
    """For every token of `text`: the `per_token` units (over all sources) with the highest activation relative to
    their own collated max, capped at 1 (above its collated max a unit is at its max, not more relevant; ties go to
    the sparser unit), among units with density ≤ max_density. Heads by token pair are scored by the largest pair
    they write with the token as query."""
    ids = prompt_ids(hm, text, max_tokens)
    if not ids:
        return {"tokens": [], "units": [], "max_density": max_density, "left_out": 0}
    x = with_bos(hm, ids)
    hps = sorted({h for s in sources for h in s.group.hookpoints})
    cache = hm.run_with_cache(x, None, hps)
    T = len(ids)
    cands: list[list[tuple[float, float, float, str, int]]] = [[] for _ in range(T)]
    left_out = 0
    for s in sources:
        acts = s.group.extract(cache).float().cpu()[:, 0]  # [U, T] or [U, T(T+1)/2] (BOS dropped)
        if s.group.by_token_pair:
            rows = [acts[:, t * (t + 1) // 2:(t + 1) * (t + 2) // 2].amax(1) for t in range(T)]
            acts = torch.stack(rows, 1)  # [U, T]: the unit's largest pair with t as the query
        acts = acts[:, -T:]
        dens = s.density if s.density is not None and not s.group.by_token_pair else torch.zeros(acts.shape[0])
        ok = (s.max_act > 0) & ~(dens > max_density)  # [U]
        left_out += int(((s.max_act > 0) & (dens > max_density)).sum())
        rel = torch.where(ok[:, None], acts / s.max_act.clamp_min(1e-12)[:, None], torch.zeros_like(acts))
        # rank by the capped value, then by sparsity: a small negative density term breaks the ties of capped units
        key = rel.double().clamp(max=1.0) - 1e-6 * dens.double().clamp(0, 1)[:, None]  # float64: ties of 1e-9
        top = key.topk(min(per_token, key.shape[0]), dim=0)  # [k, T]
        for t in range(T):
            for k, u in zip(top.values[:, t].tolist(), top.indices[:, t].tolist()):
                if rel[u, t] > 0:
                    cands[t].append((k, float(rel[u, t]), float(acts[u, t]), s.path, u))
    out = []
    for t in range(T):
        best = sorted(cands[t], reverse=True)[:per_token]
        out.append([{"dataset": p, "index": u, "relative": round(v, 4), "activation": round(a, 5),
                     "explanation": next((s.explanations.get(u) for s in sources if s.path == p), None)}
                    for _, v, a, p, u in best])
    return {"tokens": hm.token_strings(ids), "units": out, "max_density": max_density, "left_out": left_out}


def search_source(path: str, group: UnitGroup, summary_units: list[dict[str, Any]],
                  explanations: dict[int, dict[str, Any]]) -> SearchSource:
    """A dataset as search reads it: its units' max activations and densities from its summary rows."""
    mx, dens = torch.zeros(group.n_units), torch.zeros(group.n_units)
    for u in summary_units:
        if u["index"] < group.n_units:
            mx[u["index"]] = float(u.get("max_activation") or 0.0)
            dens[u["index"]] = float(u.get("density") or 0.0)
    expl = {int(i): e.get("explanation") for i, e in explanations.items() if e.get("explanation")}
    return SearchSource(path, group, mx, expl, dens)


def check_search(text: str, max_density: float) -> None:
    """A search request's bounds (a one-line error naming the field)."""
    if not text.strip() or len(text) > 2000:
        raise SaescopeError("give a text of 1 to 2000 characters")
    if not 0 <= max_density <= 1:
        raise SaescopeError("max_density: a fraction from 0 to 1 (1 keeps every unit)")
