"""What the viewer computes with the model: steering, neighbours and search by inference. Pure functions of a
HookedModel, SAEs and collated summaries (the server only routes requests here; `saescope search` prints them).

- `steer`: greedy continuation with a unit's write direction added at its hookpoint, beside the unsteered one.
- `decoder_neighbours`, `coactive`: nearest latents by decoder cosine; latents that fire on the tokens where a latent
  fires, over its top excerpts.
- `search`: for every token of a text, the units of every collated dataset that fire most on it, each normalised by
  the unit's own max activation over the collated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.models import HookedModel
from saescope.units import UnitGroup, WriteDirection, sae_group


@torch.no_grad()
def steer(hm: HookedModel, target: WriteDirection, prompt: str, strength: float, n_tokens: int = 24) -> dict[str, Any]:
    """Greedy continuations of `prompt`, unsteered and with `strength · direction` added at the target's hookpoint
    at every position (the prompt's and the generated ones')."""
    ids = hm.tokenizer(prompt, add_special_tokens=False)["input_ids"][:256]
    bos = hm.tokenizer.bos_token_id
    x = torch.tensor([([bos] if bos is not None else []) + ids], device=next(hm.model.parameters()).device)
    pad = hm.tokenizer.pad_token_id if hm.tokenizer.pad_token_id is not None else hm.tokenizer.eos_token_id

    def greedy() -> list[int]:
        out = hm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_tokens,
                                do_sample=False, pad_token_id=pad)
        return out[0, x.shape[1]:].tolist()
    plain = greedy()
    d = target.direction.to(x.device)
    with hm.patch(target.hookpoint, lambda a: a + (strength * d).to(a.dtype)):
        steered = greedy()
    return {"prompt_tokens": hm.token_strings(ids), "unsteered": hm.token_strings(plain),
            "steered": hm.token_strings(steered), "hookpoint": target.hookpoint, "strength": strength,
            "direction_norm": float(target.direction.norm())}


@torch.no_grad()
def decoder_neighbours(sae: Any, index: int, k: int = 10) -> list[tuple[int, float]]:
    """The k latents whose decoder rows are closest in cosine to latent `index`'s (itself excluded)."""
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)  # [F, d]
    sim = W @ W[index]
    sim[index] = -2.0
    top = sim.topk(min(k, W.shape[0] - 1))
    return [(int(i), float(v)) for i, v in zip(top.indices, top.values)]


@torch.no_grad()
def coactive(hm: HookedModel, sae: Any, hookpoint: str, index: int, excerpts: list[list[int]],
             k: int = 10) -> list[tuple[int, float]]:
    """Latents firing where latent `index` fires, over the given excerpts (token ids, no BOS): for each other latent,
    the fraction of those tokens on which it fires too."""
    bos = hm.tokenizer.bos_token_id
    group = sae_group(sae, hookpoint, "")
    counts = torch.zeros(sae.cfg.d_sae)
    n = 0
    dev = next(hm.model.parameters()).device
    for ids in excerpts:
        x = torch.tensor([([bos] if bos is not None else []) + ids], device=dev)
        f = group.extract(hm.run_with_cache(x, None, group.hookpoints))  # [F, 1, T(+1)]
        f = f[:, 0, -len(ids):].float().cpu()  # [F, T]
        on = f[index] > 0
        if on.any():
            counts += (f[:, on] > 0).float().sum(1)
            n += int(on.sum())
    if n == 0:
        return []
    counts[index] = -1.0
    top = (counts / n).topk(min(k, sae.cfg.d_sae - 1))
    return [(int(i), float(v)) for i, v in zip(top.indices, top.values) if v > 0]


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
    ids = hm.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if not ids:
        return {"tokens": [], "units": [], "max_density": max_density, "left_out": 0}
    bos = hm.tokenizer.bos_token_id
    dev = next(hm.model.parameters()).device
    x = torch.tensor([([bos] if bos is not None else []) + ids], device=dev)
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
