"""Transcoders as the graph reads them (float32, one entry per layer), whatever their file layout, and where they
write: Gemma 3 has a norm after its MLP (`post_feedforward_layernorm`), and a transcoder is trained either on what
the MLP module returns (before that norm: circuit-tracer's `mlp.hook_out`, Gemma Scope 2) or on what the block adds
to the residual stream (after it: saescope's `mlp_out.L`, TransformerLens' `hook_mlp_out`). Other architectures
have no such norm and the two points coincide."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from saescope.errors import SaescopeError

WritePoint = Literal["after_norm", "before_norm"]
WRITE_POINTS = ("auto", "after_norm", "before_norm")
CT_HOOK_WRITE_POINT: dict[str, WritePoint] = {"mlp.hook_out": "before_norm", "hook_mlp_out": "after_norm"}
"""circuit-tracer's `feature_output_hook` names (TransformerLens: `mlp.hook_out` is the MLP module's output,
`hook_mlp_out` the block's, after Gemma's `ln2_post`)."""


@dataclass
class Transcoders:
    """Per-layer or cross-layer transcoders mapping mlp_in.L → the MLP's write, one entry per layer (float32).

    pre_l = x W_enc[l] + b_enc[l];  a_l = activation(l, pre_l);  out_l' = Σ_{l ≤ l'} a_l W_dec[l][:, l'−l] + b_dec[l']
    + x_l' W_skip[l']."""

    W_enc: list[Tensor]
    """[d, F_l] per layer."""
    b_enc: list[Tensor]
    """[F_l]."""
    W_dec: list[Tensor]
    """[F_l, n_out, d]: layer l's features write to layers l .. l + n_out − 1 (n_out = 1: per-layer transcoders)."""
    b_dec: list[Tensor]
    """[d] per output layer."""
    activation: Callable[[int, Tensor], Tensor]
    """(layer, pre-activations [..., F]) → activations (TopK, JumpReLU, ReLU)."""
    W_skip: list[Tensor | None] | None = None
    """[d, d] per layer, or None: an affine skip x W_skip added to the output."""
    scan: str = ""
    """Identifier of the set (circuit-tracer's `scan`), written to the graph JSON."""
    encoder: Callable[[int, Tensor], Tensor] | None = None
    """(layer, x [.., d]) → activations, where the set has its own encoder (a TranscoderSet); else
    activation(layer, x W_enc + b_enc)."""
    write_point: WritePoint = "after_norm"
    """Where the output is added (module docstring); matters only for models with a norm after the MLP."""

    def encode(self, layer: int, x: Tensor) -> Tensor:
        if self.encoder is not None:
            return self.encoder(layer, x)
        return self.activation(layer, x @ self.W_enc[layer] + self.b_enc[layer])

    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def cross_layer(self) -> bool:
        return any(w.shape[1] > 1 for w in self.W_dec)

    def skip(self, layer: int) -> Tensor | None:
        return None if self.W_skip is None else self.W_skip[layer]


def resolve_write_point(write_point: str, metadata: dict[str, Any]) -> WritePoint:
    """`auto`: what the set's files say — circuit-tracer's config.yaml `feature_output_hook` (default `mlp.hook_out`,
    before the norm), Gemma Scope 2 before the norm, saescope's own sets after it (they are trained on mlp_out.L)."""
    if write_point not in WRITE_POINTS:
        raise SaescopeError(f"--write_point {write_point}: one of {', '.join(WRITE_POINTS)}")
    if write_point != "auto":
        return write_point  # type: ignore[return-value]
    source = metadata.get("source", "")
    if source == "circuit-tracer":
        hook = metadata.get("feature_output_hook") or "mlp.hook_out"
        if hook not in CT_HOOK_WRITE_POINT:
            raise SaescopeError(f"config.yaml feature_output_hook {hook!r}: unknown; give --write_point after_norm or "
                                "before_norm")
        return CT_HOOK_WRITE_POINT[hook]
    return "before_norm" if source == "gemma_scope_2" else "after_norm"


