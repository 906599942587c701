"""Transcoders: the mlp_in/mlp_out hookpoints, replace_mlps, the transcoder classes, their formats and training."""

from __future__ import annotations

import torch

from saescope.models import HookedModel


def _ids(hm: HookedModel, n: int = 2, t: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(hm.tokenizer), (n, t), generator=g)
    ids[:, 0] = 2
    return ids


def _norm_before_mlp(hm: HookedModel, layer: int) -> torch.nn.Module:
    name = {"gpt2": "ln_2", "gemma": "pre_feedforward_layernorm", "llama": "post_attention_layernorm"}[hm.arch]
    return getattr(hm.layers[layer], name)


def test_mlp_in_and_out_read_exactly_what_the_mlp_reads_and_writes(tiny):
    """mlp_in.L = the pre-MLP norm of resid_pre + attn_out; mlp_out.L = a manual forward of the MLP module (and
    Gemma's post-feedforward norm) on it; the block decomposes into them."""
    ids = _ids(tiny)
    hps = [f"{k}.{l}" for l in range(tiny.n_layers) for k in ("resid_pre", "attn_out", "mlp_in", "mlp_out",
                                                                "resid_post")]
    c = tiny.run_with_cache(ids, None, hps, stop_early=False)
    for l in range(tiny.n_layers):
        mid = c[f"resid_pre.{l}"] + c[f"attn_out.{l}"]
        with torch.no_grad():
            torch.testing.assert_close(c[f"mlp_in.{l}"], _norm_before_mlp(tiny, l)(mid))
            torch.testing.assert_close(c[f"mlp_out.{l}"], tiny.mlp_forward(l, c[f"mlp_in.{l}"]))
        torch.testing.assert_close(mid + c[f"mlp_out.{l}"], c[f"resid_post.{l}"])
    assert tiny.width("mlp_in.1") == tiny.d_model


def test_replace_mlps_with_the_mlp_itself_keeps_the_logits(tiny):
    ids = _ids(tiny)
    with torch.no_grad():
        clean = tiny.model(ids).logits
        seen = []

        def oracle(layer, x_in, out):
            seen.append(layer)
            return tiny.mlp_forward(layer, x_in)

        with tiny.replace_mlps(oracle):
            same = tiny.model(ids).logits
        with tiny.replace_mlps(lambda layer, x_in, out: torch.zeros_like(out), layers=[1]):
            ablated = tiny.model(ids).logits
        after = tiny.model(ids).logits
    assert seen == list(range(tiny.n_layers))  # in order, once each
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(ablated, clean, atol=1e-4)
    assert torch.equal(after, clean)  # hooks removed


def test_patching_mlp_in_changes_what_the_mlp_writes(tiny):
    ids = _ids(tiny)
    with tiny.patch("mlp_in.1", lambda x: 2 * x):
        c = tiny.run_with_cache(ids, None, ["mlp_in.1", "mlp_out.1"])
    clean = tiny.run_with_cache(ids, None, ["mlp_in.1"])["mlp_in.1"]
    with torch.no_grad():
        torch.testing.assert_close(c["mlp_out.1"], tiny.mlp_forward(1, 2 * clean))
