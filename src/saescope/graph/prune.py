"""Influence, pruning and scores of an attribution graph: pure functions over a `Graph` (Anthropic, "Circuit
Tracing", 2025, §"Pruning" and §"Evaluating graphs"; the same formulas and thresholds as circuit-tracer's graph.py).

Notation: A[t, s] the adjacency (rows = targets), Â = |A| with each row scaled to sum 1, w the logit weights (each
logit node's probability, 0 elsewhere). A graph is a DAG, so Â is nilpotent and the power series ends.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saescope.graph.graph import Adjacency, Graph


def influence(A_hat: Adjacency, w: Tensor, max_iter: int | None = None, levels: Tensor | None = None) -> Tensor:
    """influence = w Â + w Â² + … = w Â (I − Â)⁻¹: how much of the logits' weight reaches each node through every
    path, each edge counted by its share of its target's absolute input. [n] float64.

    With `levels` ([n] int, every edge from a lower level to a higher one: a node's layer, as `Graph.node_levels`)
    it is one sweep over the edges from the top level down (`influence_by_level`); otherwise the power series, one
    pass over the edges per power (as many as the longest path)."""
    if levels is not None:
        out = influence_by_level(A_hat, w, levels)
        if out is not None:
            return out
    max_iter = A_hat.n + 1 if max_iter is None else max_iter
    current = A_hat.vecmat(w.double())
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = A_hat.vecmat(current)
        total += current
    raise RuntimeError(f"influence did not vanish after {max_iter} powers: the graph has a cycle")


def influence_by_level(A_hat: Adjacency, w: Tensor, levels: Tensor) -> Tensor | None:
    """The influence in one pass: infl[s] = Σ_t (infl[t] + w[t]) Â[t, s], with the targets taken level by level from
    the top, so each infl[t] is complete before it is passed on. None when some edge does not go up a level."""
    row_level = levels[A_hat.rows]
    if A_hat.nnz and bool((levels[A_hat.cols] >= row_level).any()):
        return None
    order = None
    if A_hat.nnz > 1 and not bool((row_level[1:] >= row_level[:-1]).all()):
        order = torch.argsort(row_level, stable=True)
        row_level = row_level[order]
    rows, cols, vals = (A_hat.rows, A_hat.cols, A_hat.vals) if order is None else (
        A_hat.rows[order], A_hat.cols[order], A_hat.vals[order])
    w = w.to(vals.dtype)
    total = torch.zeros(A_hat.n, dtype=vals.dtype)
    if not A_hat.nnz:
        return total
    lo_level = int(row_level[0])
    bounds = torch.searchsorted(row_level, torch.arange(lo_level, int(row_level[-1]) + 2, dtype=row_level.dtype))
    for i in range(bounds.numel() - 2, -1, -1):  # the top level first
        a, b = int(bounds[i]), int(bounds[i + 1])
        if a == b:
            continue
        r = rows[a:b]
        total.index_add_(0, cols[a:b], (total[r] + w[r]) * vals[a:b])
    return total


def find_threshold(scores: Tensor, fraction: float) -> float:
    """The score above which the largest scores first reach `fraction` of the total (what 0.8 / 0.98 mean)."""
    s = torch.sort(scores.double(), descending=True).values
    total = s.sum()
    if s.numel() == 0 or total <= 0:
        return 0.0
    cumulative = torch.cumsum(s, 0) / total
    idx = min(int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=torch.float64))), s.numel() - 1)
    return float(s[idx])


class PruneResult(NamedTuple):
    node_mask: Tensor
    """[n_nodes] bool: nodes kept."""
    edge_mask: Tensor
    """[nnz] bool over the adjacency's stored entries: edges kept."""
    cumulative_scores: Tensor
    """[n_nodes] each node's place in the descending cumulative influence (the JSON's `influence`)."""
    influence: Tensor
    """[n_nodes] node influence on the unpruned graph."""


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Keep the nodes whose influence makes up `node_threshold` of the total (embeddings and logits always), then the
    edges whose score makes up `edge_threshold` of the total edge score, then drop dangling nodes.

    Edge score on the node-pruned graph: score[t, s] = Â'[t, s] · (influence'[t] + w[t]), Â' and influence' computed
    on A with the dropped nodes' rows and columns zeroed. Dangling: a feature or error node with no kept outgoing
    edge, or a feature node with no kept incoming edge; removed repeatedly until none is left.
    """
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            from saescope.errors import SaescopeError

            raise SaescopeError(f"--{name} {v}: must be between 0 and 1 (a fraction of the total influence)")
    A, w, levels = graph.adjacency, graph.logit_weights(), graph.node_levels()
    node_influence = influence(A.row_normalised_abs(), w, levels=levels)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[graph.embed_start:] = True  # embeddings and logits stay

    alive = node_mask[A.rows] & node_mask[A.cols]
    pruned = Adjacency(A.rows, A.cols, torch.where(alive, A.vals, torch.zeros_like(A.vals)), A.n)
    A_hat = pruned.row_normalised_abs()
    reach = influence(A_hat, w, levels=levels) + w
    edge_scores = A_hat.vals * reach[A.rows]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)

    n_feat, ends = graph.n_features, graph.embed_start
    while True:
        before = node_mask.clone()
        has_out = torch.zeros(A.n, dtype=torch.bool)
        has_out[A.cols[edge_mask]] = True
        has_in = torch.zeros(A.n, dtype=torch.bool)
        has_in[A.rows[edge_mask]] = True
        node_mask[:ends] &= has_out[:ends]
        node_mask[:n_feat] &= has_in[:n_feat]
        if torch.equal(before, node_mask):
            break
        edge_mask &= node_mask[A.rows] & node_mask[A.cols]

    order = torch.argsort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    total = node_influence.sum()
    cumulative[order] = torch.cumsum(node_influence[order], 0) / (total if total > 0 else 1.0)
    return PruneResult(node_mask, edge_mask, cumulative, node_influence)


class GraphScores(NamedTuple):
    replacement: float
    """Σ embedding influence / (Σ embedding influence + Σ error influence): the share of the end-to-end influence
    that reaches the logits from the tokens through features only."""
    completeness: float
    """Σ_i (1 − Σ_{j ∈ errors} Â[i, j]) · (influence_i + w_i) / Σ_i (influence_i + w_i): the share of every node's
    input that comes from features or tokens, weighted by how much the node matters."""


def graph_scores(graph: Graph, A: Adjacency | None = None) -> GraphScores:
    """Replacement and completeness scores of `graph` (or of the adjacency `A` on its node layout, e.g. pruned)."""
    A = graph.adjacency if A is None else A
    w = graph.logit_weights()
    A_hat = A.row_normalised_abs()
    infl = influence(A_hat, w, levels=graph.node_levels())
    err = graph.error_mask()
    tok = float(infl[graph.embed_start:graph.logit_start].sum())
    err_infl = float(infl[err].sum())
    replacement = tok / (tok + err_infl) if tok + err_infl > 0 else 0.0
    out_infl = infl + w
    non_error = 1.0 - A_hat.row_sums_over(err)
    completeness = float((non_error * out_infl).sum() / out_infl.sum())
    return GraphScores(replacement, completeness)


def pruned_adjacency(graph: Graph, result: PruneResult) -> Adjacency:
    """The adjacency restricted to the kept edges between kept nodes."""
    A = graph.adjacency
    return A.select(result.edge_mask & result.node_mask[A.rows] & result.node_mask[A.cols])
