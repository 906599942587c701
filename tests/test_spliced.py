"""Spliced metrics: ΔCE and KL of planted dictionaries with known answers, their standard errors against a naive
computation, and the summaries that lead with them."""

import math
import statistics

import pytest
import torch

from saescope.sae import SAEConfig, sae_class
from saescope.train import evaluate as E
from saescope.train import metrics as M


def planted(d: int, identity: bool):
    """A ReLU dictionary with 2d latents: W_enc = [I, −I], W_dec = [I; −I] reconstructs x = relu(x) − relu(−x)
    exactly (identity), or W_dec = 0, b_dec = 0 outputs zeros (zeroing)."""
    sae = sae_class("standard")(SAEConfig("standard", d, 2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.cat([eye, -eye], 0) if identity else torch.zeros(2 * d, d))
    return sae


def contexts(hm, n: int = 6, T: int = 16) -> torch.Tensor:
    ids = torch.randint(3, len(hm.tokenizer), (n, T), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = hm.tokenizer.bos_token_id
    return ids


@pytest.mark.parametrize("hookpoint", ["resid_post.1", "mlp_out.0", "attn_out.2"])
def test_an_exact_identity_dictionary_adds_no_loss(tiny_gpt2, hookpoint):
    hm = tiny_gpt2
    got = E.spliced_metrics(hm, planted(hm.d_model, identity=True), hookpoint, contexts(hm), batch_size=4)
    assert got["delta_ce"] == pytest.approx(0, abs=1e-6) and got["kl_div"] == pytest.approx(0, abs=1e-6)
    assert got["delta_ce_se"] == pytest.approx(0, abs=1e-6) and got["ce_with_sae"] == pytest.approx(got["ce_clean"])
    assert abs(got["ce_zero_ablation"] - got["ce_clean"]) > 1e-4  # the hookpoint matters, so 0 is not vacuous
    assert got["spliced_contexts"] == 6 and got["spliced_tokens"] == 6 * 15


def test_a_zeroing_dictionary_gives_the_zero_ablation_loss(tiny_gpt2):
    hm = tiny_gpt2
    ids = contexts(hm)
    got = E.spliced_metrics(hm, planted(hm.d_model, identity=False), "resid_post.1", ids, batch_size=4)
    assert got["ce_with_sae"] == pytest.approx(got["ce_zero_ablation"], rel=1e-6)
    assert got["delta_ce"] == pytest.approx(got["ce_zero_ablation"] - got["ce_clean"], rel=1e-5)
    assert got["ce_loss_recovered"] == pytest.approx(0, abs=1e-5)
    with torch.no_grad():  # naive: zero the residual stream after block 1 everywhere but at BOS
        keep = (ids == hm.tokenizer.bos_token_id)[..., None]
        with hm.patch("resid_post.1", lambda x: torch.where(keep, x, torch.zeros_like(x))):
            logits = hm.model(input_ids=ids).logits[:, :-1].flatten(0, 1)
    naive = float(torch.nn.functional.cross_entropy(logits, ids[:, 1:].flatten()))
    assert got["ce_zero_ablation"] == pytest.approx(naive, rel=1e-5)


def test_standard_error_equals_the_naive_formula():
    v = torch.tensor([0.3, -1.2, 2.5, 0.0, 0.7, 4.1])
    mean, se = M.mean_and_se(v)
    assert mean == pytest.approx(statistics.fmean(v.tolist()))
    assert se == pytest.approx(statistics.stdev(v.tolist()) / math.sqrt(6), rel=1e-12)
    assert M.mean_and_se(torch.ones(5)) == (1.0, 0.0)
    assert math.isnan(M.mean_and_se(torch.tensor([2.0]))[1])


def test_delta_ce_and_kl_errors_are_over_contexts_as_a_naive_loop_computes_them(tiny_gpt2):
    """Differential: one context at a time with cross_entropy and a hand-written KL, then mean ± stdev/√C."""
    hm = tiny_gpt2
    ids = contexts(hm, n=7, T=12)
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 48, k=3))
    got = E.spliced_metrics(hm, sae, "resid_post.0", ids, batch_size=3)
    d_ce, kl = [], []
    with torch.no_grad():
        for row in ids:
            x = row[None]
            clean = hm.model(input_ids=x).logits[0, :-1]
            keep = (x == hm.tokenizer.bos_token_id)[..., None]
            with hm.patch("resid_post.0", lambda a: torch.where(keep, a, sae(a))):
                spl = hm.model(input_ids=x).logits[0, :-1]
            tgt = row[1:]
            ce = torch.nn.functional.cross_entropy
            d_ce.append(float(ce(spl, tgt) - ce(clean, tgt)))
            p, q = clean.softmax(-1), spl.softmax(-1)
            kl.append(float((p * (p.log() - q.log())).sum(-1).mean()))
    assert got["delta_ce"] == pytest.approx(statistics.fmean(d_ce), rel=1e-4, abs=1e-7)
    assert got["delta_ce_se"] == pytest.approx(statistics.stdev(d_ce) / math.sqrt(7), rel=1e-3)
    assert got["kl_div"] == pytest.approx(statistics.fmean(kl), rel=1e-4)
    assert got["kl_div_se"] == pytest.approx(statistics.stdev(kl) / math.sqrt(7), rel=1e-3)


