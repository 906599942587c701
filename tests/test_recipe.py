"""The LISTA-Matryoshka ingredients as trainer options (issue 30): each against a known answer or a naive dense
reference."""

from __future__ import annotations

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.sae import SAEConfig, TrainContext, fvu_loss, load_sae, sae_class
from saescope.sae.base import tilted_fvu
from saescope.sae.matryoshka import frequency_levels
from saescope.train.config import TrainerConfig
from saescope.train.synthetic import make_toy
from saescope.train.trainer import Trainer, k_schedule


def _sae(arch: str, lista: int, d: int = 16, F: int = 48, k: int = 4, seed: int = 0, **kw):
    torch.manual_seed(seed)
    sae = sae_class(arch)(SAEConfig(sae_class(arch).architecture, d, F, k=k, lista_iters=lista, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _x(n: int = 64, d: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_lista_with_zero_step_is_the_linear_encoder():
    lin, lista = _sae("topk", 0), _sae("topk", 2)
    lista.load_state_dict({**lin.state_dict(), "lista_step": torch.zeros(())})
    x = _x()
    assert torch.equal(lista.encode(x), lin.encode(x))
    ctx = TrainContext(k=4)
    assert torch.allclose(lista.training_forward(x, ctx).x_hat, lin.training_forward(x, ctx).x_hat, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_refined_pre_acts_are_what_the_lista_code_is_taken_from(arch, tmp_path):
    """The pre-activations of the last LISTA step, from the naive loop: the code is their activation (the debugger
    traces a latent through them); with no LISTA they are the linear pre-activations."""
    sae, x = _sae(arch, 2), _x()
    with torch.no_grad():
        sae.lista_step.fill_(0.3)
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
    act = sae.activation
    x_in = x - sae.b_dec
    pre0 = x_in @ sae.W_enc + sae.b_enc
    pre, f = pre0, act(pre0)
    for _ in range(2):
        pre = pre0 + 0.3 * ((x_in - f @ sae.W_dec) @ sae.W_enc)
        f = act(pre)
    torch.testing.assert_close(sae.refined_pre_acts(x), pre)
    torch.testing.assert_close(sae.encode(x), f)
    assert not torch.allclose(pre, pre0, atol=1e-3)  # the steps changed something
    plain = _sae(arch, 0)
    assert torch.equal(plain.refined_pre_acts(x), plain.pre_acts(x))
    if arch == "batchtopk":  # saved as JumpReLU (what the debugger loads): the same refined pre-activations
        sae.save(tmp_path / "s")
        back = load_sae(tmp_path / "s")
        assert type(back).__name__ == "JumpReLUSAE"
        torch.testing.assert_close(back.refined_pre_acts(x), pre)


def _dense_lista_loss(sae, x: torch.Tensor, k: int) -> torch.Tensor:
    """The naive reference: dense matrices and autograd through everything, TopK by a dense mask."""
    def topk(pre):
        idx = pre.topk(k, dim=1).indices
        return torch.zeros_like(pre).scatter(1, idx, 1.0) * pre.relu()
    x_in = x - sae.b_dec
    pre = x_in @ sae.W_enc + sae.b_enc
    f = topk(pre)
    for _ in range(sae.cfg.lista_iters):
        x_it = x_in + sae.lista_step * (x_in - f @ sae.W_dec)
        f = topk(x_it @ sae.W_enc + sae.b_enc)
    return fvu_loss(x, f @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("iters", [1, 2])
def test_lista_sparse_training_step_matches_dense_reference(iters):
    """Values and every gradient (η included) of the sparse training forward equal dense autograd's, and the
    inference encoder gives the training forward's reconstruction."""
    sae = _sae("topk", iters)
    with torch.no_grad():
        sae.lista_step.fill_(0.4)
    x = _x()
    out = sae.training_forward(x, TrainContext(k=4))
    fvu_loss(x, out.x_hat).backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    ref = _dense_lista_loss(sae, x, 4)
    ref.backward()
    for n, p in sae.named_parameters():
        assert torch.allclose(sparse[n], p.grad, atol=1e-5, rtol=1e-4), n
    assert abs(float(sparse["lista_step"])) > 0  # η learns
    with torch.no_grad():
        assert torch.allclose(sae.decode(sae.encode(x)), out.x_hat, atol=1e-5)


def test_lista_sae_saves_loads_and_folds_its_input_scale(tmp_path):
    """η survives save/load (cfg.json lista_iters, weight lista_step) and the input-scale folding: the saved SAE
    gives raw inputs the latents the trainer's scaled inputs got."""
    sae = _sae("batchtopk", 1)
    with torch.no_grad():
        sae.lista_step.fill_(0.3)
        sae.threshold.fill_(0.05)
    x = _x()
    before = sae.encode(x * 3.0)
    sae.fold_input_scale(3.0)
    sae.save(tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert back.cfg.lista_iters == 1 and float(back.lista_step.detach()) == pytest.approx(0.3)
    assert torch.allclose(back.encode(x), before, atol=1e-5)
    plain = _sae("topk", 0)
    plain.save(tmp_path / "p")
    assert "lista_iters" not in (tmp_path / "p" / "cfg.json").read_text()  # plain SAEs keep SAELens' cfg.json


def test_lista_refused_where_it_has_no_meaning():
    with pytest.raises(SaescopeError, match="--encoder lista"):
        TrainerConfig(arch="jumprelu", encoder="lista")
    with pytest.raises(SaescopeError, match="--encoder lista"):
        TrainerConfig(arch="topk", kind="transcoder", encoder="lista")


def test_term_with_zero_tilt_is_the_mean_loss_and_otherwise_has_terms_gradient():
    x = _x(32, 8)
    w = torch.randn(8, 8, requires_grad=True)
    x_hat = x @ w
    assert torch.equal(tilted_fvu(x, x_hat, 0.0), fvu_loss(x, x_hat))
    t = 0.05
    g_ours, = torch.autograd.grad(tilted_fvu(x, x @ w, t), w)
    per = (x - x @ w).pow(2).sum(1)  # [N]
    term = torch.logsumexp(t * per, 0) / t - torch.log(torch.tensor(32.0)) / t  # (1/t) log mean exp(t ℓ)
    g_term, = torch.autograd.grad(term, w)
    denom = (x - x.mean(0)).pow(2).sum()
    assert torch.allclose(g_ours, g_term * 32 / denom, atol=1e-6, rtol=1e-4)
    # the tilt moves weight to the worst sample: its share of the gradient grows
    assert not torch.allclose(g_ours, torch.autograd.grad(fvu_loss(x, x @ w), w)[0], rtol=1e-2)


def test_k_schedule_known_values():
    pub = TrainerConfig(k=25, width=4096, k_anneal_start=2.4, k_anneal_frac=1.0)  # the recipe's 60 → 25
    assert [k_schedule(pub, f) for f in (0.0, 0.5, 1.0)] == [60, 42, 25]
    ours = TrainerConfig(k=32, width=4096)  # saescope's: 2k → k over the first quarter, then k
    assert [k_schedule(ours, f) for f in (0.0, 0.125, 0.25, 0.9)] == [64, 48, 32, 32]
    old = TrainerConfig(k=32, width=4096, k_anneal_start=4.0, k_anneal_frac=0.5)  # before issue 30
    assert [k_schedule(old, f) for f in (0.0, 0.25, 0.5, 0.9)] == [128, 80, 32, 32]
    assert k_schedule(TrainerConfig(k=32, k_anneal_frac=0.0), 0.0) == 0  # 0 = the SAE's own k
    assert k_schedule(TrainerConfig(k=32, width=64), 0.0) == 64  # capped at F


def test_frequency_levels_on_a_planted_order():
    rate = torch.tensor([0.1, 0.5, 0.0, 0.9, 0.3, 0.2, 0.05, 0.4])
    assert frequency_levels(rate, (2, 4, 8)).tolist() == [2, 0, 2, 0, 1, 2, 2, 1]
    assert frequency_levels(torch.zeros(8), (2, 4, 8)).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # index order


def _dense_code(sae, x: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK's training code as a dense [N, F] matrix (no gradient)."""
    with torch.no_grad():
        pre = sae.pre_acts(x).relu()
        flat = pre.flatten()
        keep = torch.zeros_like(flat).scatter(0, flat.topk(k * x.shape[0]).indices, 1.0)
        return (flat * keep).view_as(pre)


@pytest.mark.parametrize("detach", [False, True])
def test_detached_inner_levels_train_only_their_own_group(detach):
    """Inner level l's loss is FVU(x, stop_grad(x̂_{<l}) + group l) when detached, FVU(x, x̂_{≤l}) otherwise:
    the decoder gradient of the Matryoshka term equals that dense reference's."""
    sae = _sae("matryoshka", 0, F=32, matryoshka_widths=[4, 8, 16, 32])
    sae.detach_inner = detach
    x = _x()
    out = sae.training_forward(x, TrainContext(k=4))
    out.losses["matryoshka"].backward()
    got = sae.W_dec.grad.clone()
    f = _dense_code(sae, x, 4)
    W = sae.W_dec.detach().clone().requires_grad_(True)
    lo, loss, prev = 0, 0.0, sae.b_dec.detach()
    for hi in (4, 8, 16):
        part = f[:, lo:hi] @ W[lo:hi]
        loss = loss + fvu_loss(x, (prev.detach() if detach else prev) + part)
        prev, lo = prev + part, hi
    loss.backward()
    assert torch.allclose(got, W.grad, atol=1e-6)
    assert bool((got[16:] == 0).all())  # the outermost group is trained by the full-width loss alone
    if detach:
        assert bool((got[:4] != 0).any())


def test_frequency_sorted_matryoshka_puts_frequent_latents_first():
    """A toy whose frequent features come last in index order: trained with levels by firing frequency, the
    saved SAE's innermost prefix holds the most frequently firing latents."""
    toy = make_toy(d=32, n_features=64, active=4, alpha=1.5, seed=0)
    toy.probs = toy.probs.flip(0)  # planted: feature 63 is the most frequent
    cfg = TrainerConfig(arch="matryoshka", k=4, width=64, batch_size=256, lr=3e-3, checkpoint_every=0,
                        matryoshka_widths="8,16,32", matryoshka_sort="frequency")
    g = torch.Generator().manual_seed(1)
    tr = Trainer(cfg, 32, 200)

    def batches():
        while True:
            yield toy.sample(256, g)
    tr.fit(batches(), progress=False)
    rate_ema = tr.sae.fire_rate.clone()
    sae = tr.finalize()
    assert torch.equal(sae.fire_rate, rate_ema.sort(descending=True).values)  # permuted into rank order
    with torch.no_grad():
        rate = (sae.encode(toy.sample(4096, g)) > 0).float().mean(0)  # [F] held-out firing rates
    assert rate[:8].mean() > 2 * rate[32:].mean()
    assert rate[:8].mean() > rate[8:16].mean() > rate[32:].mean()


@pytest.mark.parametrize("lista", [0, 1, 2])
def test_batchtopk_threshold_calibration_gives_mean_l0_k(lista, tmp_path):
    """θ set on training rows gives encode's mean L0 = k there: exactly (to a tie) for the linear encoder, where θ
    is the (k·N + 1)-th largest activation; to within a token's worth for LISTA, whose first step also reads θ.
    The saved (JumpReLU) SAE keeps it."""
    sae, x = _sae("batchtopk", lista, d=16, F=48, k=4), _x(512)
    with torch.no_grad():
        if lista:
            sae.lista_step.fill_(0.4)
        sae.threshold.fill_(0.001)  # a running estimate far too low: L0 far above k
    assert (sae.encode(x) > 0).sum(1).float().mean() > 8
    theta = sae.calibrate_threshold(x, 4)
    l0 = float((sae.encode(x) > 0).sum(1).float().mean())
    assert float(sae.threshold) == pytest.approx(theta)
    if lista == 0:
        assert l0 == 4.0
        relu = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        assert int((relu > theta).sum()) == 4 * 512  # the naive count
    else:
        assert abs(l0 - 4) < 1 / 8
    sae.save(tmp_path / "s")
    back = load_sae(tmp_path / "s")
    torch.testing.assert_close(back.encode(x), sae.encode(x))
