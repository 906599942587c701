"""Hookpoints agree with HF's own outputs and with each other, on GPT-2, Gemma 3 and Llama."""

from __future__ import annotations

import pytest
import torch

from saescope.errors import SaescopeError


def _ids(hm, n=2, t=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(hm.tokenizer), (n, t), generator=g)
    ids[:, 0] = 2
    return ids


def test_resid_matches_hidden_states(tiny):
    ids = _ids(tiny)
    hps = [f"resid_pre.{l}" for l in range(tiny.n_layers)] + [f"resid_post.{l}" for l in range(tiny.n_layers - 1)]
    cache = tiny.run_with_cache(ids, None, hps, stop_early=False)
    with torch.no_grad():
        hs = tiny.model(ids, output_hidden_states=True).hidden_states
    for l in range(tiny.n_layers):
        torch.testing.assert_close(cache[f"resid_pre.{l}"], hs[l])
    for l in range(tiny.n_layers - 1):  # the last hidden state has the final norm applied by HF
        torch.testing.assert_close(cache[f"resid_post.{l}"], hs[l + 1])


def test_block_decomposes_into_attn_and_mlp(tiny):
    ids = _ids(tiny)
    l = 1
    c = tiny.run_with_cache(ids, None, [f"resid_pre.{l}", f"attn_out.{l}", f"mlp_out.{l}", f"resid_post.{l}",
                                         f"mlp_post_act.{l}"])
    torch.testing.assert_close(c[f"resid_pre.{l}"] + c[f"attn_out.{l}"] + c[f"mlp_out.{l}"], c[f"resid_post.{l}"])
    assert c[f"mlp_post_act.{l}"].shape == (*ids.shape, tiny.d_mlp)
    assert tiny.width(f"mlp_post_act.{l}") == tiny.d_mlp != tiny.d_model


def test_early_stop_is_identical_and_skips_later_blocks(tiny):
    ids = _ids(tiny)
    calls = []
    h = tiny.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    early = tiny.run_with_cache(ids, None, ["resid_post.0", "mlp_post_act.0"])
    assert calls == []
    full = tiny.run_with_cache(ids, None, ["resid_post.0", "mlp_post_act.0"], stop_early=False)
    assert calls == [1]
    h.remove()
    for k in early:
        assert torch.equal(early[k], full[k])


def test_attention_pattern_is_causal_softmax(tiny):
    ids = _ids(tiny)
    pat = tiny.run_with_cache(ids, None, ["attn_pattern.1"])["attn_pattern.1"]
    B, T = ids.shape
    assert pat.shape == (B, tiny.n_heads, T, T)
    torch.testing.assert_close(pat.sum(-1), torch.ones(B, tiny.n_heads, T))
    assert torch.all(pat.triu(1) == 0)


def test_pattern_values_and_W_O_rebuild_attention_output(tiny):
    """Σ_h Σ_j A[h,i,j] v_h[j] W_O[h] (+ bias) equals the attention module's output: checks W_O, values, GQA."""
    ids = _ids(tiny)
    l = 2
    attn = tiny._attn(l)
    seen = {}
    h = attn.register_forward_hook(lambda m, a, o: seen.update(out=o[0]))  # must return None
    c = tiny.run_with_cache(ids, None, [f"attn_pattern.{l}", f"attn_value.{l}"])
    h.remove()
    A, v = c[f"attn_pattern.{l}"], c[f"attn_value.{l}"]  # [B,H,T,T], [B,T,KV,dh]
    assert v.shape == (*ids.shape, tiny.n_kv_heads, tiny.d_head)
    group = tiny.n_heads // tiny.n_kv_heads
    W_O = tiny.W_O(l)
    rebuilt = torch.zeros_like(seen["out"])
    for head in range(tiny.n_heads):
        z = A[:, head] @ v[:, :, head // group]  # [B, T, dh]
        rebuilt += z @ W_O[head]
    proj = attn.c_proj if tiny.arch == "gpt2" else attn.o_proj
    if getattr(proj, "bias", None) is not None:
        rebuilt += proj.bias
    torch.testing.assert_close(rebuilt, seen["out"], rtol=1e-4, atol=1e-5)
    # write norms: a naive per-(head, position) loop
    norms = tiny.head_write_norms(l, v)
    for head in (0, tiny.n_heads - 1):
        for j in (0, ids.shape[1] - 1):
            naive = (v[0, j, head // group] @ W_O[head]).norm()
            torch.testing.assert_close(norms[0, head, j], naive)


def test_select_globs_and_errors(tiny):
    assert tiny.select("resid_post.*") == [f"resid_post.{l}" for l in range(tiny.n_layers)]
    assert tiny.select("mlp_out.2,resid_pre.0") == ["mlp_out.2", "resid_pre.0"]
    with pytest.raises(SaescopeError, match="out of range"):
        tiny.select("resid_post.99")
    with pytest.raises(SaescopeError, match="expected <kind>"):
        tiny.select("residual.1")
    with pytest.raises(SaescopeError, match="matches nothing"):
        tiny.select("nope.*")


def test_load_model_from_directory_and_bad_specs(tiny_dir, tmp_path):
    from saescope.models import load_model

    hm = load_model(str(tiny_dir))
    assert hm.arch == "llama" and hm.n_layers == 3
    with pytest.raises(SaescopeError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(SaescopeError, match="cannot be downloaded"):
        load_model("some-org/not-a-cached-model")
    with pytest.raises(SaescopeError, match="no such .gguf"):
        load_model(str(tmp_path / "missing.gguf"))


def test_token_strings_merge_the_byte_pieces_of_one_character(tiny_gpt2):
    """A character split over byte tokens decodes to '\\ufffd' piece by piece; the pieces are merged into the first
    token of the run and the strings join back to the text (collated records and the viewer use these strings)."""
    from saescope.models.hooks import merge_byte_tokens

    hm = tiny_gpt2
    text = "caf\u00e9 \U0001F600 ok \u4e2d\u6587"
    ids = hm.tokenizer(text, add_special_tokens=False)["input_ids"]
    one_by_one = [hm.tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in t for t in one_by_one)  # the tokenizer does split these characters into byte pieces
    strs = hm.token_strings(ids)
    assert len(strs) == len(ids) and "".join(strs) == hm.tokenizer.decode(ids) and "\ufffd" not in "".join(strs)
    cache: dict[int, str] = {}
    assert hm.token_strings(ids, cache) == strs and cache  # the cached path gives the same strings
    # known answer with a stub decoder: bytes b"\xe2\x82\xac" (€) as three tokens
    table = {1: b"a", 2: b"\xe2", 3: b"\x82", 4: b"\xac", 5: b"b"}
    dec = lambda xs: b"".join(table[x] for x in xs).decode("utf-8", errors="replace")  # noqa: E731
    assert merge_byte_tokens([1, 2, 3, 4, 5], [dec([x]) for x in [1, 2, 3, 4, 5]], dec) == ["a", "\u20ac", "", "", "b"]


def test_gguf_conversion_parses_each_file_once(tmp_path):
    """Inside the conversion block every GGUFReader of one file is the same parse (transformers asks three times);
    outside it the gguf module's own reader is back."""
    import gguf
    import numpy as np

    from saescope.models.loading import _one_gguf_parse

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("x", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    real = gguf.GGUFReader
    with _one_gguf_parse():
        a, b = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert a is b and list(a.tensors[0].data) == list(range(8))
    assert gguf.GGUFReader is real and gguf.GGUFReader(path) is not a
