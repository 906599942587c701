"""SAE architectures: known answers, invariances, sparse-vs-dense differential tests, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.errors import SaescopeError
from saescope.sae import REGISTRY, SAEConfig, TrainContext, fvu_loss, load_sae, sae_class
from saescope.sae.jumprelu import JumpReLUFn, StepFn
from saescope.sae.kernels import GatherEncode, batch_topk_coo, sparse_decode, topk_coo

ARCHS = [a for a in REGISTRY if not a.endswith("transcoder")]  # the skip transcoder (load-only): tests/test_export.py


def make(arch, d=16, F=64, k=4, **kw):
    sae = sae_class(arch)(SAEConfig(arch, d, F, k=k, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.Tensor) and sae.threshold.ndim == 0:
            sae.threshold.fill_(0.05)
    return sae


@pytest.mark.parametrize("selector", ["topk", "batch"])
def test_sparse_kernels_match_dense_reference_with_gradients(selector):
    N, d, F, k = 24, 8, 40, 5
    x = torch.randn(N, d, requires_grad=True)
    W_enc = torch.randn(d, F, requires_grad=True)
    b_enc = torch.randn(F, requires_grad=True)
    W_dec = torch.randn(F, d, requires_grad=True)
    g = torch.randn(N, d)
    with torch.no_grad():
        pre = x @ W_enc + b_enc
    rows, cols = topk_coo(pre, k) if selector == "topk" else batch_topk_coo(pre, k)
    vals = GatherEncode.apply(x, W_enc, b_enc, rows, cols, pre).relu()
    out = sparse_decode(rows, cols, vals, W_dec, N)
    (out * g).sum().backward()
    sparse_grads = [t.grad.clone() for t in (x, W_enc, b_enc, W_dec)]
    for t in (x, W_enc, b_enc, W_dec):
        t.grad = None
    mask = torch.zeros(N, F, dtype=torch.bool)
    mask[rows, cols] = True
    dense = ((x @ W_enc + b_enc) * mask).relu() @ W_dec  # naive reference
    torch.testing.assert_close(out, dense)
    (dense * g).sum().backward()
    for a, t in zip(sparse_grads, (x, W_enc, b_enc, W_dec)):
        torch.testing.assert_close(a, t.grad, rtol=1e-4, atol=1e-5)
    if selector == "batch":
        assert rows.numel() == N * k and torch.all(rows[1:] >= rows[:-1])


def test_topk_known_answer_identity():
    """d = F = 4, identity weights, zero biases: TopK(2) keeps the two largest positive inputs."""
    sae = sae_class("topk")(SAEConfig("topk", 4, 4, k=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    x = torch.tensor([[3.0, -1.0, 2.0, 1.0], [-1.0, -2.0, 0.5, -3.0]])
    f = sae.encode(x)
    assert torch.equal(f, torch.tensor([[3.0, 0, 2.0, 0], [0, 0, 0.5, 0]]))
    assert torch.equal(sae(x), f)
    assert torch.equal(sae.training_forward(x).x_hat, f)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_equal_width_reproduces_dense_relu(arch):
    sae = make(arch, d=8, F=12, k=12)
    relu = make("standard", d=8, F=12)
    relu.load_state_dict({k: v for k, v in sae.state_dict().items() if k != "threshold"})
    x = torch.randn(10, 8)
    torch.testing.assert_close(sae.training_forward(x).x_hat, relu(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_is_decode_of_encode_and_training_agrees(arch):
    sae = make(arch)
    x = torch.randn(32, 16)
    torch.testing.assert_close(sae(x), sae.decode(sae.encode(x)))
    if arch in ("topk", "jumprelu", "standard"):  # the batchtopk family trains per batch, infers by threshold
        torch.testing.assert_close(sae.training_forward(x).x_hat, sae(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_same_output(arch, tmp_path):
    sae = make(arch)
    x = torch.randn(32, 16)
    sae.save(tmp_path / arch, sparsity=torch.full((64,), -2.0))
    back = load_sae(tmp_path / arch)
    torch.testing.assert_close(back(x), sae(x))
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    expected = "jumprelu" if "batchtopk" in arch else arch
    assert back.cfg.architecture == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_input_scale_keeps_outputs(arch):
    sae = make(arch)
    x = torch.randn(32, 16)
    s = 3.7
    ref_f, ref_x = sae.encode(x * s), sae(x * s) / s
    sae.fold_input_scale(s)
    torch.testing.assert_close(sae.encode(x), ref_f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae(x), ref_x, rtol=1e-4, atol=1e-5)


def test_jumprelu_pseudo_gradients_known_answer():
    eps = 0.1
    z = torch.tensor([[0.47, 0.52, 0.7, 0.2]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    f = JumpReLUFn.apply(z, theta, eps)
    assert torch.equal(f.detach(), torch.tensor([[0.0, 0.52, 0.7, 0.0]]))
    f.sum().backward()
    # only |z − θ| < ε/2 contributes: −(θ/ε) for the two near-threshold entries
    torch.testing.assert_close(theta.grad, torch.tensor([-5.0, -5.0, 0.0, 0.0]))
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    theta.grad = None
    StepFn.apply(z, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, -10.0, 0.0, 0.0]))


def test_auxk_only_uses_dead_latents():
    sae = make("topk", k=2)
    x = torch.randn(16, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_forward(x, TrainContext(dead=dead, auxk_alpha=1.0))
    out.losses["auxk"].backward()
    # AuxK alone moves only dead latents' decoder rows
    assert sae.W_dec.grad[10:].abs().sum() == 0 and sae.W_dec.grad[:10].abs().sum() > 0
    none = sae.training_forward(x, TrainContext(dead=torch.zeros(64, dtype=torch.bool)))
    assert "auxk" not in none.losses


def test_batchtopk_average_l0_and_threshold():
    sae = make("batchtopk", k=3)
    x = torch.randn(50, 16)
    out = sae.training_forward(x)
    assert out.l0 == pytest.approx(3.0)
    assert sae.threshold > 0


def test_fvu_loss_known_answers():
    x = torch.randn(100, 8)
    assert float(fvu_loss(x, x)) == 0.0
    assert float(fvu_loss(x, x.mean(0).expand_as(x))) == pytest.approx(1.0)


def _dense_ref(x, W_enc, b_enc, W_dec, b_dec, k=None, pre_sub=True, thr=None):
    pre = (x - b_dec if pre_sub else x) @ W_enc + b_enc
    if k:
        v, i = pre.topk(k, dim=1)
        f = torch.zeros_like(pre).scatter(1, i, v.relu())
    elif thr is not None:
        f = pre * (pre > thr)
    else:
        f = pre.relu()
    return f @ W_dec + b_dec


def test_load_sparsify_openai_gemmascope_formats(tmp_path):
    from safetensors.torch import save_file

    d, F, k = 8, 20, 3
    W_enc, b_enc, W_dec, b_dec = torch.randn(d, F), torch.randn(F) * 0.1, torch.randn(F, d), torch.randn(d)
    x = torch.randn(6, d)
    # sparsify: encoder.weight [F, d]
    sp = tmp_path / "sparsify"
    sp.mkdir()
    save_file({"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
              str(sp / "sae.safetensors"))
    (sp / "cfg.json").write_text('{"activation": "topk", "k": 3, "num_latents": 20, "d_in": 8}')
    torch.testing.assert_close(load_sae(sp)(x), _dense_ref(x, W_enc, b_enc, W_dec, b_dec, k=k))
    # OpenAI: decoder.weight [d, F], pre_bias, latent_bias, activation as strings (weights_only-safe)
    oa = tmp_path / "openai.pt"
    torch.save({"encoder.weight": W_enc.T.contiguous(), "latent_bias": b_enc, "decoder.weight": W_dec.T.contiguous(),
                "pre_bias": b_dec, "activation": "TopK", "activation_state_dict": {"k": k}}, oa)
    torch.testing.assert_close(load_sae(oa)(x), _dense_ref(x, W_enc, b_enc, W_dec, b_dec, k=k))
    # Gemma Scope: params.npz (upper-case) and params.safetensors (lower-case), JumpReLU, no b_dec subtraction
    thr = torch.rand(F) * 0.5
    gs = tmp_path / "gs"
    gs.mkdir()
    np.savez(gs / "params.npz", W_enc=W_enc.numpy(), W_dec=W_dec.numpy(), b_enc=b_enc.numpy(), b_dec=b_dec.numpy(),
             threshold=thr.numpy())
    ref = _dense_ref(x, W_enc, b_enc, W_dec, b_dec, pre_sub=False, thr=thr)
    torch.testing.assert_close(load_sae(gs)(x), ref, rtol=1e-4, atol=1e-5)
    save_file({"w_enc": W_enc, "w_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr},
              str(tmp_path / "params.safetensors"))
    torch.testing.assert_close(load_sae(tmp_path / "params.safetensors")(x), ref, rtol=1e-4, atol=1e-5)


def test_bad_sae_files_give_one_line_errors(tmp_path):
    with pytest.raises(SaescopeError, match="no SAE found"):
        load_sae(tmp_path)
    sae = make("topk")
    sae.save(tmp_path / "s")
    cfg = (tmp_path / "s" / "cfg.json").read_text().replace('"d_sae": 64', '"d_sae": 65')
    (tmp_path / "s" / "cfg.json").write_text(cfg)
    with pytest.raises(SaescopeError, match="'W_enc' has shape \\(16, 64\\), cfg.json"):
        load_sae(tmp_path / "s")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(SaescopeError, match="not an OpenAI"):
        load_sae(tmp_path / "bad.pt")
    with pytest.raises(SaescopeError, match="architecture 'gated'"):
        sae_class("gated")


def test_saelens_loads_our_directories_with_identical_outputs(tmp_path):
    """Runs where sae_lens is installed (the bench environment); checked by hand with sae-lens 6.54.12."""
    sae_lens = pytest.importorskip("sae_lens")
    for arch in ARCHS:
        sae = make(arch)
        sae.save(tmp_path / arch)
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
        x = torch.randn(8, 16)
        torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["gauss", "relu", "ties", "all_equal", "small"])
def test_top_indices_equals_a_full_topk(case):
    """The prefiltered top-n (kernels.top_indices) selects exactly the set a full topk selects: Gaussian and
    ReLU'd values (mostly zeros), many exact ties (one value repeated), all equal, and a tensor too small to
    prefilter."""
    from saescope.sae.kernels import top_indices

    g = torch.Generator().manual_seed(3)
    M, n = (300, 40) if case == "small" else (1 << 16, 512)
    v = torch.randn(M, generator=g)
    if case == "relu":
        v = v.relu()
    elif case == "ties":
        v = torch.randint(0, 50, (M,), generator=g).float()
    elif case == "all_equal":
        v = torch.ones(M)
    got = top_indices(v, n)
    assert got.numel() == n and got.unique().numel() == n
    want = v.topk(n).values
    # the same multiset of values (with ties, which of the tied entries is taken may differ)
    torch.testing.assert_close(v[got].sort().values, want.sort().values, rtol=0, atol=0)
    if case in ("gauss", "small"):
        assert torch.equal(got.sort().values, v.topk(n).indices.sort().values)
