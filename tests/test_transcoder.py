"""Transcoders: the mlp_in/mlp_out hookpoints, replace_mlps, the transcoder classes, their formats and training."""

from __future__ import annotations

import torch

from saescope.models import HookedModel


def _ids(hm: HookedModel, n: int = 2, t: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(hm.tokenizer), (n, t), generator=g)
    ids[:, 0] = 2
    return ids


def _norm_before_mlp(hm: HookedModel, layer: int) -> torch.nn.Module:
    name = {"gpt2": "ln_2", "gemma": "pre_feedforward_layernorm", "llama": "post_attention_layernorm"}[hm.arch]
    return getattr(hm.layers[layer], name)


def test_mlp_in_and_out_read_exactly_what_the_mlp_reads_and_writes(tiny):
    """mlp_in.L = the pre-MLP norm of resid_pre + attn_out; mlp_out.L = a manual forward of the MLP module (and
    Gemma's post-feedforward norm) on it; the block decomposes into them."""
    ids = _ids(tiny)
    hps = [f"{k}.{l}" for l in range(tiny.n_layers) for k in ("resid_pre", "attn_out", "mlp_in", "mlp_out",
                                                                "resid_post")]
    c = tiny.run_with_cache(ids, None, hps, stop_early=False)
    for l in range(tiny.n_layers):
        mid = c[f"resid_pre.{l}"] + c[f"attn_out.{l}"]
        with torch.no_grad():
            torch.testing.assert_close(c[f"mlp_in.{l}"], _norm_before_mlp(tiny, l)(mid))
            torch.testing.assert_close(c[f"mlp_out.{l}"], tiny.mlp_forward(l, c[f"mlp_in.{l}"]))
        torch.testing.assert_close(mid + c[f"mlp_out.{l}"], c[f"resid_post.{l}"])
    assert tiny.width("mlp_in.1") == tiny.d_model


def test_replace_mlps_with_the_mlp_itself_keeps_the_logits(tiny):
    ids = _ids(tiny)
    with torch.no_grad():
        clean = tiny.model(ids).logits
        seen = []

        def oracle(layer, x_in, out):
            seen.append(layer)
            return tiny.mlp_forward(layer, x_in)

        with tiny.replace_mlps(oracle):
            same = tiny.model(ids).logits
        with tiny.replace_mlps(lambda layer, x_in, out: torch.zeros_like(out), layers=[1]):
            ablated = tiny.model(ids).logits
        after = tiny.model(ids).logits
    assert seen == list(range(tiny.n_layers))  # in order, once each
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(ablated, clean, atol=1e-4)
    assert torch.equal(after, clean)  # hooks removed


def test_patching_mlp_in_changes_what_the_mlp_writes(tiny):
    ids = _ids(tiny)
    with tiny.patch("mlp_in.1", lambda x: 2 * x):
        c = tiny.run_with_cache(ids, None, ["mlp_in.1", "mlp_out.1"])
    clean = tiny.run_with_cache(ids, None, ["mlp_in.1"])["mlp_in.1"]
    with torch.no_grad():
        torch.testing.assert_close(c["mlp_out.1"], tiny.mlp_forward(1, 2 * clean))


# ---- classes -------------------------------------------------------------------------------------------------

import pytest  # noqa: E402

from saescope.sae import SAEConfig, sae_class  # noqa: E402
from saescope.sae.transcoder import CLTConfig, CrossLayerTranscoder, TranscoderSet, transcoder_class  # noqa: E402


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "threshold" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _plt(arch: str, skip: bool, d_in: int = 6, d_out: int = 5, F: int = 12, k: int = 3):
    cls = transcoder_class(sae_class(arch), skip)
    t = cls(SAEConfig(cls.architecture, d_in, F, k=k, d_out=d_out, apply_b_dec_to_input=False,
                      metadata={"hook_name": "mlp_in.1"}))
    _randomise(t)
    if arch == "batchtopk":
        t.threshold.fill_(0.2)
    return t.eval()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard", "matryoshka_batchtopk"])
@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_forward_is_decode_of_encode_plus_skip(arch, skip):
    t = _plt(arch, skip)
    x = torch.randn(7, 6)
    f = t.encode(x)
    assert f.shape == (7, 12) and t.W_dec.shape == (12, 5)
    manual = f @ t.W_dec + t.b_dec + (x @ t.W_skip if skip else 0)
    torch.testing.assert_close(t(x), manual)
    torch.testing.assert_close(t.decode(f), f @ t.W_dec + t.b_dec)  # decode: latents and b_dec only
    pre = x @ t.W_enc + t.b_enc  # no b_dec subtracted from a transcoder's input
    torch.testing.assert_close(t.pre_acts(x), pre)
    out = t.training_forward(x, y=torch.randn(7, 5))
    assert out.x_hat.shape == (7, 5)
    if arch in ("topk", "jumprelu", "standard"):  # training forward = inference forward (same selection)
        torch.testing.assert_close(out.x_hat, t(x), rtol=1e-5, atol=1e-5)


