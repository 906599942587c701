"""Beyond circuit-tracer: QK attribution — why head h of layer l at query position q attends to key position k, in
transcoder features.

The graph freezes attention patterns; this explains them. With every norm's scale frozen (the pre-attention norm,
Gemma 3's q/k norms) the query and key are affine in the residual stream, and the stream at a position is the sum of
what was written there (per layer l' < l: the transcoder features' writes, the error, and the attention output;
the token embedding; biases):

    x_l[p] = Σ_i c_i[p] + rest[p]            c_i: a feature's write a·W_dec (through Gemma's post-MLP norm if the
                                                   transcoders write before it), an error, the embedding
    q = Q(x_l[q]) = Σ_i Q°(c_i[q]) + Q°(rest[q]) + Q(0),     Q° = the linear part (RoPE, frozen norms, W_Q)
    score = scaling · q · k

so the score splits exactly over the query position's components, k held at its value (`query` terms), and over the
key position's components, q held at its value (`key` terms). `rest` holds the attention outputs of earlier layers
(what other positions moved here) and the constants; each side sums to the score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.graph.replacement import FrozenModel
from saescope.graph.schema import embedding_id, error_id, feature_id


@dataclass
class QKAttribution:
    layer: int
    head: int
    query_pos: int
    key_pos: int
    score: float
    """scaling · q · k (pre-softmax, before the mask)."""
    pattern: float
    """The clean attention weight A[h, q, k]."""
    query: list[tuple[str, float]] = field(default_factory=list)
    """(node id, its share of the score through the query), largest |share| first, then 'rest' and 'bias'."""
    key: list[tuple[str, float]] = field(default_factory=list)
    """… through the key."""


def _rope(x: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
    """x [..., dh] at one position with that position's cos/sin [dh] (none: GPT-2)."""
    if cos is None:
        return x
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class _Side:
    """The affine map from the residual stream at one position to one head's query (or key), norms frozen."""

    def __init__(self, fm: FrozenModel, layer: int, which: str, head: int, pos: int, cache: dict) -> None:
        hm, fl = fm.hm, fm.layers[layer]
        attn = hm.attention(layer)
        dh, d = hm.d_head, hm.d_model
        kv = int(fl.kv_of_head[head])
        if hm.arch == "gpt2":
            off = {"q": 0, "k": d}[which]
            W = attn.c_attn.weight[:, off + head * dh: off + (head + 1) * dh].detach().float()  # [d, dh]
            b = attn.c_attn.bias[off + head * dh: off + (head + 1) * dh].detach().float()
        else:
            proj = attn.q_proj if which == "q" else attn.k_proj
            h = head if which == "q" else kv
            W = proj.weight[h * dh:(h + 1) * dh].detach().float().T
            b = None if proj.bias is None else proj.bias[h * dh:(h + 1) * dh].detach().float()
        self.norm1, self.pos, self.W, self.b = fl.norm1, pos, W.cpu(), None if b is None else b.cpu()
        self.gain = None  # Gemma 3's q/k norm: frozen at the clean query/key's rms
        qk_norm = getattr(attn, f"{which}_norm", None)
        if qk_norm is not None:
            clean = self._proj(fm.clean.resid_pre[layer][pos])
            rms = torch.sqrt(clean.pow(2).mean() + qk_norm.eps)
            self.gain = hm.norm_gain(qk_norm).cpu() / rms
        cos, sin = cache.get(layer, (None, None))
        self.cos = None if cos is None else cos[pos]
        self.sin = None if sin is None else sin[pos]

    def _proj(self, x: Tensor) -> Tensor:
        """W_Q/K of the pre-attention norm of the stream x [d] at self.pos (with every constant)."""
        a = self.norm1.apply(torch.zeros(self.pos + 1, x.shape[-1]).index_copy(0, torch.tensor([self.pos]), x[None]))
        y = a[self.pos] @ self.W
        return y if self.b is None else y + self.b

    def linear(self, c: Tensor) -> Tensor:
        """[n, d] components → [n, dh] their parts of the query/key (no constants)."""
        cs = torch.zeros(c.shape[0], self.pos + 1, c.shape[-1])
        cs[:, self.pos] = c
        a = self.norm1.apply(cs)[:, self.pos]
        if self.norm1.bias is not None:
            a = a - self.norm1.bias
        y = a @ self.W
        return _rope(y if self.gain is None else y * self.gain, self.cos, self.sin)

    def constant(self) -> Tensor:
        """[dh]: the part of the query/key that does not depend on the stream (norm bias, projection bias)."""
        y = self._proj(torch.zeros(self.W.shape[0])) if self.norm1.bias is not None or self.b is not None \
            else torch.zeros(self.W.shape[1])
        return _rope(y if self.gain is None else y * self.gain, self.cos, self.sin)


