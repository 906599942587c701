"""The explore functions called directly (the viewer's routes only parse, call and serialise them)."""

from __future__ import annotations

import pytest
import torch

from saescope.errors import NotFoundError, SaescopeError
from saescope.explore import (
    DEBUG_MAX_TOKENS,
    TableQuery,
    debug_request,
    latent_neighbours,
    probe,
    search_source,
    steer,
    unit_lens,
    unit_table,
)
from saescope.sae import SAEConfig, sae_class
from saescope.units import UnitSet, mlp_group

ROWS = [
    {"index": 0, "max_activation": 2.0, "density": 0.5, "score": 0.1, "explanation": "cats", "top_token": " cat"},
    {"index": 1, "max_activation": 0.0, "density": 0.0, "score": None, "explanation": None, "top_token": None},
    {"index": 2, "max_activation": 5.0, "density": 0.01, "score": 0.7, "explanation": "Dogs", "top_token": " dog"},
    {"index": 3, "max_activation": 1.0, "density": 0.2, "score": 0.7, "explanation": "numbers", "top_token": "7"},
]
SCORES = {3: {"scores": {"constant_prediction": True}}}


def indices(**query) -> list[int]:
    return [r["index"] for r in unit_table(ROWS, SCORES, TableQuery(**query))["units"]]


def test_unit_table_filters_sorts_and_pages_by_hand():
    assert indices() == [0, 1, 2, 3]
    assert indices(sort="max_activation", desc=True) == [2, 0, 3, 1]
    # units without a score come last in either order; ties keep index order
    assert indices(sort="score") == [0, 2, 3, 1] and indices(sort="score", desc=True) == [2, 3, 0, 1]
    assert indices(hide_dead=True) == [0, 2, 3] and indices(hide_constant=True) == [0, 1, 2]
    assert indices(min_density=0.2) == [0, 3] and indices(min_score=0.5) == [2, 3]
    assert indices(q="DOG") == [2] and indices(q="7") == [3]  # explanation or top token, any case
    page = unit_table(ROWS, SCORES, TableQuery(sort="index", offset=1, limit=2))
    assert page["total"] == 4 and [r["index"] for r in page["units"]] == [1, 2] and page["offset"] == 1
    assert [r["constant"] for r in page["units"]] == [False, False] and indices(limit=0) == [0]  # limit ≥ 1
    with pytest.raises(SaescopeError, match="cannot sort by 'top_token'"):
        unit_table(ROWS, SCORES, TableQuery(sort="top_token"))


def test_probe_gives_the_neurons_own_activations_and_normalises_by_the_record(tiny_gpt2):
    hm = tiny_gpt2
    group = mlp_group(hm, 1)
    seen = {}
    handle = hm.down_proj(1).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    try:  # a plain forward over BOS + the text: the neuron's input to the down projection
        ids = hm.tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hm.model(torch.tensor([[hm.tokenizer.bos_token_id, *ids]]))
    finally:
        handle.remove()
    want = seen["x"][0, 1:, 7]  # [T], BOS left out
    mx = 2 * float(want.abs().max())
    record = {"most_positive_activation_records": [{"tokens": ["a"], "activations": [0.0, mx]}]}
    got = probe(hm, group, 7, "the cat sat", record)
    assert len(got["tokens"]) == len(ids) and not got["by_token_pair"]
    torch.testing.assert_close(torch.tensor(got["activations"]), want, rtol=1e-5, atol=1e-6)
    assert got["max_activation"] == pytest.approx(mx)
    assert got["normalized"] == pytest.approx([max(v / mx, 0.0) for v in want.tolist()], abs=1e-6)
    with pytest.raises(NotFoundError):
        probe(hm, group, hm.d_mlp, "the cat", record)
    with pytest.raises(SaescopeError, match="empty prompt"):
        probe(hm, group, 7, "  ", record)


def tiny_sae(hm, d_sae=12):
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, d_sae, k=3, metadata={"hook_name": "resid_post.1"}))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn_like(sae.W_dec))
    return sae