def _planted_clt(skip: bool = False) -> CrossLayerTranscoder:
    clt = CrossLayerTranscoder(CLTConfig("jumprelu", n_layers=3, d_in=2, d_sae=2, d_out=2, skip=skip))
    with torch.no_grad():
        clt.W_enc.zero_()
        clt.b_enc.zero_()
        clt.threshold.fill_(0.5)
        for l in range(3):
            clt.W_enc[l, 0, 0] = 1.0  # latent 0 of layer l reads x_l[0]
            clt.W_dec[l].zero_()
            for j in range(3 - l):
                clt.W_dec[l][0, j, 0] = 10.0 ** (l + 1) * (j + 1)  # layer l → layer l+j writes 10^(l+1)·(j+1) on dim 0
        clt.b_dec.copy_(torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]))
    return clt.eval()


def test_clt_decoding_sums_contributions_from_all_earlier_layers():
    """Known answer: latent 0 of layer l fires with x_l[0] and writes 10^(l+1)·(m−l+1) to output m ≥ l."""
    clt = _planted_clt()
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.1, 0.0]]])  # [N=1, L=3, d]: layers 0 and 1 fire, 2 does not
    f = clt.encode(x)
    assert f[0, :, 0].tolist() == [1.0, 2.0, 0.0] and f[0, :, 1].tolist() == [0.0, 0.0, 0.0]
    y = clt(x)[0]
    # out_0 = 1·10·1;  out_1 = 1·10·2 + 2·100·1;  out_2 = 1·10·3 + 2·100·2 + 0
    assert y[:, 0].tolist() == [10.0, 220.0, 430.0]
    assert y[:, 1].tolist() == [1.0, 2.0, 3.0]
    ts = TranscoderSet(clt=clt)
    per_layer = ts.reconstruct({l: x[:, l] for l in range(3)})
    for l in range(3):
        torch.testing.assert_close(per_layer[l], y[None, l])
        torch.testing.assert_close(ts.encode_layer(l, x[:, l]), f[:, l])


@pytest.mark.parametrize("act", ["topk", "batchtopk", "jumprelu"])
def test_clt_training_forward_matches_inference_and_decode(act):
    clt = CrossLayerTranscoder(CLTConfig(act, n_layers=3, d_in=4, d_sae=8, d_out=5, k=2, skip=True))
    _randomise(clt)
    if act == "batchtopk":
        clt.threshold.fill_(0.1)
    x, y = torch.randn(6, 3, 4), torch.randn(6, 3, 5)
    out = clt.training_forward(x, y=y)
    assert out.x_hat.shape == (6, 3, 5) and out.fired.shape == (24,)
    naive = torch.stack([sum(clt.encode(x)[:, l] @ clt.W_dec[l][:, m - l] for l in range(m + 1)) + clt.b_dec[m]
                         + x[:, m] @ clt.W_skip[m] for m in range(3)], 1)
    torch.testing.assert_close(clt(x), naive)
    if act != "batchtopk":
        torch.testing.assert_close(out.x_hat, clt(x))


# ---- formats -------------------------------------------------------------------------------------------------

from saescope.sae.transcoder_io import export_circuit_tracer, load_transcoders, save_transcoders  # noqa: E402


def _plt_set(arch: str, skip: bool) -> TranscoderSet:
    plts = {}
    for l in range(3):
        t = _plt(arch, skip, d_in=6, d_out=6)
        _randomise(t, seed=l)
        if arch == "batchtopk":
            t.threshold.fill_(0.2)
        plts[l] = t
    return TranscoderSet(plts=plts, metadata={"model_name": "tiny"})


def _same_outputs(a: TranscoderSet, b: TranscoderSet, d: int = 6) -> None:
    assert a.layers == b.layers and a.is_clt == b.is_clt
    x = {l: torch.randn(5, d) for l in a.layers}
    ra, rb = a.reconstruct(x), b.reconstruct(x)
    for l in a.layers:
        assert torch.equal(a.encode_layer(l, x[l]), b.encode_layer(l, x[l]))
        assert torch.equal(ra[l], rb[l])