def components(fm: FrozenModel, layer: int, pos: int) -> tuple[list[str], Tensor]:
    """What was written to the stream at `pos` before layer `layer`: (node ids, [n, d] writes) — features, errors, the
    embedding — plus 'rest' (attention outputs and constants: the stream minus the others)."""
    ids, rows = [embedding_id(int(fm.ids[pos]), pos)], [fm.clean.embed[pos]]
    for l in range(layer):
        post = fm.post_mlp[l]
        lin = (lambda v: v) if post is None else (lambda v, post=post: post.apply(  # noqa: E731
            torch.zeros(pos + 1, v.shape[-1]).index_copy(0, torch.tensor([pos]), v[None]))[pos])
        a = fm.acts[l][pos]
        for f in a.nonzero().flatten().tolist():
            ids.append(feature_id(l, f, pos))
            rows.append(lin(a[f] * fm.tc.W_dec[l][f, 0]))
        if pos > 0:
            ids.append(error_id(l, pos))
            rows.append(lin(fm.errors[l, pos]))
    if fm.tc.cross_layer:
        raise SaescopeError("QK attribution: cross-layer transcoders are not supported yet (per-layer sets only)")
    stack = torch.stack(rows)
    return ids + ["rest"], torch.cat([stack, (fm.clean.resid_pre[layer][pos] - stack.sum(0))[None]])


def _rope_cache(fm: FrozenModel) -> dict[int, tuple[Tensor, Tensor]]:
    """cos/sin [T, dh] per layer from one forward (Llama and Gemma pass them to every attention module)."""
    got: dict[int, tuple[Tensor, Tensor]] = {}
    hm = fm.hm
    if hm.arch == "gpt2":
        return got
    handles = []
    for l in range(hm.n_layers):
        def grab(mod, args, kwargs, l=l):
            pe = kwargs.get("position_embeddings")
            if pe is not None:
                got[l] = (pe[0][0].detach().float().cpu(), pe[1][0].detach().float().cpu())
        handles.append(hm.attention(l).register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            hm.model(input_ids=fm.ids[None].to(hm.model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def qk_attribution(fm: FrozenModel, layer: int, head: int, query_pos: int, key_pos: int | None = None,
                   top: int | None = 20) -> QKAttribution:
    """Why head `head` of `layer` at `query_pos` attends to `key_pos` (default: where it attends most). Each side
    lists its `top` components by |share| plus 'rest' and 'bias' (top=None: every component; then each side sums
    to the score)."""
    if not 0 <= layer < fm.n_layers or not 0 <= head < fm.hm.n_heads or not 0 <= query_pos < fm.n_pos:
        raise SaescopeError(f"QK attribution: layer {layer}, head {head}, query position {query_pos} out of range")
    pattern = fm.layers[layer].pattern[head, query_pos]
    k_pos = int(pattern[: query_pos + 1].argmax()) if key_pos is None else key_pos
    if not 0 <= k_pos <= query_pos:
        raise SaescopeError(f"QK attribution: key position {k_pos} is not in 0..{query_pos} (causal attention)")
    cache = _rope_cache(fm)
    Q = _Side(fm, layer, "q", head, query_pos, cache)
    K = _Side(fm, layer, "k", head, k_pos, cache)
    scaling = float(fm.hm.attention(layer).scaling)
    q_ids, q_c = components(fm, layer, query_pos)
    k_ids, k_c = components(fm, layer, k_pos)
    q_parts, k_parts = Q.linear(q_c), K.linear(k_c)  # [n, dh]
    q_full, k_full = q_parts.sum(0) + Q.constant(), k_parts.sum(0) + K.constant()
    score = scaling * float(q_full @ k_full)

    def ranked(ids: list[str], parts: Tensor, other: Tensor, const: Tensor) -> list[tuple[str, float]]:
        shares = (scaling * parts @ other).tolist()
        rows = sorted(zip(ids, shares), key=lambda r: -abs(r[1]))
        keep = [r for r in rows if r[0] != "rest"][:top] + [r for r in rows if r[0] == "rest"]  # top=None: all
        return keep + [("bias", scaling * float(const @ other))]

    return QKAttribution(layer, head, query_pos, k_pos, score, float(pattern[k_pos]),
                         ranked(q_ids, q_parts, k_full, Q.constant()), ranked(k_ids, k_parts, q_full, K.constant()))
