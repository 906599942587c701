"""QK attribution: the score rebuilt from the stream's components is the model's own (its softmax over the keys is
the clean attention pattern), and each side's shares sum to it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from test_graph_attribute import PROMPT, make_transcoders

from saescope.graph import attribute as attr
from saescope.graph.qk import qk_attribution
from saescope.graph.replacement import FrozenModel


@pytest.mark.parametrize("arch,where", [("gpt2", "after_norm"), ("gemma", "after_norm"), ("gemma", "before_norm"),
                                        ("llama", "after_norm")])  # the write point only differs on Gemma
def test_qk_scores_rebuild_the_pattern(arch, where):
    hm = make_model(arch)
    tc = make_transcoders(hm, "plt")
    tc.write_point = where
    fm = FrozenModel(hm, tc, attr.prompt_ids(hm, PROMPT)[0])
    q = fm.n_pos - 1
    for layer, head in ((1, 2), (2, 0)):
        row = fm.layers[layer].pattern[head, q, : q + 1]
        seen = (row > 0).nonzero().flatten().tolist()  # Gemma's sliding window masks the oldest keys
        res = [qk_attribution(fm, layer, head, q, k, top=None) for k in seen]
        scores = torch.tensor([r.score for r in res])
        torch.testing.assert_close(torch.softmax(scores, 0), row[seen], atol=1e-4, rtol=1e-3)
        for r in res:
            assert sum(v for _, v in r.query) == pytest.approx(r.score, abs=1e-4, rel=1e-4)
            assert sum(v for _, v in r.key) == pytest.approx(r.score, abs=1e-4, rel=1e-4)
            assert len(r.query) > layer + 3  # embedding, one error per layer, rest, bias — and features
        best = qk_attribution(fm, layer, head, q, top=3)
        assert best.key_pos == int(fm.layers[layer].pattern[head, q].argmax()) and len(best.query) == 5
