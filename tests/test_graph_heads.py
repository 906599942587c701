"""Per-head split of edges: each head's part equals a naive derivative through the frozen model with the other
paths cut (attention patterns zeroed), and the parts sum to the edge, with and without skip transcoders."""

from __future__ import annotations

import pytest
import torch
from test_graph_attribute import PROMPT, make_transcoders, naive_row

from saescope.graph import attribute as attr
from saescope.graph.heads import split_edge
from saescope.graph.replacement import FrozenModel


def edge_with_patterns(fm: FrozenModel, graph, t: int, s: int, keep: dict[int, list[int] | None]) -> float:
    """A[t, s] by autograd with layer l's attention reduced to the heads keep[l] (None: all, []: none)."""
    saved = [fl.pattern for fl in fm.layers]
    try:
        for l, heads in keep.items():
            if heads is not None:
                mask = torch.zeros(saved[l].shape[0], 1, 1)
                mask[heads] = 1.0
                fm.layers[l].pattern = saved[l] * mask
        return float(naive_row(fm, graph, t)[0][s])
    finally:
        for fl, p in zip(fm.layers, saved):
            fl.pattern = p


@pytest.mark.parametrize("arch,kind", [("gpt2", "plt"), ("gemma", "plt"), ("llama", "plt"), ("gpt2", "skip"),
                                       ("gemma", "skip")])
def test_head_parts_equal_cut_paths(arch, kind):
    """With skip transcoders too: a path may run through the skips of the layers before its first head."""
    from conftest import make_model

    hm = make_model(arch)
    tc = make_transcoders(hm, kind)
    if kind == "skip":  # skips strong enough that a split which ignored them would miss by far more than the tolerance
        tc.W_skip = [w * 5 for w in tc.W_skip]
    graph = attr.attribute(hm, tc, PROMPT)
    fm = FrozenModel(hm, tc, graph.tokens)
    L, H = hm.n_layers, hm.n_heads
    A = graph.adjacency.to_dense()
    t = graph.logit_start
    # the strongest source of each kind with a write slot k (embedding: −1; a layer-0 feature: 0)
    emb = graph.embed_start + int(A[t, graph.embed_start:graph.logit_start].abs().argmax())
    feats = [i for i in range(graph.n_features) if graph.feature(i)[0] == 0 and graph.feature(i)[1] < graph.n_pos - 1]
    feat = max(feats, key=lambda i: abs(float(A[t, i])))
    for s, k in ((emb, -1), (feat, 0)):
        split = split_edge(fm, graph, t, s)
        assert split.total == pytest.approx(float(A[t, s]), abs=3e-5, rel=1e-4)
        assert split.residual + sum(split.heads.values()) == pytest.approx(split.total, abs=1e-5)
        cut_all = {l: [] if l > k else None for l in range(L)}
        assert split.residual == pytest.approx(edge_with_patterns(fm, graph, t, s, cut_all), abs=3e-5, rel=1e-4)
        if s != graph.logit_start - 1:  # a source before the target's position: every path crosses a head
            assert abs(split.residual) < 1e-5
        for l in range(k + 1, L):
            for h in range(H):
                before = {m: [] for m in range(k + 1, l)}
                only = edge_with_patterns(fm, graph, t, s, {**before, l: [h]})
                none = edge_with_patterns(fm, graph, t, s, {**before, l: []})
                assert split.heads.get((l, h), 0.0) == pytest.approx(only - none, abs=3e-5, rel=1e-4)
        assert len(split.heads) > 1
