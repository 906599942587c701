"""Interventions on transcoder features (a real forward with patched latents) and the write point of transcoders on
Gemma (after or before its post-MLP norm)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from test_graph_attribute import PROMPT, make_transcoders, naive_row

from saescope.graph import attribute as attr
from saescope.graph.intervene import Intervention, intervene, patched_logits
from saescope.graph.replacement import FrozenModel


def strongest(fm: FrozenModel, layer: int) -> tuple[int, int]:
    """(position, index) of the largest activation of a layer."""
    a = fm.acts[layer]
    flat = int(a.argmax())
    return divmod(flat, a.shape[1])


def naive_ablation(hm, tc, ids, zeroed: list[tuple[int, int, int]]) -> torch.Tensor:
    """Last-position logits with the features (layer, pos, index) zeroed by hand: each layer's latents encoded from
    this run's MLP input, and every zeroed latent's decoder rows subtracted from what its layer(s) write."""
    live: dict[int, torch.Tensor] = {}
    mods, handles = {}, []
    for l in range(hm.n_layers):
        post = hm.post_mlp_norm(l)
        mods[l] = hm.layers[l].mlp if post is None or tc.write_point == "before_norm" else post

    def grab(layer, x):
        live[layer] = tc.encode(layer, x[0].float())

    def swap(layer, out):
        y = out.clone()
        for l, pos, idx in zeroed:
            j = layer - l
            if 0 <= j < tc.W_dec[l].shape[1]:
                y[0, pos] -= live[l][pos, idx] * tc.W_dec[l][idx, j]
        return y

    for l in range(hm.n_layers):
        handles.append(hm.layers[l].mlp.register_forward_pre_hook(lambda m, a, l=l: grab(l, a[0])))
        handles.append(mods[l].register_forward_hook(lambda m, a, out, l=l: swap(l, out)))
    try:
        with torch.no_grad():
            return hm.model(input_ids=ids[None]).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_scale_one_changes_nothing_and_ablation_equals_zeroing_by_hand(tiny, kind):
    tc = make_transcoders(tiny, kind)
    ids = attr.prompt_ids(tiny, PROMPT)[0]
    fm = FrozenModel(tiny, tc, ids)
    p0, i0 = strongest(fm, 0)
    p1, i1 = strongest(fm, 1)
    with torch.no_grad():
        clean = tiny.model(input_ids=ids[None]).logits[0, -1].float()
    same, acts = patched_logits(tiny, tc, ids, [Intervention(0, p0, i0, 1.0), Intervention(1, p1, i1, 1.0)])
    assert torch.equal(same, clean)
    assert acts[f"0_{i0}_{p0}"][0] == pytest.approx(float(fm.acts[0][p0, i0]), rel=1e-5)
    # a supernode (two features, the second downstream of the first) ablated: the downstream one is re-encoded live
    ablated, acts = patched_logits(tiny, tc, ids, [Intervention(0, p0, i0, 0.0), Intervention(1, p1, i1, 0.0)])
    naive = naive_ablation(tiny, tc, ids, [(0, p0, i0), (1, p1, i1)])
    torch.testing.assert_close(ablated, naive, atol=1e-5, rtol=1e-5)
    assert (ablated - clean).abs().max() > 1e-4  # the ablation did something
    assert acts[f"0_{i0}_{p0}"][1] == 0.0
    # a feature tripled: the distribution moves; the table lists the top tokens before and after
    res = intervene(tiny, tc, ids, [Intervention(0, p0, i0, 3.0)], top=5)
    assert res.kl > 0 and len(res.tokens) >= 5 and res.before[0] == max(res.before)
    assert sum(res.before) <= 1 + 1e-6 and all(0 <= q <= 1 for q in res.after)


@pytest.mark.parametrize("where", ["after_norm", "before_norm"])
def test_gemma_write_point(where):
    """Transcoders writing before Gemma's post-MLP norm: errors are taken against the MLP module's output, the frozen
    norm carries the writes into the stream, the replacement model still reproduces the logits, every edge is still
    the autograd derivative, and interventions add at that point."""
    hm = make_model("gemma")
    tc = make_transcoders(hm, "plt")
    tc.write_point = where
    ids = attr.prompt_ids(hm, PROMPT)[0]
    fm = FrozenModel(hm, tc, ids)
    target = fm.clean.mlp_raw if where == "before_norm" else fm.clean.mlp_out
    assert not torch.allclose(fm.clean.mlp_raw[1], fm.clean.mlp_out[1])
    recon = fm.feature_writes(fm.acts)
    for l in range(hm.n_layers):
        torch.testing.assert_close(fm.errors[l][1:] + recon[l][1:] + tc.b_dec[l], target[l][1:], atol=1e-5, rtol=1e-5)
    _, logits = fm.forward(fm.clean.embed, fm.acts, fm.errors)
    torch.testing.assert_close(logits, fm.clean.logits, atol=2e-4, rtol=1e-4)
    graph = attr.attribute(hm, tc, PROMPT, chunk=5)
    A = graph.adjacency.to_dense()
    for t in [graph.logit_start, *range(0, graph.n_features, 9)]:
        row, y, const = naive_row(fm, graph, t)
        torch.testing.assert_close(A[t], row, atol=3e-5, rtol=1e-4)
        assert float(A[t].double().sum()) + const == pytest.approx(y, abs=2e-4, rel=1e-4)
    pos, idx = strongest(fm, 1)
    got, _ = patched_logits(hm, tc, ids, [Intervention(1, pos, idx, 0.0)])
    torch.testing.assert_close(got, naive_ablation(hm, tc, ids, [(1, pos, idx)]), atol=1e-5, rtol=1e-5)


def test_write_point_follows_the_files(tiny_gpt2, tmp_path):
    """auto: saescope's sets write after the norm, Gemma Scope 2's before it, circuit-tracer's where config.yaml's
    feature_output_hook says (mlp.hook_out: before; hook_mlp_out: after); exporting keeps the point."""
    import yaml

    from saescope.errors import SaescopeError
    from saescope.graph.transcoders import from_transcoder_set, resolve_write_point
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import export_circuit_tracer, load_transcoders

    cls = transcoder_class(sae_class("jumprelu"), False)
    L, d = tiny_gpt2.n_layers, tiny_gpt2.d_model
    ts = TranscoderSet(plts={l: cls(SAEConfig(cls.architecture, d, 8, apply_b_dec_to_input=False)) for l in range(L)})
    assert from_transcoder_set(ts, L).write_point == "after_norm"
    export_circuit_tracer(ts, tmp_path / "ct")
    conf = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert conf["feature_output_hook"] == "hook_mlp_out"
    assert from_transcoder_set(load_transcoders(tmp_path / "ct"), L).write_point == "after_norm"
    conf["feature_output_hook"] = "mlp.hook_out"
    (tmp_path / "ct" / "config.yaml").write_text(yaml.safe_dump(conf))
    loaded = load_transcoders(tmp_path / "ct")
    assert from_transcoder_set(loaded, L).write_point == "before_norm"
    assert from_transcoder_set(loaded, L, write_point="after_norm").write_point == "after_norm"
    assert resolve_write_point("auto", {"source": "gemma_scope_2"}) == "before_norm"
    with pytest.raises(SaescopeError, match="feature_output_hook"):
        resolve_write_point("auto", {"source": "circuit-tracer", "feature_output_hook": "blocks.0.hook_resid_post"})
    with pytest.raises(SaescopeError, match="--write_point"):
        resolve_write_point("middle", {})

