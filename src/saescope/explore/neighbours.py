"""Neighbours of a dictionary latent: the nearest latents by decoder cosine, and the latents that fire on the tokens
where it fires over its top excerpts."""

from __future__ import annotations

from typing import Any

import torch

from saescope.explore.inputs import prompt_ids, with_bos
from saescope.models import HookedModel
from saescope.units import sae_group


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
    group = sae_group(sae, hookpoint, "")
    counts = torch.zeros(sae.cfg.d_sae)
    n = 0
    for ids in excerpts:
        x = with_bos(hm, ids)
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


def latent_neighbours(sae: Any, index: int, k: int, explanations: dict[int, Any], hm: HookedModel | None = None,
               hookpoint: str = "", record: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"decoder": nearest latents by decoder cosine, "coactive": latents co-active with it on the record's top 12
    excerpts (each cut at 128 tokens; with `hm`, `hookpoint` and `record` only: by-token datasets)}, each row with
    the neighbour's explanation."""
    def name(i: int) -> str | None:
        return (explanations.get(i) or {}).get("explanation")

    out: dict[str, Any] = {"decoder": [{"index": i, "cosine": round(c, 4), "explanation": name(i)}
                                       for i, c in decoder_neighbours(sae, index, k)], "coactive": []}
    if hm is not None and record is not None:
        texts = ["".join(r["tokens"]) for r in record.get("most_positive_activation_records", [])[:12]
                 if r["activations"] and max(r["activations"]) > 0]
        excerpts = [prompt_ids(hm, t, 128) for t in texts]
        co = coactive(hm, sae, hookpoint, index, [e for e in excerpts if e], k)
        out["coactive"] = [{"index": i, "fraction": round(f, 4), "explanation": name(i)} for i, f in co]
    return out
