"""Influence, pruning and scores on hand-built graphs: hand-computed answers and a naive dense transcription of the
published rules (Circuit Tracing §Pruning) on random layered graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.errors import SaescopeError
from saescope.graph import Adjacency, Graph, graph_scores, influence, prune
from saescope.graph.prune import influence_by_level


def make_graph(A: np.ndarray, n_features: int, n_layers: int, n_pos: int, probs: list[float],
               feature_layers: list[int] | None = None) -> Graph:
    n_active = n_features + 2  # two active features that were not selected: indices must still line up
    layers = [0] + list(feature_layers or [0] * n_features) + [0]
    return Graph(
        prompt="x", tokens=torch.arange(n_pos), token_strs=["t"] * n_pos, n_layers=n_layers,
        active_features=torch.tensor([[layers[i], 0, i] for i in range(n_active)]),
        activation_values=torch.ones(n_active), selected_features=torch.arange(1, n_features + 1),
        adjacency=Adjacency.from_dense(torch.tensor(A, dtype=torch.float32)),
        logit_tokens=torch.arange(len(probs)), logit_strs=["l"] * len(probs),
        logit_probabilities=torch.tensor(probs))


def hand_graph() -> Graph:
    """Nodes: f0, f1 (features), err (layer 0, pos 0), emb (pos 0), logit (p = 0.7)."""
    A = np.zeros((5, 5))
    A[0, 3] = 1.0                                            # f0 ← emb
    A[1, 0], A[1, 3] = 2.0, -2.0                             # f1 ← f0, emb
    A[4, 0], A[4, 1], A[4, 2], A[4, 3] = 3.0, -1.0, 1.5, 0.5  # logit ← f0, f1, err, emb
    return make_graph(A, n_features=2, n_layers=1, n_pos=1, probs=[0.7])


def test_influence_by_hand():
    g = hand_graph()
    infl = influence(g.adjacency.row_normalised_abs(), g.logit_weights())
    # w Â: f0 .7·3/6, f1 .7/6, err .7·1.5/6, emb .7·.5/6; then f1 → f0, emb (½ each); f0 → emb (all)
    f0 = 0.7 * 3 / 6 + 0.7 / 6 / 2
    expected = [f0, 0.7 / 6, 0.7 * 1.5 / 6, 0.7 * 0.5 / 6 + 0.7 / 6 / 2 + f0, 0.0]
    np.testing.assert_allclose(infl.numpy(), expected, rtol=1e-7)
    Ah = g.adjacency.row_normalised_abs().to_dense().double().numpy()
    np.testing.assert_allclose(infl.numpy(), g.logit_weights().numpy() @ Ah @ np.linalg.inv(np.eye(5) - Ah), rtol=1e-7)


def test_prune_by_hand():
    g = hand_graph()
    # cumulative influence: emb .43, f0 .76, err .90 → 0.8 keeps emb, f0, err; f1 (.10) goes
    r = prune(g, 0.8, 0.98)
    assert r.node_mask.tolist() == [True, False, True, True, True]
    # on the pruned graph the edge scores are f0←emb .42, logit←f0 .42, logit←err .21, logit←emb .07
    kept = {(int(t), int(s)) for t, s in zip(g.adjacency.rows[r.edge_mask], g.adjacency.cols[r.edge_mask])}
    assert kept == {(0, 3), (4, 0), (4, 2), (4, 3)}
    r = prune(g, 0.8, 0.9)  # .375, .75, .9375: logit←emb goes
    kept = {(int(t), int(s)) for t, s in zip(g.adjacency.rows[r.edge_mask], g.adjacency.cols[r.edge_mask])}
    assert kept == {(0, 3), (4, 0), (4, 2)}
    r = prune(g, 0.8, 0.7)  # only the two .42 edges: err has no outgoing edge left and is dropped as dangling
    assert r.node_mask.tolist() == [True, False, False, True, True]
    np.testing.assert_allclose(r.cumulative_scores.numpy(), [0.7619048, 1.0, 0.9047619, 0.4285714, 1.0], atol=1e-6)


def test_scores_by_hand():
    s = graph_scores(hand_graph())
    assert s.replacement == pytest.approx(0.525 / (0.525 + 0.175))
    assert s.completeness == pytest.approx((1.925 - 0.25 * 0.7) / 1.925)


def naive_prune(A: np.ndarray, w: np.ndarray, n_feat: int, embed_start: int, nt: float, et: float):
    """The published rules with dense numpy matrices."""
    def norm(M):
        M = np.abs(M)
        return M / np.maximum(M.sum(1, keepdims=True), 1e-10)

    def infl(M):
        return w @ M @ np.linalg.inv(np.eye(len(w)) - M)

    def thr(s, f):
        s = np.sort(s.ravel())[::-1]
        c = np.cumsum(s) / s.sum()
        return s[min(int(np.searchsorted(c, f)), len(s) - 1)]

    ni = infl(norm(A))
    keep = ni >= thr(ni, nt)
    keep[embed_start:] = True
    P = A * keep[:, None] * keep[None, :]
    Ph = norm(P)
    score = Ph * (infl(Ph) + w)[:, None]
    emask = (score >= thr(score[A != 0], et)) & (A != 0)
    while True:
        old = keep.copy()
        emask &= keep[:, None] & keep[None, :]
        keep[:embed_start] &= emask[:, :embed_start].any(0)
        keep[:n_feat] &= emask[:n_feat].any(1)
        if (old == keep).all():
            return keep, emask & keep[:, None] & keep[None, :]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nt,et", [(0.8, 0.98), (0.5, 0.7), (0.95, 0.9)])
def test_prune_matches_naive(seed, nt, et):
    rng = np.random.default_rng(seed)
    n_feat, n_layers, n_pos, n_logits = 6, 2, 2, 2
    n = n_feat + n_layers * n_pos + n_pos + n_logits
    embed_start = n_feat + n_layers * n_pos
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.5)
    rank = np.empty(n)  # a random topological order: features and errors in between embeddings and logits
    rank[: embed_start] = rng.permutation(embed_start) + n_pos
    rank[embed_start:embed_start + n_pos] = np.arange(n_pos)
    rank[embed_start + n_pos:] = n + np.arange(n_logits)
    A = A * (rank[:, None] > rank[None, :])  # edges only from earlier to later nodes
    A[embed_start:embed_start + n_pos] = 0
    A[n_feat:embed_start] = 0  # errors have no inputs
    assert_prunes_as_naive(make_graph(A, n_feat, n_layers, n_pos, [0.6, 0.3]), A, nt, et)


def assert_prunes_as_naive(g: Graph, A: np.ndarray, nt: float, et: float) -> None:
    r = prune(g, nt, et)
    keep, emask = naive_prune(A, g.logit_weights().numpy(), g.n_features, g.embed_start, nt, et)
    assert r.node_mask.tolist() == keep.tolist()
    got = np.zeros(A.shape, dtype=bool)
    ok = r.edge_mask & r.node_mask[g.adjacency.rows] & r.node_mask[g.adjacency.cols]
    got[g.adjacency.rows[ok].numpy(), g.adjacency.cols[ok].numpy()] = True
    assert (got == emask).all()


def levelled_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """A random graph shaped like an attribution graph: features on layers 0..2, errors per (layer, position),
    edges only from a lower level (embeddings −1, a layer, logits 3) to a higher one."""
    rng = np.random.default_rng(seed)
    n_feat, n_layers, n_pos, n_logits = 9, 3, 2, 2
    feat_layers = sorted(rng.integers(0, n_layers, n_feat).tolist())
    n = n_feat + n_layers * n_pos + n_pos + n_logits
    level = np.array(feat_layers + np.repeat(np.arange(n_layers), n_pos).tolist() + [-1] * n_pos + [n_layers] * 2)
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.6) * (level[:, None] > level[None, :])
    A[n_feat:n - n_logits] = 0  # errors and embeddings have no inputs
    return make_graph(A, n_feat, n_layers, n_pos, [0.6, 0.3], feat_layers), A


@pytest.mark.parametrize("seed", range(5))
def test_influence_by_level_equals_power_series(seed):
    g, A = levelled_graph(seed)
    A_hat, w, levels = g.adjacency.row_normalised_abs(), g.logit_weights(), g.node_levels()
    assert levels[g.error_start:g.embed_start].tolist() == [0, 0, 1, 1, 2, 2]
    one_sweep = influence_by_level(A_hat, w, levels)
    assert one_sweep is not None and float(one_sweep.abs().sum()) > 0
    torch.testing.assert_close(one_sweep, influence(A_hat, w), rtol=1e-12, atol=1e-14)
    Ah = A_hat.to_dense().double().numpy()
    np.testing.assert_allclose(one_sweep.numpy(), w.numpy() @ Ah @ np.linalg.inv(np.eye(g.n_nodes) - Ah), rtol=1e-9)
    perm = torch.randperm(A_hat.nnz, generator=torch.Generator().manual_seed(seed))  # rows in no level order
    shuffled = Adjacency(A_hat.rows[perm], A_hat.cols[perm], A_hat.vals[perm], A_hat.n)
    torch.testing.assert_close(influence_by_level(shuffled, w, levels), one_sweep, rtol=1e-12, atol=1e-14)
    flat = torch.zeros_like(levels)  # an edge within a level: no sweep order exists, so the power series is used
    assert influence_by_level(A_hat, w, flat) is None
    torch.testing.assert_close(influence(A_hat, w, levels=flat), one_sweep, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_prune_on_levelled_graph_matches_naive(seed):
    g, A = levelled_graph(seed)
    assert_prunes_as_naive(g, A, 0.8, 0.9)


def test_layout_and_bad_threshold():
    g = hand_graph()
    assert [g.node_kind(i) for i in range(5)] == ["feature", "feature", "error", "embedding", "logit"]
    assert g.feature(0)[2] == 1  # selected_features shifts into active_features
    assert g.error(2) == (0, 0)
    with pytest.raises(SaescopeError, match="node_threshold"):
        prune(g, 1.5)