def test_lens_of_a_unit_that_never_fired_is_the_unscaled_lens(tiny_gpt2):
    from saescope.models.lens import logit_lens

    hm = tiny_gpt2
    sae = tiny_sae(hm)
    target = UnitSet("sae_latents", 1, "s", sae, "resid_post.1").write_direction(hm, 4)
    got = unit_lens(hm, target, {"most_positive_activation_records": []}, k=3)
    want = logit_lens(hm, sae.W_dec[4].detach())
    assert [t["logit"] for t in got["top"]] == pytest.approx(want.topk(3).values.tolist(), rel=1e-5)
    assert [t["logit"] for t in got["bottom"]] == pytest.approx((-want).topk(3).values.neg().tolist(), rel=1e-5)
    assert got["activation"] == 0.0 and got["norm_scale"] is None and got["units"].startswith("logits per unit")
    # fired: the same ranking, every logit scaled by act / the norms' median scale on its top excerpts
    rec = {"most_positive_activation_records": [{"tokens": ["the", " cat"], "activations": [0.0, 3.0]}]}
    fired = unit_lens(hm, target, rec, k=3)
    factor = 3.0 / fired["norm_scale"]
    assert [t["token"] for t in fired["top"]] == [t["token"] for t in got["top"]]
    assert [t["logit"] for t in fired["top"]] == pytest.approx([t["logit"] * factor for t in got["top"]], rel=1e-4)


def test_neighbours_match_a_naive_cosine_loop(tiny_gpt2):
    sae = tiny_sae(tiny_gpt2)
    W = sae.W_dec.detach()
    cos = {j: float(W[j] @ W[2] / (W[j].norm() * W[2].norm())) for j in range(W.shape[0]) if j != 2}
    best = sorted(cos, key=cos.get, reverse=True)[:4]
    out = latent_neighbours(sae, 2, 4, {best[0]: {"explanation": "x"}})
    assert [r["index"] for r in out["decoder"]] == best and out["coactive"] == []
    assert [r["cosine"] for r in out["decoder"]] == pytest.approx([round(cos[j], 4) for j in best])
    assert out["decoder"][0]["explanation"] == "x" and out["decoder"][1]["explanation"] is None


def test_steering_at_strength_zero_changes_nothing_and_a_strong_push_does(tiny_gpt2):
    hm = tiny_gpt2
    target = UnitSet("sae_latents", 1, "s", tiny_sae(hm), "resid_post.1").write_direction(hm, 0)
    zero = steer(hm, target, "the cat sat", 0.0, 6)
    assert zero["steered"] == zero["unsteered"] and len(zero["unsteered"]) == 6
    strong = steer(hm, target, "the cat sat", 500.0, 6)
    assert strong["unsteered"] == zero["unsteered"] and strong["steered"] != strong["unsteered"]


def test_search_source_reads_the_summary_rows(tiny_gpt2):
    group = mlp_group(tiny_gpt2, 1)
    src = search_source("mlp_neurons/1", group, ROWS + [{"index": 10_000, "max_activation": 9.0}], SCORES | {
        0: {"explanation": "cats"}})
    assert src.max_act.shape == (tiny_gpt2.d_mlp,) and src.max_act[:4].tolist() == [2.0, 0.0, 5.0, 1.0]
    assert src.density[2] == pytest.approx(0.01) and float(src.max_act[4:].abs().sum()) == 0.0
    assert src.explanations == {0: "cats"}


def test_debug_request_refuses_a_long_prompt_before_running(tiny_gpt2):
    class NoNotes:
        def means(self, ablate):
            raise AssertionError("the model ran")

    with pytest.raises(SaescopeError, match=f"at most {DEBUG_MAX_TOKENS}"):
        debug_request(tiny_gpt2, "the cat " * DEBUG_MAX_TOKENS, " cat", {}, {}, NoNotes())
    with pytest.raises(SaescopeError, match="by: act_grad or direct_effect"):
        debug_request(tiny_gpt2, "the cat", " cat", {}, {}, NoNotes(), by="score")
