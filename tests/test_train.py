"""Trainer: recovers known features, resumes exactly after a kill, data-parallel equals single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

from saescope.sae import SAEConfig, load_sae, sae_class
from saescope.store import StoreMeta, StoreWriter
from saescope.train import metrics as M
from saescope.train.config import TrainerConfig
from saescope.train.synthetic import make_toy, mcc, mmcs, recovery
from saescope.train.trainer import Trainer, geometric_median


def _fit_toy(cfg: TrainerConfig, steps: int, toy, seed=1):
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            yield toy.sample(cfg.batch_size, g)
    tr = Trainer(cfg, toy.features.shape[1], steps)
    tr.fit(batches(), progress=False)
    return tr.finalize(), toy.sample(2000, g)


@pytest.mark.parametrize("arch,kw", [("topk", {}), ("batchtopk", {}), ("matryoshka", {}),
                                     ("jumprelu", {"l0_coefficient": 0.3}),
                                     ("standard", {"l1_coefficient": 0.08})])
def test_recovers_true_features(arch, kw):
    toy = make_toy(d=32, n_features=64, active=3, seed=0)
    sae, x = _fit_toy(TrainerConfig(arch=arch, k=3, width=128, batch_size=256, lr=3e-3, **kw), 800, toy)
    score = mmcs(toy.features, sae.W_dec.detach())
    assert score > 0.9, f"{arch}: MMCS {score:.3f}"
    assert mcc(toy.features, sae.W_dec.detach()) > 0.85
    with torch.no_grad():
        f = sae.encode(x)
        assert M.fvu(x, sae(x)) < 0.4 and M.l0(f) < 12


def test_matryoshka_prefix_reconstructs_on_its_own():
    """The point of Matryoshka: its first latents alone form a usable SAE; BatchTopK's first latents do not."""
    toy = make_toy(d=32, n_features=64, active=3, seed=0)
    prefix = 16

    def prefix_fvu(sae, x):
        with torch.no_grad():
            f = sae.encode(x)
            return M.fvu(x, f[:, :prefix] @ sae.W_dec[:prefix] + sae.b_dec)

    kw = dict(k=3, width=128, batch_size=256, lr=3e-3)
    mat, x = _fit_toy(TrainerConfig(arch="matryoshka", matryoshka_widths=f"{prefix},64", **kw), 400, toy)
    plain, _ = _fit_toy(TrainerConfig(arch="batchtopk", **kw), 400, toy)
    assert mat.widths == (prefix, 64, 128) and mat.cfg.matryoshka_widths == [prefix, 64, 128]
    with torch.no_grad():
        assert M.fvu(x, mat(x)) < 0.4  # the full width still reconstructs
    assert prefix_fvu(mat, x) < 0.8 * prefix_fvu(plain, x)


def test_logged_l0_is_the_measured_l0_for_every_architecture():
    """The step statistics' "l0" is active latents per token, never an architecture's loss term of that name."""
    toy = make_toy(d=16, n_features=32, active=3)
    x = toy.sample(64, torch.Generator().manual_seed(0))
    for arch in ("topk", "batchtopk", "jumprelu", "standard"):
        tr = Trainer(TrainerConfig(arch=arch, k=4, width=32, batch_size=64, l0_coefficient=5.0, checkpoint_every=0,
                                   k_anneal_frac=0.0),  # the same k in the logged step and the check below
                     16, 2)
        tr._initialise(x)
        stats = tr.train_step(x)
        with torch.no_grad():
            active = tr.sae.training_forward(x * tr.scale).l0
        assert 0 <= stats["l0"] <= 32 and stats["l0"] == pytest.approx(float(active), abs=4), arch


def test_untrained_sae_does_not_recover_features():
    """The recovery metric can fail: an SAE that barely trains stays far below the bar."""
    toy = make_toy(d=32, n_features=64, active=3, seed=0)
    sae, _ = _fit_toy(TrainerConfig(arch="topk", k=3, width=128, batch_size=256, lr=1e-7), 50, toy)
    assert mmcs(toy.features, sae.W_dec.detach()) < 0.6


