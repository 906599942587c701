"""The spliced end-to-end fine-tune (train/finetune.py): it lowers the KL it optimises, touches only the SAE, and
leaves an SAE that takes raw activations."""

import pytest
import torch

from saescope.sae import SAEConfig, sae_class
from saescope.train import evaluate as E
from saescope.train.finetune import finetune_spliced


def _setup(hm, n_unique=4, repeat=10, T=12):
    torch.manual_seed(0)
    ids = torch.randint(3, len(hm.tokenizer), (n_unique, T), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = hm.tokenizer.bos_token_id
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 64, k=4))
    return ids, ids.repeat(repeat, 1), sae


def test_the_finetune_lowers_the_spliced_kl_and_leaves_the_model_alone(tiny_gpt2):
    hm = tiny_gpt2
    ids, train, sae = _setup(hm)
    before = E.spliced_metrics(hm, sae, "resid_post.1", ids)
    weights = {k: v.clone() for k, v in hm.model.state_dict().items()}
    out = finetune_spliced(hm, sae, "resid_post.1", train, scale=2.5, lr=1e-2)
    after = E.spliced_metrics(hm, sae, "resid_post.1", ids)
    assert out["steps"] == len(train) // 2 and out["kl_last"] < out["kl_first"]
    assert after["kl_div"] < 0.8 * before["kl_div"] and after["delta_ce"] < before["delta_ce"]
    assert all(torch.equal(v, weights[k]) for k, v in hm.model.state_dict().items())
    assert all(p.requires_grad for p in hm.model.parameters()) and not sae.training


def test_with_a_zero_lr_the_scale_round_trip_gives_back_the_same_sae(tiny_gpt2):
    hm = tiny_gpt2
    ids, train, sae = _setup(hm, repeat=1)
    x = torch.randn(5, hm.d_model)
    ref = sae(x)
    finetune_spliced(hm, sae, "resid_post.1", train, scale=3.7, lr=0.0)
    torch.testing.assert_close(sae(x), ref, rtol=1e-5, atol=1e-5)


def test_e2e_contexts_is_refused_for_transcoders():
    from saescope.errors import SaescopeError
    from saescope.train.config import TrainerConfig

    with pytest.raises(SaescopeError, match="--e2e_contexts"):
        TrainerConfig(kind="transcoder", e2e_contexts=8)
