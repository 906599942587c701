"""A unit's logit lens, scaled to what a reader wants: the logit change when the unit fires at its max."""

from __future__ import annotations

from typing import Any

import torch

from saescope.models import HookedModel
from saescope.units import WriteDirection, residual_write


def top_excerpts(record: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The record's first `n` top excerpts on which the unit fired (max activation > 0)."""
    tops = record.get("most_positive_activation_records") or []
    return [r for r in tops if r["activations"] and max(r["activations"]) > 0][:n]


@torch.no_grad()
def unit_lens(hm: HookedModel, target: WriteDirection, record: dict[str, Any], k: int = 10) -> dict[str, Any]:
    """The k output tokens the unit's write raises most and lowers most. Scaled by act / scale: `act` is the unit's
    max over its top 5 excerpts and `scale` the median factor the norms divide a write by on those excerpts (a
    per-unit-of-activation lens is not in logits); a unit that never fired keeps the unscaled lens."""
    from saescope.models.lens import logit_lens, norm_scale

    write, mlp_layer = residual_write(hm, target.hookpoint, target.direction)
    tops = top_excerpts(record, 5)
    act = max((max(r["activations"]) for r in tops), default=0.0)
    scale = norm_scale(hm, ["".join(r["tokens"]) for r in tops], mlp_layer) if act > 0 else float("nan")
    factor = act / scale if scale == scale and scale > 0 else 1.0
    logits = logit_lens(hm, write, mlp_layer) * factor  # [V]
    top, bottom = logits.topk(k), (-logits).topk(k)
    units = (f"logit change when the unit fires at its max ({act:.4g}), norms at their median scale on its top "
             f"excerpts ({scale:.4g})" if factor != 1.0 else
             "logits per unit of activation, the norms' 1/scale left out (the unit never fired)")

    def tok(ids: torch.Tensor) -> list[str]:
        return [hm.tokenizer.decode([int(i)]) for i in ids]
    return {"top": [{"token": t, "logit": float(v)} for t, v in zip(tok(top.indices), top.values)],
            "bottom": [{"token": t, "logit": -float(v)} for t, v in zip(tok(bottom.indices), bottom.values)],
            "units": units, "activation": act, "norm_scale": scale if scale == scale else None}
