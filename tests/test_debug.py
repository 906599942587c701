"""The debugger on tiny GPT-2, Gemma 3 and Llama: direct effects add up, act × grad is the gradient, ablations equal
hand-patched re-runs, spliced SAEs change nothing and their attributions add up, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from saescope.debug import debug
from saescope.debug.attribute import final_direction
from saescope.debug.trace import logit_behaviour, prompt_ids, run_trace, single_token
from saescope.errors import SaescopeError
from saescope.sae import SAEConfig, sae_class

PROMPT = "the cat sat on the mat and the dog"


def _targets(hm):
    return " cat", " dog"


def test_direct_effects_sum_to_the_behaviour_per_layer_and_in_total(tiny):
    hm = tiny
    res = debug(hm, PROMPT, *_targets(hm))
    nodes = res.nodes
    assert nodes.total_direct == pytest.approx(res.behaviour, rel=1e-4, abs=1e-4)
    assert float(nodes.direct_effect.double().sum()) == pytest.approx(res.behaviour, rel=1e-4, abs=1e-4)
    # per layer: heads (+ b_O) and neurons (+ b_down) sum to what the layer writes, projected the same way
    tgt, dis = single_token(hm, " cat", "t")[0], single_token(hm, " dog", "d")[0]
    ids = prompt_ids(hm, PROMPT)
    tr = run_trace(hm, ids, logit_behaviour(tgt, dis), {}, backward=False)
    u, _ = final_direction(hm, tr, tgt, dis)
    cache = hm.run_with_cache(ids, None, [f"{k}.{L}" for L in range(hm.n_layers) for k in ("attn_out", "mlp_out")],
                              stop_early=False)
    for L in range(hm.n_layers):
        for kind, code, bias in (("attn_out", 1, hm.attn_out_bias(L)), ("mlp_out", 2, hm._down_proj(L).bias)):
            rows = (nodes.kind == code) & (nodes.layer == L)
            layer_total = float(cache[f"{kind}.{L}"][0, -1].float() @ u)
            # for GPT-2/Llama the bias projects through u directly; Gemma has no biases there
            b = float(bias.detach().float() @ u) if bias is not None else 0.0
            assert float(nodes.direct_effect[rows].sum()) + b == pytest.approx(layer_total, rel=1e-3, abs=1e-4)


def test_act_grad_is_the_gradient_and_ablation_matches_a_patched_hook(tiny):
    hm = tiny
    res = debug(hm, PROMPT, *_targets(hm))
    top = res.nodes.top(1, kinds=("mlp",))[0]
    # central difference through the set-value intervention: (B(a + ε) − B(a − ε)) / 2ε · a = act × grad
    eps = 1e-3
    up = debug(hm, PROMPT, *_targets(hm), ablate={top.name: top.activation + eps}).ablated_behaviour
    down = debug(hm, PROMPT, *_targets(hm), ablate={top.name: top.activation - eps}).ablated_behaviour
    grad = (up - down) / (2 * eps)
    assert top.act_grad == pytest.approx(top.activation * grad, rel=2e-2, abs=1e-4)
    # zero-ablation == a re-run with a hand-written hook on the same neuron
    zero = debug(hm, PROMPT, *_targets(hm), ablate={top.name: "zero"})
    ids = prompt_ids(hm, PROMPT)

    def patch(x):
        x = x.clone()
        x[:, top.position, top.index] = 0.0
        return x
    tgt, dis = single_token(hm, " cat", "t")[0], single_token(hm, " dog", "d")[0]
    with torch.no_grad(), hm.patch(f"mlp_post_act.{top.layer}", patch):
        logits = hm.model(input_ids=ids).logits[0, -1].float()
    assert zero.ablated_behaviour == pytest.approx(float(logits[tgt] - logits[dis]), rel=1e-5, abs=1e-5)
    # setting a node to its own value changes nothing
    same = debug(hm, PROMPT, *_targets(hm), ablate={top.name: top.activation})
    assert same.ablated_behaviour == pytest.approx(res.behaviour, abs=1e-5)
    head = res.nodes.top(1, kinds=("head",))[0]
    assert 0 <= head.top_key <= head.position


def test_spliced_sae_changes_nothing_and_its_attributions_add_up(tiny):
    hm = tiny
    L = 1
    hp = f"resid_post.{L}"
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 64, k=8))
    plain = debug(hm, PROMPT, *_targets(hm))
    res = debug(hm, PROMPT, *_targets(hm), saes={hp: sae})
    assert res.behaviour == pytest.approx(plain.behaviour, abs=1e-5)
    tgt, dis = single_token(hm, " cat", "t")[0], single_token(hm, " dog", "d")[0]
    tr = run_trace(hm, prompt_ids(hm, PROMPT), logit_behaviour(tgt, dis), {hp: sae})
    x, g = tr.spliced[hp][0].detach().float(), tr.spliced[hp].grad[0].float()
    n = res.nodes
    latents = float(n.act_grad[n.kind == 3].double().sum())
    errors = float(n.act_grad[n.kind == 4].double().sum())
    spliced = (tr.ids[0] != hm.tokenizer.bos_token_id).float()  # BOS is left untouched
    b_dec = float(((sae.b_dec.detach().float() @ g.T) * spliced).sum())
    assert latents + errors + b_dec == pytest.approx(float(((x * g).sum(-1) * spliced).sum()), rel=1e-4, abs=1e-5)
    assert not bool((n.kind == 3)[n.position == 0].any())  # no latent at BOS
    # tracing a latent upstream: its pre-activation becomes the behaviour
    lat = res.nodes.top(1, kinds=("latent",))[0]
    up = debug(hm, PROMPT, *_targets(hm), saes={hp: sae}, trace=lat.name)
    with torch.no_grad():
        want = float(sae.pre_acts(tr.sae_inputs[hp][0, lat.position].float())[lat.index])
    assert up.behaviour == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert all(node.layer <= L for node in up.nodes.top(10, kinds=("mlp", "head")))


def test_bad_input_gives_one_line_errors(tiny_gpt2):
    hm = tiny_gpt2
    with pytest.raises(SaescopeError, match="--prompt is empty"):
        debug(hm, "  ", " cat")
    with pytest.raises(SaescopeError, match="more than the model's context"):
        debug(hm, "the cat " * 200, " cat")
    with pytest.raises(SaescopeError, match="expected mlp.L.i@t"):
        debug(hm, PROMPT, " cat", ablate={"neuron 5": "zero"})
    with pytest.raises(SaescopeError, match="out of range"):
        debug(hm, PROMPT, " cat", ablate={"mlp.99.0@0": "zero"})
    with pytest.raises(SaescopeError, match="no SAE at resid_post.1"):
        debug(hm, PROMPT, " cat", ablate={"latent.resid_post.1.3@2": "zero"})
    res = debug(hm, PROMPT, " catapult")  # splits: the pieces are reported, the first one explained
    assert len(res.target_tokens) > 1 and res.target_tokens[0] == hm.tokenizer.decode(
        [hm.tokenizer(" catapult", add_special_tokens=False)["input_ids"][0]])


def test_debug_cli_ranks_ablates_and_reports_json(tiny_dir, capsys):
    import json

    from saescope.cli import main

    args = ["debug", "--model", str(tiny_dir), "--device", "cpu", "--prompt", PROMPT, "--target", " cat",
            "--distractor", " dog", "--top", "5"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["nodes"]) == 5 and out["ablated_behaviour"] is None
    top = out["nodes"][0]["name"]
    assert main([*args, "--ablate", f"{top}=zero"]) == 0
    text = capsys.readouterr().out
    assert f"after ablating {top}=zero" in text and "behaviour" in text
    assert main([*args, "--ablate", "mlp.0.0@0=bogus"]) == 2
    assert "use zero, mean or a number" in capsys.readouterr().err


def test_head_token_pairs_sum_to_the_heads_act_grad(tiny):
    """Σ_s A[t, s]·∂B/∂A[t, s] over keys = the head's act × grad at query t (z_h[t]·∂B/∂z_h[t])."""
    hm = tiny
    res = debug(hm, PROMPT, *_targets(hm), pairs_for="head.1.2")
    attr = torch.tensor(res.pairs["attribution"])  # [T, T]
    T = attr.shape[0]
    assert torch.all(attr.triu(1) == 0)  # causal
    n = res.nodes
    rows = (n.kind == 1) & (n.layer == 1) & (n.index == 2)
    ag = torch.zeros(T)
    ag[n.position[rows]] = n.act_grad[rows]
    torch.testing.assert_close(attr.sum(1), ag, rtol=1e-3, atol=1e-5)
    with pytest.raises(SaescopeError, match="expected head.L.h"):
        debug(hm, PROMPT, " cat", pairs_for="mlp.1.2")