def test_metrics_known_answers():
    x = torch.randn(500, 6) + 3
    assert M.explained_variance(x, x) == pytest.approx(1.0)
    assert M.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-12)
    assert M.fvu(x, torch.zeros_like(x)) > 1  # variance about the mean, not about zero
    assert M.shrinkage(x, 0.5 * x) == pytest.approx(0.5)
    assert M.relative_reconstruction_bias(x, 2 * x) == pytest.approx(2.0)
    assert M.cosine(x, 3 * x) == pytest.approx(1.0)
    f = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])
    assert M.l0(f) == 1.5 and M.l1(f) == 3.0
    dens = M.density(torch.tensor([0, 5, 50]), 100)
    assert M.dead_fraction(dens) == pytest.approx(1 / 3) and M.dense_fraction(dens) == pytest.approx(1 / 3)
    assert M.ce_loss_recovered(2.0, 2.5, 7.0) == pytest.approx(0.9)
    p = torch.randn(4, 10)
    assert torch.allclose(M.kl_divergence(p, p), torch.zeros(4), atol=1e-6)


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.zeros(50, 2), torch.full((5, 2), 100.0)])
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()


def toy_store(root: Path, n_shards: int = 6, rows: int = 512, d: int = 32) -> Path:
    toy = make_toy(d=d, n_features=64, active=3, seed=0)
    g = torch.Generator().manual_seed(0)
    w = StoreWriter(root, StoreMeta(model="toy", hookpoints={"resid_post.0": d}, context_len=rows, source={"kind": "toy"}))
    for i in range(n_shards):
        w.add_shard({"resid_post.0": toy.sample(rows, g)}, torch.zeros(rows, dtype=torch.long),
                    torch.full((rows,), i), torch.arange(rows), (i, i + 1))
    w.finish()
    return root


def _train_cmd(store, out, *extra):
    return [sys.executable, "-m", "saescope", "train", "--store", str(store), "--out", str(out), "--width", "128",
            "--k", "3", "--batch_size", "64", "--checkpoint_every", "5", "--buffer_rows", "1024", "--lr", "0.003",
            "--device", "cpu", *extra]