def test_summaries_lead_with_delta_ce_and_flag_an_ill_conditioned_ce_recovered():
    from saescope.cli.train import format_metrics

    ev = {"fvu": 0.2, "l0": 32.0, "dead_fraction": 0.01, "delta_ce": 0.05, "delta_ce_se": 0.004, "kl_div": 0.06,
          "kl_div_se": 0.003, "spliced_contexts": 256, "ce_clean": 3.43, "ce_with_sae": 3.48, "ce_zero_ablation": 3.53,
          "ce_loss_recovered": 0.5, "ce_loss_recovered_reliable": False}
    line = E.headline(ev)
    assert line.startswith("ΔCE 0.050 ± 0.004 nats, KL 0.060, FVU 0.200, L0 32.0, dead 1.0 %")
    assert line.endswith("CE recovered 0.500 (unreliable)")
    text = format_metrics(ev).splitlines()
    assert text[0].split()[0] == "delta_ce" and "± 0.0040" in text[0] and "256 contexts" in text[0]
    assert text[1].split()[0] == "kl_div" and "unreliable" in text[-1] and "0.100 nats" in text[-1]
    assert "(unreliable)" not in E.headline({**ev, "ce_loss_recovered_reliable": True})


def test_each_dictionary_stops_once_its_standard_error_is_below_the_target(tiny_gpt2, monkeypatch):
    """The identity (SE 0) stops at min_contexts, a random SAE runs on until its SE is small enough (here: never,
    so every context), zero-ablation stops at zero_contexts; each result equals a plain run on its own contexts."""
    hm = tiny_gpt2
    ids = contexts(hm, n=8, T=12)
    noisy = sae_class("topk")(SAEConfig("topk", hm.d_model, 48, k=3))
    saes = [(planted(hm.d_model, identity=True), "resid_post.1"), (noisy, "resid_post.1")]
    calls = []
    base = hm.model.base_model
    forward = base.forward
    monkeypatch.setattr(base, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    ident, rand = E.spliced_metrics_many(hm, saes, ids, batch_size=1, target_se=1e-9, min_contexts=4,
                                         zero_contexts=3)
    assert len(calls) == 8 + 4 + 8 + 3  # clean on all 8, identity on 4, the random SAE on 8, zero-ablation on 3
    assert ident["spliced_contexts"] == 4 and rand["spliced_contexts"] == 8 and rand["ce_recovered_contexts"] == 3
    monkeypatch.setattr(base, "forward", forward)
    plain = E.spliced_metrics(hm, noisy, "resid_post.1", ids)
    for k in ("delta_ce", "delta_ce_se", "kl_div", "kl_div_se", "ce_clean", "ce_with_sae"):
        assert rand[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-7)
    first3 = E.spliced_metrics(hm, noisy, "resid_post.1", ids[:3])
    assert rand["ce_zero_ablation"] == pytest.approx(first3["ce_zero_ablation"], rel=1e-6)
    assert rand["ce_loss_recovered"] == pytest.approx(first3["ce_loss_recovered"], rel=1e-5)
    loose = E.spliced_metrics(hm, noisy, "resid_post.1", ids, batch_size=2, target_se=1e9, min_contexts=3)
    assert loose["spliced_contexts"] == 4  # the first whole batch at or past min_contexts


def test_epochs_sets_the_passes_over_the_training_shards(tiny_gpt2, text_corpus, tmp_path):
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig
    from saescope.errors import SaescopeError
    from saescope.train.config import TrainConfig, TrainerConfig
    from saescope.train.on_store import train_from_store

    st = capture_corpus(CaptureConfig(data=CorpusConfig(str(text_corpus)), out=str(tmp_path / "s"),
                                      hookpoints="resid_post.1",
                                      capture=CaptureOptions(context_len=9, max_tokens=400, shard_contexts=10)),
                        tiny_gpt2)
    train_rows = sum(s["rows"] for s in st.shards[:-1])  # the last shard is held out
    steps = {}
    for epochs in (1.0, 2.5):
        tc = TrainerConfig(width=16, k=2, batch_size=16, epochs=epochs, buffer_rows=64)
        cfg = TrainConfig(trainer=tc, store=str(tmp_path / "s"), out=str(tmp_path / str(epochs)), device="cpu")
        steps[epochs] = train_from_store(cfg, progress=False)["steps"]
    assert steps == {1.0: train_rows // 16, 2.5: int(2.5 * train_rows) // 16}
    with pytest.raises(SaescopeError, match="--epochs 0"):
        TrainerConfig(epochs=0)


@pytest.mark.parametrize("hookpoint", ["resid_post.1", "resid_pre.2", "mlp_out.2", "attn_out.1"])
def test_a_pass_started_at_the_hookpoints_block_equals_the_full_forward(tiny, hookpoint):
    """Differential: skipping the blocks before the hookpoint's and feeding the clean pass's input there gives the
    logits of the whole model, clean and with a patch at the hookpoint (gpt2, gemma with its sliding window, llama)."""
    from saescope.models import parse_hookpoint
    from saescope.models.resume import record_block_inputs, start_at_block

    hm = tiny
    ids = contexts(hm, n=3, T=20)
    layer = parse_hookpoint(hookpoint)[1]
    seen: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        with record_block_inputs(hm, [layer], seen):
            clean = hm.model(input_ids=ids).logits
        with hm.patch(hookpoint, lambda x: 0.5 * x + 0.1):
            patched = hm.model(input_ids=ids).logits
        with start_at_block(hm, layer, seen[layer]):
            resumed = hm.model(input_ids=ids).logits
        with start_at_block(hm, layer, seen[layer]), hm.patch(hookpoint, lambda x: 0.5 * x + 0.1):
            resumed_patched = hm.model(input_ids=ids).logits
        again = hm.model(input_ids=ids).logits  # the skipped blocks are restored
    assert (patched - clean).abs().max() > 1e-3  # the patch matters, so equality below is not vacuous
    torch.testing.assert_close(resumed, clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(resumed_patched, patched, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, clean, rtol=0, atol=0)
    assert all("forward" not in vars(block) for block in hm.layers)


def test_a_wall_time_cap_stops_every_dictionary_after_min_contexts(tiny_gpt2):
    hm = tiny_gpt2
    ids = contexts(hm, n=8, T=12)
    noisy = sae_class("topk")(SAEConfig("topk", hm.d_model, 48, k=3))
    capped = E.spliced_metrics(hm, noisy, "resid_post.1", ids, batch_size=1, target_se=1e-9, min_contexts=3,
                               max_seconds=1e-9)
    assert capped["spliced_contexts"] == 3 and capped["ce_recovered_contexts"] == 3
    first3 = E.spliced_metrics(hm, noisy, "resid_post.1", ids[:3])
    for k in ("delta_ce", "delta_ce_se", "kl_div", "kl_div_se"):
        assert capped[k] == pytest.approx(first3[k], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("arch,softcap", [("gpt2", None), ("gemma", None), ("gemma", 3.0), ("llama", None)])
@pytest.mark.parametrize("fallback", [False, True])
def test_chunked_vocabulary_losses_equal_the_whole_logits(arch, softcap, fallback, monkeypatch):
    """Differential, on gpt2, gemma (its logit softcapping on or off) and llama: the losses formed a vocabulary
    chunk at a time from the base's hidden states (or, with `fallback`, sliced from the model's own logits) equal
    cross-entropy and KL of the whole [tokens, V] logits."""
    from saescope.train import next_token as NT

    from conftest import make_model

    hm = make_model(arch)
    hm.model.config.final_logit_softcapping = softcap
    monkeypatch.setattr(NT, "CHUNK", 48)  # several chunks, the last one partial (V = 320)
    if fallback:
        monkeypatch.setattr(NT.Unembed, "of", classmethod(lambda cls, model: None))
    ids = contexts(hm, n=5, T=14)
    sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 48, k=3))
    got = E.spliced_metrics(hm, sae, "resid_post.1", ids, batch_size=2)
    with torch.no_grad():
        clean = hm.model(input_ids=ids).logits[:, :-1].flatten(0, 1)
        keep = (ids == hm.tokenizer.bos_token_id)[..., None]
        with hm.patch("resid_post.1", lambda a: torch.where(keep, a, sae(a))):
            spl = hm.model(input_ids=ids).logits[:, :-1].flatten(0, 1)
    if softcap:
        assert clean.abs().max() <= softcap  # the softcap is live, so matching it is not vacuous
    tgt = ids[:, 1:].flatten()
    ce = torch.nn.functional.cross_entropy
    assert got["ce_clean"] == pytest.approx(float(ce(clean, tgt)), rel=1e-5)
    assert got["ce_with_sae"] == pytest.approx(float(ce(spl, tgt)), rel=1e-5)
    assert got["kl_div"] == pytest.approx(float(M.kl_divergence(clean, spl).mean()), rel=1e-4, abs=1e-7)


def test_corpus_contexts_after_the_store_are_the_ones_a_longer_capture_holds_next(tiny_gpt2, text_corpus, tmp_path):
    """Differential: the contexts `--spliced_from corpus` evaluates on are, token for token, contexts that a longer
    capture of the same corpus holds after the shorter store's last one (none of which it trained on), distinct,
    and drawn from all of those rather than the first few (they span the corpus's documents)."""
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig
    from saescope.train.on_store import SPREAD, contexts_after_store, contexts_from_store

    def store(name: str, tokens: int):
        return capture_corpus(CaptureConfig(data=CorpusConfig(str(text_corpus), shuffle_docs=3), out=str(tmp_path / name),
                                            hookpoints="resid_post.1",
                                            capture=CaptureOptions(context_len=9, max_tokens=tokens, shard_contexts=4)),
                              tiny_gpt2)
    short, long = store("short", 64), store("long", 10**6)  # the long one: the whole corpus
    skip = short.shards[-1]["contexts"][1]
    after = contexts_after_store(short, 6, tiny_gpt2.tokenizer)
    everything = contexts_from_store(long, list(range(len(long.shards))), 1000, tiny_gpt2.tokenizer.bos_token_id)
    assert after.shape == (6, 9) and skip == 8 and len(everything) > skip + SPREAD * 6
    rest = everything[skip:skip + SPREAD * 6]  # the corpus repeats its text: compare with the documented draw
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:6]
    assert torch.equal(after, rest[pick]) and not torch.equal(pick, torch.arange(6))


def test_spliced_from_corpus_falls_back_to_the_held_out_shards_where_the_corpus_ends(tiny_gpt2, text_corpus, tmp_path):
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig
    from saescope.train.config import EvalConfig
    from saescope.train.on_store import contexts_after_store, evaluate_many

    st = capture_corpus(CaptureConfig(data=CorpusConfig(str(text_corpus)), out=str(tmp_path / "s"),
                                      hookpoints="resid_post.1",
                                      capture=CaptureOptions(context_len=9, max_tokens=10**6, shard_contexts=4)),
                        tiny_gpt2)  # the whole corpus
    assert contexts_after_store(st, 5, tiny_gpt2.tokenizer).shape == (0, 9)
    sae = planted(tiny_gpt2.d_model, identity=True)
    sae.save(tmp_path / "sae")
    ev, = evaluate_many([EvalConfig(sae=str(tmp_path / "sae"), store=str(st.root), hookpoint="resid_post.1",
                                    contexts=5, min_contexts=2, spliced_from="corpus")], hm=tiny_gpt2)
    assert ev["spliced_from"] == "holdout" and ev["delta_ce"] == pytest.approx(0, abs=1e-6)
