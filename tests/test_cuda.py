"""CPU-vs-CUDA parity (issue 19): the checks the suite trusts on CPU, run on a GPU against the CPU result.

Skipped with a reason where `torch.cuda.is_available()` is false. `SAESCOPE_TEST_DEVICE=cpu` runs them against a
second CPU copy instead, which checks the tests themselves on a machine without a GPU (it proves nothing about CUDA).
Not yet run on a GPU: no GPU was lent to the session that wrote them.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_model

DEVICE = os.environ.get("SAESCOPE_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is false)")]

ARCHS = ["topk", "batchtopk", "matryoshka", "jumprelu", "standard"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("encoder_dtype", ["float32", "bfloat16"])
def test_training_steps_on_the_device_equal_cpu(arch, encoder_dtype):
    """Same initialisation and batches: three optimizer steps (sparse kernels forward and backward, fused Adam on
    the contiguous aliases, decoder renormalisation) give the CPU weights within float tolerance."""
    from saescope.train.config import TrainerConfig
    from saescope.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(256, 32, generator=g) for _ in range(3)]
    out = {}
    for dev in ("cpu", DEVICE):
        cfg = TrainerConfig(arch=arch, k=4, width=64, batch_size=256, encoder_dtype=encoder_dtype,
                            k_anneal_frac=0.0, resample_tokens=0)
        tr = Trainer(cfg, 32, 3, device=dev)
        stats = [tr.train_step(x) for x in xs]
        out[dev] = ({n: p.detach().float().cpu() for n, p in tr.sae.named_parameters()}, stats)
    tol = dict(rtol=2e-2, atol=2e-3) if encoder_dtype == "bfloat16" else dict(rtol=1e-3, atol=1e-4)
    for n, p in out["cpu"][0].items():
        torch.testing.assert_close(out[DEVICE][0][n], p, **tol, msg=f"{arch} {n}")
    assert out[DEVICE][1][-1]["loss"] == pytest.approx(out["cpu"][1][-1]["loss"], rel=tol["rtol"], abs=tol["atol"])


@pytest.mark.parametrize("model_arch", ["gpt2", "gemma", "llama"])
def test_capture_of_every_hookpoint_on_the_device_equals_cpu(model_arch):
    hm = make_model(model_arch)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (3, 12), generator=g)
    ids[:, 0] = hm.tokenizer.bos_token_id
    hps = hm.select("resid_pre.*,resid_post.*,attn_out.*,mlp_out.*,mlp_post_act.*,attn_pattern.1,attn_value.1")
    cpu = hm.run_with_cache(ids, None, hps, stop_early=False)
    hm.model.to(DEVICE)
    dev = hm.run_with_cache(ids.to(DEVICE), None, hps, stop_early=False)
    for h in hps:
        assert dev[h].device.type == torch.device(DEVICE).type, h
        torch.testing.assert_close(dev[h].float().cpu(), cpu[h].float(), rtol=1e-3, atol=1e-4, msg=h)


@pytest.mark.parametrize("model_arch", ["gpt2", "gemma"])
def test_spliced_metrics_on_the_device_equal_cpu(model_arch):
    from saescope.sae import SAEConfig, sae_class
    from saescope.train.evaluate import spliced_metrics

    hm = make_model(model_arch)
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 64, k=4))
    g = torch.Generator().manual_seed(2)
    ctx = torch.randint(3, 200, (4, 16), generator=g)
    ctx[:, 0] = hm.tokenizer.bos_token_id
    cpu = spliced_metrics(hm, sae, "resid_post.1", ctx)
    hm.model.to(DEVICE)
    dev = spliced_metrics(hm, sae, "resid_post.1", ctx)
    for k, v in cpu.items():
        assert dev[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k


def test_collation_on_the_device_gives_the_cpu_records(text_corpus, tmp_path):
    """MLP neurons, heads by token pair, latents by token and an attention SAE's latents by token pair."""
    import json

    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig
    from saescope.records import read_unit
    from saescope.sae import SAEConfig, sae_class

    hm = make_model("gemma")
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 16, k=3, metadata={"hook_name": "attn_out.1"}))
    sae.save(tmp_path / "sae")
    manifests = {}
    for dev in ("cpu", DEVICE):
        hm.model.to(dev)
        manifests[dev] = collate(CollateConfig(
            out=str(tmp_path / dev), data=CorpusConfig(str(text_corpus)), layers="1", sae=str(tmp_path / "sae"),
            collate=CollateOptions(excerpt_len=8, max_tokens=8 * 30, sizes=SlotSizes(top_k=20, n_random=15, pool=24))),
            hm)
    assert [d["path"] for d in manifests["cpu"]["datasets"]] == [d["path"] for d in manifests[DEVICE]["datasets"]]
    for d in manifests["cpu"]["datasets"]:
        for u in (0, 1):
            a = read_unit(tmp_path / "cpu" / hm.name / d["path"], u)
            b = read_unit(tmp_path / DEVICE / hm.name / d["path"], u)
            assert [r.tokens for r in a.most_positive_activation_records] == \
                   [r.tokens for r in b.most_positive_activation_records], d["path"]
            for ra, rb in zip(a.most_positive_activation_records, b.most_positive_activation_records):
                torch.testing.assert_close(torch.tensor(rb.activations), torch.tensor(ra.activations),
                                           rtol=1e-3, atol=1e-4, msg=d["path"])
    assert json.loads((tmp_path / DEVICE / hm.name / "manifest.json").read_text())["tokens"] == 240