def test_kill_and_resume_reaches_same_result(tmp_path):
    store = toy_store(tmp_path / "store")
    env = {**os.environ, "SAESCOPE_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(store, ref), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(store, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        meta = out / "checkpoint" / "trainer_state.json"
        if meta.exists() and json.loads(meta.read_text())["step"] >= 10:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "cfg.json").exists(), "training finished before it could be killed"
    subprocess.run(_train_cmd(store, out), check=True, env=env, capture_output=True)
    a, b = json.loads((ref / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 5 * 512 // 64
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in json.loads((out / "train_history.json").read_text()))
    x = torch.randn(16, 32)
    torch.testing.assert_close(load_sae(ref)(x), load_sae(out)(x), rtol=1e-4, atol=1e-5)


def test_data_parallel_two_gloo_ranks_match_single_process(tmp_path):
    store = toy_store(tmp_path / "store")
    env = {**os.environ, "SAESCOPE_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(_train_cmd(store, single, "--checkpoint_every", "0"), check=True, env=env, capture_output=True)
    dp = tmp_path / "dp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "saescope", *_train_cmd(store, dp, "--checkpoint_every", "0")[3:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = json.loads((single / "metrics.json").read_text()), json.loads((dp / "metrics.json").read_text())
    assert a["steps"] == b["steps"] and a["tokens"] == b["tokens"]
    assert abs(a["heldout"]["fvu"] - b["heldout"]["fvu"]) < 0.02
    sa, sb = load_sae(single), load_sae(dp)
    cos = torch.nn.functional.cosine_similarity(sa.W_dec, sb.W_dec, dim=1)
    assert cos.mean() > 0.95, f"decoder rows diverged: mean cosine {cos.mean():.3f}"


def test_reported_metrics_are_the_tested_functions_over_batches():
    """evaluate_batches reports the metric functions' values: over several batches equal to one concatenation."""
    from saescope.train.evaluate import evaluate_batches

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=g) + 2.0
    sae = sae_class("topk")(SAEConfig("topk", 16, 32, k=4))
    ev = evaluate_batches(sae, x.split(70))
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    assert ev["fvu"] == pytest.approx(M.fvu(x, x_hat), rel=1e-9)
    assert ev["cosine"] == pytest.approx(M.cosine(x, x_hat), rel=1e-9)
    assert ev["shrinkage"] == pytest.approx(M.shrinkage(x, x_hat), rel=1e-9)
    assert ev["relative_reconstruction_bias"] == pytest.approx(M.relative_reconstruction_bias(x, x_hat), rel=1e-9)
    assert ev["l0"] == pytest.approx(M.l0(f)) and ev["l1"] == pytest.approx(M.l1(f), rel=1e-6)


def test_spliced_metrics_memory_is_bounded_by_the_budget_not_the_vocabulary(monkeypatch):
    """A large vocabulary: no logits tensor larger than the budget, and the same CE/KL as a naive full pass."""
    from conftest import make_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from saescope.models import HookedModel
    from saescope.train import evaluate as E

    V, T = 50_000, 24
    tok = make_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=2, eos_token_id=1, pad_token_id=0)).eval()
    hm = HookedModel(model, tok, name="tiny-bigvocab")
    ids = torch.randint(3, len(tok), (6, T))
    ids[:, 0] = tok.bos_token_id
    sae = sae_class("topk")(SAEConfig("topk", 32, 64, k=8))
    from saescope.train import next_token as NT

    monkeypatch.setattr(E, "LOGITS_BUDGET", 2 * T * V * 4)  # two contexts of clean probabilities at a time
    monkeypatch.setattr(NT, "CHUNK", 4096)
    held: list[int] = []
    clean_stats, logits_t = NT.clean_stats, NT.Unembed.logits_t

    def spy_clean(*a):
        c = clean_stats(*a)
        held.append(c.p.numel())
        return c

    def spy_logits(self, h):
        chunk = logits_t(self, h)
        return lambda i, j: held.append(chunk(i, j).numel()) or chunk(i, j)
    monkeypatch.setattr(NT, "clean_stats", spy_clean)
    monkeypatch.setattr(NT.Unembed, "logits_t", spy_logits)
    monkeypatch.setattr(model, "forward", None)  # never the whole [tokens, V] logits: the head runs in chunks
    got = E.spliced_metrics(hm, sae, "resid_post.0", ids)
    assert held and max(held) <= 2 * T * V  # bounded by the budget, whatever the batch of contexts
    assert any(n == 4096 * 2 * (T - 1) for n in held)  # the chunks: 4,096 vocabulary rows × 2 contexts
    monkeypatch.undo()
    with torch.no_grad():  # naive reference: every context at once
        clean = model(input_ids=ids).logits[:, :-1].flatten(0, 1)
        with hm.patch("resid_post.0", lambda x: torch.where((ids == 2)[..., None], x, sae(x))):
            spl = model(input_ids=ids).logits[:, :-1].flatten(0, 1)
    tgt = ids[:, 1:].flatten()
    assert got["ce_clean"] == pytest.approx(float(torch.nn.functional.cross_entropy(clean, tgt)), rel=1e-5)
    assert got["ce_with_sae"] == pytest.approx(float(torch.nn.functional.cross_entropy(spl, tgt)), rel=1e-5)
    assert got["kl_div"] == pytest.approx(float(M.kl_divergence(clean, spl).mean()), rel=1e-4, abs=1e-7)


