"""Beyond circuit-tracer: which attention heads carry an edge.

An edge A[t, s] of the local replacement model is a sum over paths from the source's write to the target through
the residual stream and frozen attention. Split the paths by the **first attention head they cross after the
source** (layer l > the source's write slot, head h), or none:

    A[t, s] = A_resid[t, s] + Σ_{l, h} A_{l,h}[t, s]
    A_{l,h}[t, s] = value_s · w_s · P(H_{l,h})[p_s],   H_{l,h} = N1_lᵀ (W_V[kv(h)] (Σ_q A_l[h, q, ·] (W_O[h] g_l[q])))

where g_l is the target's gradient at the output of layer l's attention (what `FrozenModel.backward` carries), H_{l,h}
is head h's share of the gradient it passes back to layer l's input, and P is the source's write map (identity, or
Gemma's frozen post-MLP norm). Before its first head a path stays at the source's position: through the residual
stream (the identity) and, with skip transcoders, through the skips of the layers in between (x ↦ x + N2(x) W_skip,
position-wise), so the head's share is carried back to the source through those maps (`_through_skips`) and the
split stays exact; `A_resid` (paths through no head: the target at the source's own position) is what is left.
Edges within one position can still cross heads (a position attending to itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.graph.graph import Graph
from saescope.graph.replacement import FrozenModel


@dataclass
class HeadSplit:
    total: float
    """The edge A[t, s]."""
    residual: float
    """Paths that cross no attention head."""
    heads: dict[tuple[int, int], float]
    """(layer, head) → paths whose first head after the source is this one; heads that carry nothing are left out."""


def target_of(fm: FrozenModel, graph: Graph, t: int) -> tuple[int, int, Tensor]:
    """(layer, position, read vector) of target node t: a feature reads its encoder row at its MLP input, a logit its
    demeaned unembedding column after the final norm (layer = n_layers)."""
    if graph.node_kind(t) == "logit":
        tok = int(graph.logit_tokens[t - graph.logit_start])
        return fm.n_layers, fm.n_pos - 1, fm.W_U[:, tok] - fm.W_U.mean(1)
    if graph.node_kind(t) != "feature":
        raise SaescopeError(f"node {t}: a {graph.node_kind(t)} has no incoming edges; pick a feature or a logit")
    layer, pos, idx, _ = graph.feature(t)
    return layer, pos, fm.tc.W_enc[layer][:, idx]


def source_writes(fm: FrozenModel, graph: Graph, s: int) -> tuple[int, list[tuple[int, Tensor]]]:
    """(position, [(write slot k, vector written into the stream after layer k)]) of source node s; k = −1 is the
    embedding (the stream's input)."""
    kind = graph.node_kind(s)
    if kind == "feature":
        layer, pos, idx, act = graph.feature(s)
        W = fm.tc.W_dec[layer]  # [F, n_out, d]
        return pos, [(layer + j, act * W[idx, j]) for j in range(W.shape[1])]
    if kind == "error":
        layer, pos = graph.error(s)
        return pos, [(layer, fm.errors[layer, pos])]
    if kind == "embedding":
        pos = s - graph.embed_start
        return pos, [(-1, fm.clean.embed[pos])]
    raise SaescopeError(f"node {s}: a logit is never a source")


def _head_vjp(fm: FrozenModel, layer: int, g: Tensor) -> Tensor:
    """[H, T, d]: each head's part of the transpose of frozen attention at `layer` applied to g [T, d]."""
    fl = fm.layers[layer]
    T = g.shape[0]
    gz = g if fl.post_attn is None else fl.post_attn.vjp(g)
    gzh = torch.einsum("td,hkd->thk", gz, fl.W_O)  # [T, H, dh]
    gvh = torch.einsum("hts,thk->shk", fl.pattern[:, :T, :T], gzh)  # [T(key), H, dh]
    ga = torch.einsum("shk,hdk->hsd", gvh, fl.W_V[fl.kv_of_head])  # [H, T, d]
    return fl.norm1.vjp(ga)


def _skip_vjp(fm: FrozenModel, layer: int, g: Tensor, pos: int | None = None) -> Tensor | None:
    """The transpose of layer `layer`'s skip path (m ↦ P(N2(m) W_skip), P Gemma's frozen post-MLP norm or the
    identity) applied to g [..., T, d], or to g [..., d] at position `pos`; None without a skip."""
    W = fm.tc.skip(layer)
    if W is None:
        return None
    post, norm2 = fm.post_mlp[layer], fm.layers[layer].norm2
    if pos is None:
        return norm2.vjp((g if post is None else post.vjp(g)) @ W.T)
    return norm2.vjp_at((g if post is None else post.vjp_at(g, pos)) @ W.T, pos)


@torch.no_grad()
def gradients_with_heads(fm: FrozenModel, layer: int, pos: int, vector: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """For one target (read `vector` at `layer`'s MLP input, or after the final norm for layer = n_layers, at `pos`):
    (G[k] [T, d] the gradient at the stream after layer k, for k = −1 .. n_layers − 1 stored at index k + 1;
     Hd[l] [H, T, d] each head's share of what layer l's attention passes back to the stream before it)."""
    T, L = pos + 1, fm.n_layers
    g = torch.zeros(T, fm.d)
    if layer == L:
        inj = torch.zeros(T, fm.d)
        inj[pos] = vector.float()
        g = g + fm.final.vjp(inj)
    G: list[Tensor] = [torch.zeros(T, fm.d) for _ in range(L + 1)]
    Hd: list[Tensor] = [torch.zeros(fm.layers[0].W_O.shape[0], T, fm.d) for _ in range(L)]
    for l in range(min(layer, L - 1), -1, -1):
        G[l + 1] = g
        skip = _skip_vjp(fm, l, g)
        if skip is not None:
            g = g + skip  # ∂/∂m_l through the skip
        if l == layer:
            inj = torch.zeros(T, fm.d)
            inj[pos] = vector.float()
            g = g + fm.layers[l].norm2.vjp(inj)
        Hd[l] = _head_vjp(fm, l, g)
        g = g + Hd[l].sum(0)
    G[0] = g
    return G, Hd


def _through_skips(fm: FrozenModel, v: Tensor, first: int, last: int, pos: int) -> Tensor:
    """v [..., d], a gradient at the stream before layer last + 1 at position `pos`, carried back to the stream
    before layer `first` through the position-wise maps x ↦ x + skip_l(x) of layers last, …, first (paths that cross
    no attention head)."""
    for layer in range(last, first - 1, -1):
        skip = _skip_vjp(fm, layer, v, pos)
        if skip is not None:
            v = v + skip
    return v


def split_edge(fm: FrozenModel, graph: Graph, t: int, s: int, min_share: float = 0.0) -> HeadSplit:
    """The edge from source node s to target node t split by the first head its paths cross (module docstring).
    `heads` lists the heads whose part exceeds min_share · |edge|; `residual` is always the exact no-head part."""
    return split_between(fm, target_of(fm, graph, t), source_writes(fm, graph, s), min_share)


def node_of_json(fm: FrozenModel, node_id: str, feature_type: str) -> tuple[str, tuple[int, ...]]:
    """A graph-JSON node (id + feature_type, as schema.py writes them) → (kind, (layer, pos[, index]))."""
    parts = node_id.split("_")
    try:
        if feature_type == "cross layer transcoder":
            layer, index, pos = (int(v) for v in parts)
            return "feature", (layer, pos, index)
        if feature_type == "mlp reconstruction error":
            return "error", (int(parts[1]), int(parts[2]))
        if feature_type == "embedding":
            return "embedding", (int(parts[2]),)
        if feature_type == "logit":
            return "logit", (int(parts[1]),)
    except ValueError:
        pass
    raise SaescopeError(f"node {node_id!r} ({feature_type}): not a node id of a saescope / circuit-tracer graph")


def split_json_edge(fm: FrozenModel, target: tuple[str, str], source: tuple[str, str], min_share: float = 0.0
                    ) -> HeadSplit:
    """`split_edge` for nodes named as in the graph JSON: target/source = (node_id, feature_type)."""
    kind, key = node_of_json(fm, *target)
    if kind == "logit":
        tgt = (fm.n_layers, fm.n_pos - 1, fm.W_U[:, key[0]] - fm.W_U.mean(1))
    elif kind == "feature":
        tgt = (key[0], key[1], fm.tc.W_enc[key[0]][:, key[2]])
    else:
        raise SaescopeError(f"node {target[0]}: a {kind} has no incoming edges; pick a feature or a logit")
    kind, key = node_of_json(fm, *source)
    if kind == "feature":
        layer, pos, idx = key
        W = fm.tc.W_dec[layer]
        act = float(fm.acts[layer][pos, idx])
        writes = (pos, [(layer + j, act * W[idx, j]) for j in range(W.shape[1])])
    elif kind == "error":
        writes = (key[1], [(key[0], fm.errors[key[0], key[1]])])
    elif kind == "embedding":
        writes = (key[0], [(-1, fm.clean.embed[key[0]])])
    else:
        raise SaescopeError(f"node {source[0]}: a logit is never a source")
    return split_between(fm, tgt, writes, min_share)


def split_between(fm: FrozenModel, target: tuple[int, int, Tensor], source: tuple[int, list[tuple[int, Tensor]]],
                  min_share: float = 0.0) -> HeadSplit:
    """The split for a target (layer, position, read vector) and a source (position, [(slot, write)])."""
    layer, pos, vector = target
    p_s, writes = source
    if p_s > pos:
        return HeadSplit(0.0, 0.0, {})
    G, Hd = gradients_with_heads(fm, layer, pos, vector)
    total, parts = 0.0, torch.zeros(fm.n_layers, Hd[0].shape[0], dtype=torch.float64)
    for k, w in writes:
        post = fm.post_mlp[k] if k >= 0 else None

        def P(v: Tensor) -> Tensor:  # v [..., d] at p_s → the write slot's side of Gemma's post-MLP norm
            return v if post is None else post.vjp_at(v, p_s)

        total += float(w @ P(G[k + 1][p_s]))
        for l in range(k + 1, min(layer + 1, fm.n_layers)):
            parts[l] += (P(_through_skips(fm, Hd[l][:, p_s], k + 1, l - 1, p_s)) @ w).double()
    heads = {(l, h): float(parts[l, h]) for l in range(fm.n_layers) for h in range(parts.shape[1])
             if abs(float(parts[l, h])) > min_share * abs(total) and parts[l, h] != 0}
    return HeadSplit(total, total - float(parts.sum()), heads)
