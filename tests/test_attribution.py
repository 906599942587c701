"""Attention latents by token pair: the fast attribution equals A · ∂pre/∂A from autograd, on GPT-2, Gemma 3
(post-attention norm) and Llama (grouped-query attention)."""

from __future__ import annotations

import pytest
import torch

from saescope.collate.pair_attribution import attention_writes, latent_pair_attribution
from saescope.sae import SAEConfig, sae_class


def _setup(hm, T=10, B=3, F=48, k=6):
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (B, T))
    ids[:, 0] = hm.tokenizer.bos_token_id
    layer = 1
    hps = [f"attn_pattern.{layer}", f"attn_value.{layer}", f"attn_out.{layer}"]
    cache = hm.run_with_cache(ids, None, hps)
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, F, k=k))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return layer, cache, sae


def test_attention_writes_reproduce_the_model(tiny):
    layer, cache, _ = _setup(tiny)
    aw = attention_writes(tiny, layer, cache[f"attn_pattern.{layer}"], cache[f"attn_value.{layer}"])
    torch.testing.assert_close(aw.out, cache[f"attn_out.{layer}"].float(), rtol=1e-4, atol=1e-5)
    assert (aw.norm_scale is not None) == (tiny.arch == "gemma")


def test_pair_attribution_equals_autograd(tiny):
    layer, cache, sae = _setup(tiny)
    aw = attention_writes(tiny, layer, cache[f"attn_pattern.{layer}"], cache[f"attn_value.{layer}"])
    fast = latent_pair_attribution(sae, aw)
    assert fast.values.shape[0] == int((sae.encode(aw.out.reshape(-1, tiny.d_model)) != 0).sum()) > 0
    # naive: A as a leaf, the attention output recomputed from it, one backward pass per firing (b, t, latent)
    A = aw.pattern.clone().requires_grad_(True)
    z = torch.einsum("bhts,bhsd->btd", A, aw.writes)
    bias = tiny.attn_out_bias(layer)
    if bias is not None:
        z = z + bias.detach()
    norm = tiny.post_attention_norm(layer)
    x = z if norm is None else norm(z)
    pre = sae.pre_acts(x)  # [B, T, F]
    T = A.shape[-1]
    for n in range(0, fast.values.shape[0], 7):  # a spread of the firing entries
        b, t, i = int(fast.b[n]), int(fast.t[n]), int(fast.latent[n])
        (g,) = torch.autograd.grad(pre[b, t, i], A, retain_graph=True)
        ref = (A * g)[b, :, t, :].sum(0)  # [s], summed over heads
        torch.testing.assert_close(fast.values[n], ref.detach(), rtol=1e-4, atol=1e-6)
        assert torch.all(fast.values[n, t + 1:] == 0)  # causal: no key after the query
    # a latent that does not fire has no entry (its gate passes no gradient)
    f = sae.encode(aw.out.reshape(-1, tiny.d_model)).reshape(A.shape[0], T, -1)
    assert bool((f[fast.b, fast.t, fast.latent] != 0).all())


def test_attention_latents_by_token_pair_records_match_brute_force(tmp_path, text_corpus):
    """Collating an attn_out SAE writes it by token and by token pair; the pair records rank excerpts by their
    largest pair attribution and hold exactly the brute-force dense vectors; moments over all pairs are exact."""
    import itertools

    from conftest import make_model

    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
    from saescope.records import read_unit
    from saescope.units import tril_flatten

    hm = make_model("gemma")
    T, N, F = 8, 40, 24
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, F, k=3, metadata={"hook_name": "attn_out.1"}))
    sae.save(tmp_path / "attn_sae")
    cfg = CollateConfig(out=str(tmp_path / "col"), data=CorpusConfig(str(text_corpus)), sae=str(tmp_path / "attn_sae"),
                        collate=CollateOptions(units="heads", excerpt_len=T, max_tokens=T * N, batch_size=6,
                                               sizes=SlotSizes(top_k=20, n_random=15, pool=24)))
    manifest = collate(cfg, hm)
    paths = {d["path"]: d for d in manifest["datasets"]}
    pair_ds = paths["sae_latents/attn_sae-by-token-pair/1"]
    assert pair_ds["by_token_pair"] and "sae_latents/attn_sae/1" in paths
    # brute force: dense [N, F, T(T+1)/2] from per-entry attributions placed into [T, T] matrices
    ctxs = list(itertools.islice(iter_contexts(hm.tokenizer, iter_texts(str(text_corpus)), T + 1), N))
    ids = torch.tensor(ctxs)
    cache = hm.run_with_cache(ids, None, ["attn_pattern.1", "attn_value.1"])
    pa = latent_pair_attribution(sae, attention_writes(hm, 1, cache["attn_pattern.1"], cache["attn_value.1"]))
    full = torch.zeros(N, F, T + 1, T + 1)
    for n in range(pa.values.shape[0]):
        full[pa.b[n], pa.latent[n], pa.t[n]] = pa.values[n]
    dense = tril_flatten(full[:, :, 1:, 1:])  # [N, F, L]
    root = tmp_path / "col" / hm.name / "sae_latents" / "attn_sae-by-token-pair"
    for u in range(F):
        rec = read_unit(root / "1", u)
        mx = dense[:, u].amax(1)  # [N] excerpt maxima
        top = rec.most_positive_activation_records
        want = sorted(mx.tolist(), reverse=True)[: len(top)]
        assert [max(r.activations) for r in top] == pytest.approx(want, rel=1e-4, abs=1e-6)
        best = int(torch.argmax(mx))
        assert top[0].activations == pytest.approx(dense[best, u].tolist(), rel=1e-4, abs=1e-6)
        assert rec.mean == pytest.approx(float(dense[:, u].double().mean()), rel=1e-4, abs=1e-9)
        assert len(rec.random_sample) >= 15