def test_spliced_metrics_of_several_saes_share_the_clean_pass_and_equal_one_at_a_time(tiny_gpt2, monkeypatch):
    from saescope.train import evaluate as E

    hm = tiny_gpt2
    ids = torch.randint(3, len(hm.tokenizer), (4, 12))
    ids[:, 0] = hm.tokenizer.bos_token_id
    d = hm.d_model
    saes = [(sae_class("topk")(SAEConfig("topk", d, 48, k=4)), "resid_post.0"),
            (sae_class("topk")(SAEConfig("topk", d, 32, k=2)), "resid_post.0"),
            (sae_class("topk")(SAEConfig("topk", d, 32, k=4)), "attn_out.1")]
    one = [E.spliced_metrics(hm, sae, hp, ids) for sae, hp in saes]
    calls = []
    forward = hm.model.base_model.forward
    monkeypatch.setattr(hm.model.base_model, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    many = E.spliced_metrics_many(hm, saes, ids, batch_size=4)
    assert len(calls) == 1 + 3 + 2  # clean once, each SAE, each hookpoint's zero ablation once
    for a, b in zip(one, many):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert many[0]["ce_with_sae"] != many[1]["ce_with_sae"]


def test_schedule_free_sign_sgd_known_answer():
    """z steps by −lr·sign(g), x is the running mean of the z iterates, the parameter holds y = (1−β)z + βx."""
    from saescope.train.optim import ScheduleFreeSignSGD

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = ScheduleFreeSignSGD([p], lr=0.1, momentum=0.9)
    z, zs = p.detach().clone(), []
    for g in ([1.0, -3.0, 0.0], [2.0, 1.0, -1.0], [-1.0, 1.0, 1.0]):
        p.grad = torch.tensor(g)
        opt.step()
        z = z - 0.1 * torch.tensor(g).sign()
        zs.append(z)
        x = torch.stack(zs).mean(0)  # constant LR: uniform average of z_1..z_t
        torch.testing.assert_close(p.detach(), 0.1 * z + 0.9 * x)
    opt.averaged()
    torch.testing.assert_close(p.detach(), torch.stack(zs).mean(0))


def test_schedule_free_sign_sgd_carries_a_projection_into_the_average():
    """The average is recovered from the parameters (x = z + (y − z)/β, as schedulefree's wrapper that sparsify uses):
    moving the parameters by δ between steps (a unit-norm projection) moves x by δ/β and leaves z alone."""
    from saescope.train.optim import ScheduleFreeSignSGD

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = ScheduleFreeSignSGD([p], lr=0.1, momentum=0.8)
    p.grad = torch.tensor([1.0, -1.0, 2.0])
    opt.step()
    z1 = torch.tensor([0.9, -1.9, 0.4])
    x1 = z1  # c = 1 at the first step: x is the average of z_1..z_t
    delta = torch.tensor([0.05, 0.0, -0.1])
    with torch.no_grad():
        p += delta
    torch.testing.assert_close(opt.average(p), x1 + delta / 0.8)
    torch.testing.assert_close(opt.state[p]["z"], z1)
    p.grad = torch.tensor([-1.0, 0.0, 1.0])
    opt.step()
    z2 = z1 - 0.1 * torch.tensor([-1.0, 0.0, 1.0])
    x2 = (x1 + delta / 0.8) / 2 + z2 / 2  # c = 1/2
    torch.testing.assert_close(p.detach(), 0.2 * z2 + 0.8 * x2)
    opt.averaged()
    torch.testing.assert_close(p.detach(), x2)


@pytest.mark.parametrize("optimizer", ["adam", "signum"])
def test_resume_in_process_matches_uninterrupted(optimizer, tmp_path):
    """Checkpoint at step 10 of 20, a new Trainer resumes and ends where the uninterrupted run ends (optimizer
    state, schedule, dead counters, resampling and k annealing included)."""
    toy = make_toy(d=16, n_features=32, active=3, seed=0)
    g = torch.Generator().manual_seed(0)
    xs = [toy.sample(64, g) for _ in range(20)]
    cfg = TrainerConfig(k=2, width=48, batch_size=64, optimizer=optimizer, checkpoint_every=10,
                        k_anneal_frac=0.5, resample_tokens=64 * 3)
    full = Trainer(cfg, 16, 20)
    full.fit(iter(xs), progress=False)
    first = Trainer(cfg, 16, 20, out=tmp_path)
    first.fit(iter(xs[:10]), progress=False)
    second = Trainer(cfg, 16, 20, out=tmp_path)
    assert second.try_resume() and second.step == 10
    second.fit(iter(xs[10:]), progress=False)
    x = toy.sample(32, g)
    torch.testing.assert_close(second.finalize()(x), full.finalize()(x), rtol=1e-4, atol=1e-5)


def test_default_recipe_recovers_a_clear_majority_of_true_features():
    """Realistic toy (Zipf–Mandelbrot frequencies down to 3e-3, shared offset, noise, correlated head), F = number
    of true features: the default recipe (Adam at 1e-3·√(2^14/F), k annealing, dead-latent resampling) finds
    ~71 % of the features at cos > 0.9 in 500 steps; the recipe before issue 13 (Adam at 2e-4·√(2^14/F), fixed k,
    no resampling) found ~38 % and fails this test."""
    toy = make_toy(d=64, n_features=256, active=5, alpha=2.0, min_prob=3e-3, seed=0, mean_scale=2.0, noise=0.05,
                   correlated_blocks=4, correlated_count=32)
    sae, x = _fit_toy(TrainerConfig(k=8, width=256, batch_size=512), 500, toy)
    found = recovery(toy.features, sae.W_dec.detach())["found_90"]
    assert found > 0.6, f"found {found:.1%} of the true features at cos > 0.9"
    held = toy.sample(16384, torch.Generator().manual_seed(2))  # enough rows for the rarest features to fire
    with torch.no_grad():
        dead = float(((sae.encode(held) != 0).sum(0) == 0).float().mean())
        assert M.fvu(x, sae(x)) < 0.2 and dead <= 0.05, f"dead {dead:.1%}"


def test_resample_restarts_dead_latents_on_residuals_at_half_the_alive_encoder_norm():
    from saescope.train.resample import resample_dead

    tr = Trainer(TrainerConfig(k=4, width=32, batch_size=64), 16, 10)
    x = torch.randn(64, 16)
    tr.train_step(x)  # Adam state exists
    sae, before = tr.sae, {n: p.detach().clone() for n, p in tr.sae.named_parameters()}
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 17]] = True
    with torch.no_grad():
        x_hat = sae(x)
    idx = resample_dead(sae, tr.opt, tr.aliases, dead, x, x_hat, torch.Generator().manual_seed(0), enc_scale=0.5)
    assert idx.tolist() == [3, 17]
    resid = x - x_hat
    units = resid / resid.norm(dim=1, keepdim=True)
    alive_norm = before["W_enc"].T[~dead].norm(dim=1).mean()
    for j in idx.tolist():
        cos = units @ sae.W_dec[j].detach()
        assert float(cos.max()) == pytest.approx(1.0, abs=1e-5)  # a picked token's residual direction
        torch.testing.assert_close(sae.W_enc[:, j].detach(), sae.W_dec[j].detach() * 0.5 * alive_norm)
        assert float(sae.b_enc[j]) == 0.0
        assert float(tr.opt.state[tr.aliases["W_dec"]]["exp_avg"][j].abs().max()) == 0.0
    for n, p in sae.named_parameters():  # alive latents untouched
        if n in ("W_enc",):
            torch.testing.assert_close(p.detach()[:, ~dead], before[n][:, ~dead])
        elif n in ("W_dec", "b_enc"):
            torch.testing.assert_close(p.detach()[~dead], before[n][~dead])


