"""Interventions on transcoder features: a real forward of the model (not the linear replacement model) in which
chosen features, at chosen positions, are scaled (0 = ablated) and the output distribution is read.

At every layer the transcoder encodes the MLP input of *this* run, so a change upstream changes the features
downstream as the model would. A feature k of layer l at position t with live activation a scaled by s adds

    (s − 1) · a · W_dec[l][k, j]        to what layer l + j writes at t      (j = 0 for per-layer transcoders)

at the transcoders' write point (after or before Gemma's post-MLP norm, `transcoders.py`); everything else — the
MLP itself, its error, attention, every norm — runs as usual. Scaling by 1 changes nothing; scaling by 0 removes the
feature's decoder contribution, as circuit-tracer's `feature_intervention` does for a feature set to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.graph.transcoders import Transcoders
from saescope.models import HookedModel


@dataclass(frozen=True)
class Intervention:
    layer: int
    pos: int
    index: int
    factor: float
    """Multiplies the feature's live activation: 0 ablates, 1 changes nothing, 2 doubles."""


@dataclass
class InterventionResult:
    tokens: list[str]
    """The tokens shown: the top `top` before and after, union, most probable before first."""
    token_ids: list[int]
    before: list[float]
    """Their probabilities at the last position, unpatched."""
    after: list[float]
    """… with the interventions."""
    kl: float
    """KL(before ‖ after) over the whole vocabulary, nats."""
    activations: dict[str, tuple[float, float]] = field(default_factory=dict)
    """'layer_index_pos' → (activation before, after) of every intervened feature."""

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "token_ids": self.token_ids, "before": self.before, "after": self.after,
                "kl": self.kl, "activations": {k: list(v) for k, v in self.activations.items()}}


def _write_module(hm: HookedModel, tc: Transcoders, layer: int) -> torch.nn.Module:
    post = hm.post_mlp_norm(layer)
    if post is None or tc.write_point == "before_norm":
        return hm.layers[layer].mlp
    return post


@torch.no_grad()
def patched_logits(hm: HookedModel, tc: Transcoders, ids: Tensor, interventions: list[Intervention]
                   ) -> tuple[Tensor, dict[str, tuple[float, float]]]:
    """Last-position logits [V] of ids [T] with the interventions applied, and each intervened feature's activation
    in this run before and after its scaling ('layer_index_pos' → (a, s·a))."""
    T = int(ids.numel())
    for iv in interventions:
        in_range = 0 <= iv.layer < tc.n_layers and 1 <= iv.pos < T
        if not in_range or not 0 <= iv.index < tc.W_enc[iv.layer].shape[1]:
            raise SaescopeError(f"intervention on layer {iv.layer}, position {iv.pos}, feature {iv.index}: out of "
                                f"range ({tc.n_layers} layers, positions 1..{T - 1}: BOS has no features)")
        if not math.isfinite(iv.factor):
            raise SaescopeError(f"intervention factor {iv.factor}: a finite number (0 ablates, 1 changes nothing)")
    by_layer: dict[int, list[Intervention]] = {}
    for iv in interventions:
        by_layer.setdefault(iv.layer, []).append(iv)
    pending: dict[int, Tensor] = {}  # output layer → [T, d] to add to what it writes
    seen: dict[str, tuple[float, float]] = {}

    def read_in(layer: int, x: Tensor) -> None:
        acts = tc.encode(layer, x[0].float().cpu())  # [T, F]: this run's activations
        W = tc.W_dec[layer]  # [F, n_out, d]
        for iv in by_layer.get(layer, []):
            a = float(acts[iv.pos, iv.index])
            seen[f"{layer}_{iv.index}_{iv.pos}"] = (a, a * iv.factor)
            for j in range(W.shape[1]):
                delta = pending.setdefault(layer + j, torch.zeros(T, hm.d_model))
                delta[iv.pos] += (iv.factor - 1.0) * a * W[iv.index, j]

    handles = []
    for layer in sorted(by_layer):
        handles.append(hm.layers[layer].mlp.register_forward_pre_hook(
            lambda m, args, layer=layer: read_in(layer, args[0])))
    out_layers = {l + j for l in by_layer for j in range(tc.W_dec[l].shape[1])}

    def add(layer: int, out: Any) -> Any:
        y = out[0] if isinstance(out, tuple) else out
        if layer in pending:
            y = y + pending.pop(layer).to(y.dtype).to(y.device)[None]
        return (y, *out[1:]) if isinstance(out, tuple) else y

    for layer in sorted(out_layers):
        handles.append(_write_module(hm, tc, layer).register_forward_hook(
            lambda m, a, out, layer=layer: add(layer, out)))
    try:
        logits = hm.model(input_ids=ids[None].to(hm.model.device), use_cache=False).logits[0, -1].float().cpu()
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def intervene(hm: HookedModel, tc: Transcoders, ids: Tensor, interventions: list[Intervention], top: int = 10
              ) -> InterventionResult:
    """The output distribution at the last position of ids [T] (BOS first) before and after the interventions."""
    before_logits, _ = patched_logits(hm, tc, ids, [])
    after_logits, acts = patched_logits(hm, tc, ids, interventions)
    p, q = torch.softmax(before_logits.double(), -1), torch.softmax(after_logits.double(), -1)
    kl = float((p * (torch.log_softmax(before_logits.double(), -1) - torch.log_softmax(after_logits.double(), -1)))
               .sum())
    order: list[int] = []
    for i in p.topk(top).indices.tolist() + q.topk(top).indices.tolist():
        if i not in order:
            order.append(i)
    return InterventionResult([hm.tokenizer.decode([i]) for i in order], order, [float(p[i]) for i in order],
                              [float(q[i]) for i in order], max(kl, 0.0), acts)
