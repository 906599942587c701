"""Input dimensions weighted by how the later blocks read them (models/reads.py, --input_weights): the weights
from the norms' gains, their folding into the saved SAE, and training with them."""

import pytest
import torch

from saescope.models.reads import residual_read_weights
from saescope.sae import SAEConfig, sae_class


def test_read_weights_are_the_rms_gain_of_the_norms_that_read_the_residual(tiny):
    hm = tiny
    names = {"gpt2": ("ln_1", "ln_2"), "gemma": ("input_layernorm", "pre_feedforward_layernorm"),
             "llama": ("input_layernorm", "post_attention_layernorm")}[hm.arch]
    d = hm.d_model
    gains = []
    with torch.no_grad():
        for i, norm in enumerate([hm.final_norm()] + [getattr(hm.layers[b], n) for b in (1, 2) for n in names]):
            g = torch.linspace(0.5, 2.0, d) * (i + 1)
            g[3] = 0.0  # a dimension no norm reads
            norm.weight.copy_(g - 1 if hm.arch == "gemma" else g)  # Gemma's gain is 1 + weight
            gains.append(g)
        hm.layers[0].input_layernorm.weight.fill_(7.0) if hm.arch != "gpt2" else hm.layers[0].ln_1.weight.fill_(7.0)
    want = torch.stack(gains).pow(2).mean(0).sqrt()
    want = (want / want.median()).clamp_min(0.05)
    got = residual_read_weights(hm, first_block=1)  # block 0's norms (set to 7) do not read resid_post.0
    torch.testing.assert_close(got, want)
    assert got[3] == pytest.approx(0.05)


def test_a_per_dimension_scale_folds_into_the_weights():
    """An SAE trained on x ⊙ s, folded, takes raw x: same latents, and x̂ = x̂' / s."""
    torch.manual_seed(0)
    d = 8
    sae = sae_class("topk")(SAEConfig("topk", d, 32, k=4))
    s = torch.rand(d) + 0.2
    x = torch.randn(10, d)
    f_ref, x_ref = sae.encode(x * s), sae(x * s) / s
    sae.fold_input_scale(s)
    torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-6)


def test_training_with_read_weights_cuts_the_error_where_the_weight_is_large(tiny_gpt2, text_corpus, tmp_path):
    """Dimensions 0-7 made 10x more read than the rest: the weighted SAE reconstructs them better than the
    unweighted one does, at the same L0, and takes raw activations (its weights are folded)."""
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig
    from saescope.sae import load_sae
    from saescope.store import ActivationStore
    from saescope.train.config import TrainConfig, TrainerConfig
    from saescope.train.on_store import train_from_store

    hm = tiny_gpt2
    capture_corpus(CaptureConfig(data=CorpusConfig(str(text_corpus)), out=str(tmp_path / "s"),
                                 hookpoints="resid_post.0",
                                 capture=CaptureOptions(context_len=9, max_tokens=1200, shard_contexts=30)), hm)
    with torch.no_grad():
        for norm in [hm.final_norm()] + [m for b in hm.layers[1:] for m in (b.ln_1, b.ln_2)]:
            norm.weight.fill_(1.0)
            norm.weight[:8] = 10.0
    err = {}
    for mode in ("none", "read_gain"):
        tc = TrainerConfig(width=64, k=4, batch_size=32, epochs=4, buffer_rows=256, input_weights=mode)
        train_from_store(TrainConfig(trainer=tc, store=str(tmp_path / "s"), out=str(tmp_path / mode),
                                     device="cpu"), progress=False, hm=hm)
        st = ActivationStore(tmp_path / "s")
        x = st.load_shard("resid_post.0", len(st.shards) - 1)
        with torch.no_grad():
            e = (load_sae(tmp_path / mode)(x) - x).pow(2).mean(0)  # [d]
        err[mode] = (float(e[:8].sum()), float(e[8:].sum()))
    assert err["read_gain"][0] < 0.7 * err["none"][0]
    assert err["read_gain"][1] > err["none"][1]  # the price is paid where the model reads less