def test_attention_rows_of_a_store_are_refused_as_sae_input(tiny_gpt2, text_corpus, tmp_path):
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig
    from saescope.errors import SaescopeError
    from saescope.train.on_store import train_from_store
    from saescope.train.config import TrainConfig

    capture_corpus(CaptureConfig(data=CorpusConfig(str(text_corpus)), out=str(tmp_path / "s"),
                                 hookpoints="attn_out.1,attn_pattern.1,attn_value.1",
                                 capture=CaptureOptions(context_len=9, max_tokens=200)), tiny_gpt2)
    with pytest.raises(SaescopeError, match=r"attn_pattern.1: attention patterns .* pick one of attn_out.1$"):
        train_from_store(TrainConfig(store=str(tmp_path / "s"), hookpoint="attn_pattern.1", out=str(tmp_path / "o")))


def test_release_file_pages_keeps_the_weights_and_frees_the_mapping(tiny_dir, tmp_path):
    """After the advice the model computes the same logits (pages come back from the file); the file mapping's
    resident size drops where the weights are memory-mapped."""
    from saescope.models import load_model
    from saescope.train.memory import release_file_pages

    import shutil

    # a private copy: MADV_PAGEOUT leaves pages that another mapping shares (another test's model of tiny_dir)
    own = shutil.copytree(tiny_dir, tmp_path / "model")
    hm = load_model(str(own))
    ids = torch.tensor([[hm.tokenizer.bos_token_id, 5, 6, 7, 8]])
    with torch.no_grad():
        before = hm.model(input_ids=ids).logits

    def mapped_rss_kb() -> int:
        total, on = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                if "-" in line.split(" ")[0]:
                    on = line.rstrip().endswith("model.safetensors") and str(own) in line
                elif on and line.startswith("Rss:"):
                    total += int(line.split()[1])
        return total
    resident = mapped_rss_kb()
    advised = release_file_pages(hm.model)
    released = mapped_rss_kb()
    with torch.no_grad():
        after = hm.model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    if advised:  # the weights are memory-mapped here: the resident pages were given back
        assert released < resident