def test_head_traced_through_its_query_key_and_value_sides(tiny):
    """The three sides' act × grad add up to the undivided trace for every upstream node; the query side reads only
    the query position, so the layer below's neurons elsewhere get exactly zero there (not on the key side)."""
    hm = tiny
    T = prompt_ids(hm, PROMPT).shape[1]
    L, h, t = hm.n_layers - 1, 1, T - 2
    name = f"head.{L}.{h}@{t}"
    whole = debug(hm, PROMPT, " cat", trace=name)
    sides = {s: debug(hm, PROMPT, " cat", trace=f"{name}:{s}") for s in "qkv"}
    for r in sides.values():  # the traced activation itself does not depend on the side
        assert r.behaviour == pytest.approx(whole.behaviour, rel=1e-6)
    n = whole.nodes
    up = n.layer < L  # embeddings (layer −1) and every node of the earlier layers
    total = sum(sides[s].nodes.act_grad[up].double() for s in "qkv")
    assert float(n.act_grad[up].abs().max()) > 0
    torch.testing.assert_close(total, n.act_grad[up].double(), rtol=1e-4, atol=1e-5)
    below = (n.kind == 2) & (n.layer == L - 1)  # the MLP neurons of the layer below
    q, k = sides["q"].nodes.act_grad, sides["k"].nodes.act_grad
    assert torch.all(q[below & (n.position != t)] == 0)
    assert float(q[below & (n.position == t)].abs().max()) > 0
    assert float(k[below & (n.position < t)].abs().max()) > 0
    assert torch.all(q[up & (n.position > t)] == 0) and torch.all(k[up & (n.position > t)] == 0)  # causal
    with pytest.raises(SaescopeError, match="for heads only"):
        debug(hm, PROMPT, " cat", trace="mlp.0.1@2:q")
    with pytest.raises(SaescopeError, match="for heads only"):
        debug(hm, PROMPT, " cat", trace=f"{name}:x")