@torch.no_grad()
def from_transcoder_set(ts: Any, n_layers: int, scan: str = "", write_point: str = "auto") -> Transcoders:
    """saescope's `TranscoderSet` (per-layer transcoders, with or without skip, or one cross-layer transcoder) as the
    graph reads it; every layer must be covered."""
    missing = [l for l in range(n_layers) if l not in ts.layers]
    if missing:
        raise SaescopeError(f"transcoders: no transcoder for layers {missing}; a graph needs one on every layer")
    f = lambda t: t.detach().float().cpu()  # noqa: E731
    dev = next(ts.parameters()).device
    where = resolve_write_point(write_point, getattr(ts, "metadata", None) or {})

    def encode(layer: int, x: Tensor) -> Tensor:
        return ts.encode_layer(layer, x.to(dev)).detach().float().cpu()

    signed_k = _signed_topk_k(ts, n_layers)  # circuit-tracer's TopK: activation(x W_enc + b_enc), not the set's own
    encoder = encode if signed_k is None else None
    activation = _no_activation if signed_k is None else topk_activation(signed_k, relu=False)
    if ts.is_clt:
        clt = ts.clt
        skip = [f(clt.W_skip[l]) for l in range(n_layers)] if clt.cfg.skip else None
        per = lambda w: [f(w[l]) for l in range(n_layers)]  # noqa: E731
        return Transcoders(per(clt.W_enc), per(clt.b_enc), per(clt.W_dec), per(clt.b_dec), activation, skip, scan,
                           encoder=encoder, write_point=where)
    W_enc, b_enc, W_dec, b_dec, skip = [], [], [], [], []
    for l in range(n_layers):
        t = ts[l]
        W_enc.append(f(t.W_enc))
        b = f(t.b_enc)  # an input-side b_dec (plain SAEs) folds into the encoder bias
        b_enc.append(b - f(t.b_dec) @ f(t.W_enc) if t.cfg.apply_b_dec_to_input else b)
        W_dec.append(f(t.W_dec)[:, None, :])
        b_dec.append(f(t.b_dec))
        skip.append(f(t.W_skip) if getattr(t, "skip_connection", False) else None)
    return Transcoders(W_enc, b_enc, W_dec, b_dec, activation, skip if any(w is not None for w in skip) else None,
                       scan, encoder=encoder, write_point=where)


def _no_activation(layer: int, pre: Tensor) -> Tensor:
    raise NotImplementedError("this set encodes through its own encoder")


def topk_activation(k: int | list[int], relu: bool = True) -> Callable[[int, Tensor], Tensor]:
    """The k (or k[layer]) largest pre-activations of each row, ReLU'd (saescope's and sparsify's TopK) or kept as they
    are, ≤ 0 included (circuit-tracer's `TopK`: x · gate); the rest 0."""
    def act(layer: int, pre: Tensor) -> Tensor:
        top = pre.topk(k if isinstance(k, int) else k[layer], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu() if relu else top.values)
    return act


def _signed_topk_k(ts: Any, n_layers: int) -> list[int] | None:
    """Per-layer k where the set is a TopK set read from circuit-tracer's layout (its TopK keeps the k largest
    pre-activations even when they are ≤ 0, and so does the graph, so both tools make the same graph); else None."""
    if (getattr(ts, "metadata", None) or {}).get("source") != "circuit-tracer":
        return None
    if ts.is_clt:
        return [int(ts.clt.cfg.k)] * n_layers if ts.clt.cfg.activation == "topk" else None
    archs = [ts[l].cfg.architecture for l in range(n_layers)]
    return [int(ts[l].cfg.k) for l in range(n_layers)] if all(a.startswith("topk") for a in archs) else None


def jumprelu_activation(thresholds: list[Tensor]) -> Callable[[int, Tensor], Tensor]:
    """pre · 1[pre > θ_layer]."""
    def act(layer: int, pre: Tensor) -> Tensor:
        return pre * (pre > thresholds[layer])
    return act