@pytest.mark.parametrize("k", [3, 20])
def test_jumprelu_thresholds_start_at_an_l0_of_k(k):
    """JumpReLU's first batch sets one threshold for all latents at which that batch's L0 is k (from the fixed 0.01
    start a short run never got sparse: θ moves about one learning rate per Adam step)."""
    from saescope.sae.jumprelu import JumpReLUSAE

    toy = make_toy(d=32, n_features=64, active=3, seed=0)
    x = toy.sample(256, torch.Generator().manual_seed(0))  # [256, 32]
    tr = Trainer(TrainerConfig(arch="jumprelu", k=k, width=128, batch_size=256, checkpoint_every=0), 32, 10)
    tr._initialise(x)
    theta = tr.sae.threshold.detach()
    assert torch.all(theta == theta[0]) and theta[0] > JumpReLUSAE.init_threshold
    with torch.no_grad():
        l0 = (tr.sae.encode(x * tr.scale) != 0).sum(1).float().mean()
    assert abs(float(l0) - k) <= 1 / 256 + 1e-6


def test_train_run_returns_what_it_wrote(tmp_path, capsys):
    """The stage's face: run(TrainConfig) -> TrainResult whose numbers are the ones in the SAE's metrics.json, and
    the CLI prints from it."""
    from saescope.cli import main
    from saescope.train.config import TrainConfig, TrainerConfig
    from saescope.train.run_train import run

    store = toy_store(tmp_path / "store", n_shards=3, rows=256)
    tc = TrainerConfig(width=64, k=3, batch_size=64, checkpoint_every=0, buffer_rows=512)
    res = run(TrainConfig(trainer=tc, store=str(store), out=str(tmp_path / "sae"), device="cpu"), progress=False)
    written = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    [d] = res.dictionaries
    assert res.kind == "sae" and res.main_rank and d.name == "resid_post.0" and d.out == tmp_path / "sae"
    assert (d.steps, d.tokens, d.metrics) == (written["steps"], written["tokens"], written["heldout"])
    assert d.steps == 2 * 256 // 64 and not d.heldout_is_training_data
    # dead as the trainer counts it (its last window of tokens), kept apart from the held-out shard's unfired count
    assert 0.0 <= written["dead_fraction_training"] <= 1.0 and written["dead_window_tokens"] == 128
    from saescope.train.config import EvalConfig
    from saescope.train.evaluate import headline
    from saescope.train.on_store import evaluate_many

    [ev] = evaluate_many([EvalConfig(sae=str(tmp_path / "sae"), store=str(store), spliced=False)])
    assert ev["dead_fraction_training"] == written["dead_fraction_training"]
    assert (f"dead {100 * written['dead_fraction_training']:.1f} % (none in the last 128 training tokens; "
            f"{100 * ev['dead_fraction']:.1f} % unfired on 256 held-out tokens)") in headline(ev)
    assert main(["train", "--store", str(store), "--out", str(tmp_path / "cli"), "--width", "64", "--k", "3",
                 "--batch_size", "64", "--checkpoint_every", "0", "--buffer_rows", "512", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"SAE written to {tmp_path / 'cli'} ({d.steps} steps" in out and "held-out metrics:" in out


def test_batchtopk_trained_on_a_store_infers_at_mean_l0_k(tmp_path):
    """train_from_store calibrates a BatchTopK SAE's threshold on training rows (`calibration_rows`): the saved
    SAE's mean L0 there is k, LISTA encoder included (its running estimate alone read 16 % high on gemma)."""
    from saescope.sae import load_sae
    from saescope.store import ActivationStore
    from saescope.train.config import TrainConfig, TrainerConfig
    from saescope.train.on_store import calibration_rows
    from saescope.train.run_train import run

    store = toy_store(tmp_path / "store", n_shards=3, rows=256)
    tc = TrainerConfig(arch="batchtopk", encoder="lista", width=64, k=3, batch_size=64, checkpoint_every=0,
                       buffer_rows=512)
    run(TrainConfig(trainer=tc, store=str(store), out=str(tmp_path / "sae"), device="cpu"), progress=False)
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.lista_iters == 1 and float(sae.lista_step.detach()) != 0.0
    rows = calibration_rows(ActivationStore(store), "resid_post.0", [0, 1])
    assert rows.shape == (512, 32)
    assert abs(float((sae.encode(rows) > 0).sum(1).float().mean()) - 3) < 0.05


def test_auto_encoder_dtype_follows_the_measured_matmul_speed(monkeypatch):
    """`auto` picks bfloat16 on a CPU only when the probe measures it faster, whatever the CPU flags say."""
    import torch

    from saescope.train import precision

    for f32, bf16, want in ((1.0, 0.5, torch.bfloat16), (1.0, 300.0, torch.float32), (1.0, 0.9, torch.float32)):
        precision.cpu_bf16_is_faster.cache_clear()
        monkeypatch.setattr(precision, "matmul_seconds", lambda dt, f32=f32, bf16=bf16: f32 if dt == torch.float32 else bf16)
        assert precision.resolve_encoder_dtype("auto", "cpu") == want
    monkeypatch.undo()
    precision.cpu_bf16_is_faster.cache_clear()
    assert precision.resolve_encoder_dtype("float32", "cpu") == torch.float32
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    assert precision.matmul_seconds(torch.float32, n=32, reps=1) > 0
    # the probe draws from its own generator: a Trainer seeds, then probes, then initialises (found when the first
    # Trainer of a process on an AVX512-BF16 CPU drew other weights than the next ones with the same seed)
    torch.testing.assert_close(torch.rand(4), want)


def test_default_learning_rate_follows_the_square_root_batch_rule_for_adam_topk():
    """TopK-family SAEs with Adam: 1e-3·√(2^14/F)·√(B/256); signum (sparsify's), jumprelu/standard and
    transcoders ignore the batch."""
    from saescope.train.config import TrainerConfig

    lr = lambda **kw: TrainerConfig(**kw).learning_rate()  # noqa: E731
    assert lr(width=2**14, batch_size=256) == pytest.approx(1e-3)
    assert lr(width=2**14, batch_size=1024) == pytest.approx(2e-3)
    assert lr(arch="batchtopk", width=4096, batch_size=1024) == pytest.approx(4e-3)
    assert lr(arch="matryoshka", width=4096, batch_size=64) == pytest.approx(1e-3)
    assert lr(optimizer="signum", width=2**14, batch_size=4096) == pytest.approx(5e-3)
    assert lr(arch="jumprelu", width=2**14, batch_size=4096) == pytest.approx(2e-4)
    assert lr(width=2**14, batch_size=4096, lr=3e-4) == 3e-4
    assert lr(kind="transcoder", width=2**14, batch_size=1024) == pytest.approx(1e-3)