@pytest.mark.parametrize("arch,skip", [("jumprelu", False), ("jumprelu", True), ("topk", True), ("batchtopk", False)])
def test_plt_set_round_trips_in_saescope_and_circuit_tracer_layouts(tmp_path, arch, skip):
    from safetensors.torch import load_file

    ts = _plt_set(arch, skip)
    back = load_transcoders(save_transcoders(ts, tmp_path / "sc"))
    assert back[1].cfg.metadata["hook_name"] == "mlp_in.1" and back[1].cfg.metadata["hook_name_out"] == "mlp_out.1"
    _same_outputs(ts, back)
    ct = export_circuit_tracer(back, tmp_path / "ct")
    f = load_file(str(ct / "layer_2.safetensors"))
    assert f["W_enc"].shape == (12, 6) and f["W_dec"].shape == (12, 6)  # circuit-tracer's [F, d] encoder
    if skip:  # applied as x @ W_skip.T there
        torch.testing.assert_close(f["W_skip"], ts[2].W_skip.T)
    assert ("activation_function.threshold" in f) == (arch != "topk")
    _same_outputs(ts, load_transcoders(ct))


@pytest.mark.parametrize("skip", [False, True])
def test_clt_round_trips_in_saescope_and_circuit_tracer_layouts(tmp_path, skip):
    from safetensors.torch import load_file

    clt = CrossLayerTranscoder(CLTConfig("jumprelu", n_layers=3, d_in=6, d_sae=8, skip=skip))
    _randomise(clt)
    ts = TranscoderSet(clt=clt)
    back = load_transcoders(save_transcoders(ts, tmp_path / "sc"))
    _same_outputs(ts, back)
    ct = export_circuit_tracer(back, tmp_path / "ct")
    assert load_file(str(ct / "W_dec_1.safetensors"))["W_dec_1"].shape == (8, 2, 6)
    assert set(load_file(str(ct / "W_enc_0.safetensors"))) == {"W_enc_0", "b_enc_0", "b_dec_0", "threshold_0"} | (
        {"W_skip_0"} if skip else set())
    import yaml

    assert yaml.safe_load((ct / "config.yaml").read_text())["model_kind"] == "cross_layer_transcoder"
    _same_outputs(ts, load_transcoders(ct))


def test_gemma_scope_2_transcoders_and_clt_load_with_known_outputs(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d, F, L = 4, 6, 3
    # per-layer skip transcoders: transcoder/layer_{l}_width_16k_l0_small/params.safetensors
    raw = {}
    for l in range(L):
        p = tmp_path / "transcoder" / f"layer_{l}_width_16k_l0_small"
        p.mkdir(parents=True)
        raw[l] = {"w_enc": torch.randn(d, F, generator=g), "w_dec": torch.randn(F, d, generator=g),
                  "b_enc": torch.randn(F, generator=g) * 0.1, "b_dec": torch.randn(d, generator=g),
                  "threshold": torch.rand(F, generator=g) * 0.5,
                  "affine_skip_connection": torch.randn(d, d, generator=g)}
        save_file(raw[l], str(p / "params.safetensors"))
    ts = load_transcoders(tmp_path / "transcoder")
    x = torch.randn(5, d, generator=g)
    r = raw[1]
    z = x @ r["w_enc"] + r["b_enc"]
    want = (z * (z > r["threshold"])) @ r["w_dec"] + r["b_dec"] + x @ r["affine_skip_connection"]
    torch.testing.assert_close(ts.reconstruct({l: x for l in range(L)})[1], want)
    # a CLT: one file per layer, w_dec [F, L, d] of which layer l uses [:, l:]
    clt_dir = tmp_path / "clt"
    clt_dir.mkdir()
    craw = {l: {"w_enc": torch.randn(d, F, generator=g), "w_dec": torch.randn(F, L, d, generator=g),
                "b_enc": torch.zeros(F), "b_dec": torch.randn(d, generator=g), "threshold": torch.full((F,), 0.2)}
            for l in range(L)}
    for l in range(L):
        save_file(craw[l], str(clt_dir / f"params_layer_{l}.safetensors"))
    cts = load_transcoders(clt_dir)
    assert cts.is_clt and cts.layers == [0, 1, 2]
    xs = {l: torch.randn(5, d, generator=g) for l in range(L)}
    acts = {}
    for l in range(L):
        z = xs[l] @ craw[l]["w_enc"]
        acts[l] = z * (z > 0.2)
    want2 = sum(acts[l] @ craw[l]["w_dec"][:, 2] for l in range(L)) + craw[2]["b_dec"]
    torch.testing.assert_close(cts.reconstruct(xs)[2], want2)


def test_cli_export_circuit_tracer(tmp_path, capsys):
    from saescope.cli import main

    ts = _plt_set("jumprelu", True)
    save_transcoders(ts, tmp_path / "sc")
    assert main(["export", "circuit-tracer", str(tmp_path / "sc"), str(tmp_path / "ct"), "--scan", "mine"]) == 0
    assert "3 transcoders" in capsys.readouterr().out
    import yaml

    assert yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())["scan"] == "mine"
    _same_outputs(ts, load_transcoders(tmp_path / "ct"))
