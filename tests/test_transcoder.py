"""Transcoders: the mlp_in/mlp_out hookpoints, replace_mlps, the transcoder classes, their formats and training."""

from __future__ import annotations

import math
import statistics

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
    torch.testing.assert_close(ts.reconstruct(x.transpose(0, 1)), y[:, None])  # stacked [L, N, d] form
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


# ---- training ------------------------------------------------------------------------------------------------

from saescope.train.trainer import Trainer, TrainerConfig  # noqa: E402


def _pairs(n_layers: int, d: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Rows [mlp_in.0 … | mlp_out.0 …] of a toy 'MLP' y_l = relu(x_l A_l) B_l (learnable by a transcoder)."""
    A = torch.randn(n_layers, d, 3 * d, generator=torch.Generator().manual_seed(7))
    B = torch.randn(n_layers, 3 * d, d, generator=torch.Generator().manual_seed(8)) / d
    x = torch.randn(n, n_layers, d, generator=g)
    y = torch.einsum("nlh,lhd->nld", torch.einsum("nld,ldh->nlh", x, A).relu(), B)
    return torch.cat([x.flatten(1), y.flatten(1)], 1)


@pytest.mark.parametrize("kind,arch", [("transcoder", "topk"), ("skip_transcoder", "batchtopk"), ("clt", "topk"),
                                       ("clt", "jumprelu")])
def test_transcoder_training_resumes_exactly_and_learns(kind, arch, tmp_path):
    """Checkpoint at step 10 of 20, a new Trainer resumes and ends where the uninterrupted run ends; the result
    explains most of the toy MLP's output variance (FVU well below the untrained model's)."""
    L = 2 if kind == "clt" else 1
    g = torch.Generator().manual_seed(0)
    rows = [_pairs(L, 8, 64, g) for _ in range(20)]
    # skip_init zeros: the least-squares start reads the first 64 batches of the stream, and this test hands the
    # first trainer only 10 (a real stream is long enough; resuming then restores the fitted skip)
    cfg = TrainerConfig(arch=arch, kind=kind, k=4, width=32, batch_size=64, checkpoint_every=10, lr=0.01,
                        skip_init="zeros")
    full = Trainer(cfg, 8, 20, n_layers=L)
    untrained = Trainer(cfg, 8, 20, n_layers=L)
    full.fit(iter(rows), progress=False)
    first = Trainer(cfg, 8, 20, out=tmp_path, n_layers=L)
    first.fit(iter(rows[:10]), progress=False)
    second = Trainer(cfg, 8, 20, out=tmp_path, n_layers=L)
    assert second.try_resume() and second.step == 10
    second.fit(iter(rows[10:]), progress=False)
    test = _pairs(L, 8, 256, g)
    x, y = full.split(test)
    a, b = second.finalize(), full.finalize()
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    from saescope.sae.base import fvu_loss

    untrained._initialise(*untrained.split(rows[0]))
    with torch.no_grad():
        assert float(fvu_loss(y, b(x))) < 0.7 * float(fvu_loss(y, untrained.finalize()(x)))


@pytest.fixture(scope="module")
def pair_store(tiny_dir, tmp_path_factory):
    """A store of mlp_in.*/mlp_out.* of the tiny Llama (captured once for this module's tests)."""
    from conftest import TEXT

    from saescope.capture import CaptureOptions
    from saescope.capture.capture import CaptureConfig, capture_corpus
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig

    d = tmp_path_factory.mktemp("pairs")
    (d / "corpus.txt").write_text(TEXT * 4)
    model, data = ModelConfig(model=str(tiny_dir), device="cpu"), CorpusConfig(str(d / "corpus.txt"))
    store = capture_corpus(CaptureConfig(model=model, data=data, out=str(d / "store"),
                                         hookpoints="mlp_in.*,mlp_out.*",
                                         capture=CaptureOptions(context_len=16, shard_contexts=4, batch_size=2)))
    return model, data, store


@pytest.mark.parametrize("kind", ["skip_transcoder", "clt"])
def test_online_transcoders_equal_store_training_and_report_fvu(kind, pair_store, tmp_path):
    """One forward feeds every layer: online training with a whole-run buffer equals training from a store of the
    same contexts; the store path reports the held-out FVU of the MLP output that the saved files reproduce."""
    from saescope.store import shuffled_batches
    from saescope.train.config import TrainConfig
    from saescope.train.on_store import train_from_store
    from saescope.train.online import OnlineConfig, train_online
    from saescope.train.transcoders import pair_groups

    model, data, store = pair_store
    rows, big = store.rows, store.rows + 1
    steps = rows // 32
    tc = TrainerConfig(arch="topk", kind=kind, k=4, width=48, batch_size=32, checkpoint_every=0, tokens=steps * 32,
                       buffer_rows=big)
    train_online(OnlineConfig(model=model, data=data, trainer=tc, out=str(tmp_path / "online"), context_len=16,
                              forward_contexts=3), progress=False)
    online = load_transcoders(tmp_path / "online")
    assert online.layers == [0, 1, 2] and online.is_clt == (kind == "clt")
    for name, hps in pair_groups(kind, [0, 1, 2]).items():
        n = 3 if kind == "clt" else 1
        tr = Trainer(tc, 32, steps, d_out=32, n_layers=n)
        tr.fit(shuffled_batches(lambda i, hps=hps: torch.cat([store.load_shard(h, i) for h in hps], 1),
                                len(store.shards), 32, seed=0, buffer_rows=big, shard_order="sequential", epochs=1),
               progress=False)
        ref = tr.finalize()
        got = online.clt if kind == "clt" else online[int(name.split("_")[1])]
        for p in ("W_enc", "b_enc", "b_dec") + (("W_skip",) if kind == "skip_transcoder" else ()):
            torch.testing.assert_close(getattr(got, p), getattr(ref, p).detach(), rtol=1e-5, atol=1e-6, msg=p)
    report = train_from_store(TrainConfig(trainer=TrainerConfig(arch="topk", kind=kind, k=4, width=48, batch_size=32,
                                                                checkpoint_every=0),
                                          store=str(store.root), out=str(tmp_path / "fromstore"),
                                          device="cpu"), progress=False)
    ts = load_transcoders(tmp_path / "fromstore")
    held = store.shards[-1:]
    x = {l: store.load_shard(f"mlp_in.{l}", len(store.shards) - 1).float() for l in range(3)}
    y = {l: store.load_shard(f"mlp_out.{l}", len(store.shards) - 1).float() for l in range(3)}
    with torch.no_grad():
        pred = ts.reconstruct(x)
    from saescope.train import metrics as M

    fvus = [M.fvu(y[l], pred[l]) for l in range(3)]
    if kind == "clt":
        got_fvu = [p["fvu"] for p in report["clt"]["heldout"]["per_layer"]]
    else:
        got_fvu = [report[f"layer_{l}"]["heldout"]["fvu"] for l in range(3)]
    assert held and all(abs(a - b) < 1e-4 for a, b in zip(fvus, got_fvu)), (fvus, got_fvu)


# ---- the replacement model -----------------------------------------------------------------------------------

def _model_transcoders(hm: HookedModel, kind: str, zero: bool = False) -> TranscoderSet:
    """Random transcoders whose outputs have the MLPs' scale (random tiny models have residuals of norm ~0.1:
    outputs 100x larger would make T(x) + (MLP(x) − T(x)) cancel catastrophically, as no trained transcoder does)."""
    ts = _random_model_transcoders(hm, kind, zero)
    with torch.no_grad():
        for name, p in ts.named_parameters():
            if any(k in name for k in ("W_dec", "b_dec", "W_skip")):
                p.mul_(0.02)
    return ts


def _random_model_transcoders(hm: HookedModel, kind: str, zero: bool) -> TranscoderSet:
    d = hm.d_model
    if kind == "clt":
        clt = CrossLayerTranscoder(CLTConfig("topk", n_layers=hm.n_layers, d_in=d, d_sae=16, k=4, skip=True))
        _randomise(clt)
        if zero:
            with torch.no_grad():
                for p in clt.parameters():
                    p.zero_()
        return TranscoderSet(clt=clt.eval())
    plts = {}
    for l in range(hm.n_layers):
        t = _plt("jumprelu", kind == "skip", d_in=d, d_out=d, F=16)
        _randomise(t, seed=l)
        if zero:
            with torch.no_grad():
                t.W_dec.zero_(), t.b_dec.zero_(), t.W_skip.zero_() if kind == "skip" else None
        plts[l] = t
    return TranscoderSet(plts=plts)


@pytest.mark.parametrize("kind", ["skip", "clt"])
def test_replacement_with_error_terms_reproduces_the_model(tiny, kind):
    from saescope.train import metrics as M
    from saescope.train.replacement import replacement_metrics, replacement_passes

    ts = _model_transcoders(tiny, kind)
    ids = _ids(tiny, n=3, t=9)
    lg = replacement_passes(tiny, ts, ids, lambda: tiny.model(input_ids=ids).logits.float())  # whole logits [B, T, V]
    with torch.no_grad():
        torch.testing.assert_close(lg["clean"], tiny.model(ids).logits.float())
    torch.testing.assert_close(lg["with_errors"], lg["clean"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(lg["replaced"], lg["clean"], atol=1e-3)  # the random transcoders are not the MLPs
    m = replacement_metrics(tiny, ts, ids, batch_size=2)
    assert m["top1_agreement_with_errors"] == 1.0 and m["top1_agreement_last_with_errors"] == 1.0
    assert abs(m["ce_with_errors"] - m["ce_clean"]) < 1e-4 and m["kl_with_errors"] < 1e-5
    assert m["kl_replaced"] > 0 and m["delta_ce"] == pytest.approx(m["ce_replaced"] - m["ce_clean"])
    clean_nll = torch.nn.functional.cross_entropy(lg["clean"][:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert m["ce_clean"] == pytest.approx(float(clean_nll), rel=1e-5) and m["tokens"] == 3 * 8
    # differential: the chunked losses against the whole logits, standard errors over contexts as a naive loop
    ce = torch.nn.functional.cross_entropy
    d_ce = [float(ce(lg["replaced"][i, :-1], ids[i, 1:]) - ce(lg["clean"][i, :-1], ids[i, 1:])) for i in range(3)]
    assert m["delta_ce"] == pytest.approx(statistics.fmean(d_ce), rel=1e-4, abs=1e-6)
    assert m["delta_ce_se"] == pytest.approx(statistics.stdev(d_ce) / math.sqrt(3), rel=1e-3, abs=1e-6)
    kl = M.kl_divergence(lg["clean"][:, :-1].flatten(0, 1), lg["replaced"][:, :-1].flatten(0, 1))
    assert m["kl_replaced"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-7)
    top = lg["replaced"].argmax(-1) == lg["clean"].argmax(-1)  # [3, 9]
    assert m["top1_agreement_replaced"] == pytest.approx(float(top[:, :-1].float().mean()))
    assert m["top1_agreement_last_replaced"] == pytest.approx(float(top[:, -1].float().mean()))
    # per-layer FVU and L0: each transcoder on the clean MLP input and output, BOS (ids == 2) left out
    cache = tiny.run_with_cache(ids, None, [f"{h}.{l}" for h in ("mlp_in", "mlp_out") for l in ts.layers])
    rows = ids != 2
    for l in ts.layers:
        x, y = cache[f"mlp_in.{l}"].float(), cache[f"mlp_out.{l}"].float()
        pred = ts.reconstruct({j: cache[f"mlp_in.{j}"].float() for j in ts.layers})[l].detach()
        fvu = float((y - pred)[rows].pow(2).sum() / (y[rows] - y[rows].mean(0)).pow(2).sum())
        assert m["per_layer"][str(l)]["fvu"] == pytest.approx(fvu, rel=1e-4)
        l0 = float((ts.encode_layer(l, x[rows]) != 0).sum(-1).float().mean())
        assert m["per_layer"][str(l)]["l0"] == pytest.approx(l0, rel=1e-5)
    assert m["fvu"] == pytest.approx(sum(r["fvu"] for r in m["per_layer"].values()) / len(ts.layers))
    # the with-errors and zero passes on the first batch only (check_contexts): the replaced numbers are those of
    # every context, CE recovered is taken on the checked ones
    m2 = replacement_metrics(tiny, ts, ids, batch_size=2, check_contexts=2)
    assert (m2["contexts"], m2["contexts_checked"], m["contexts_checked"]) == (3, 2, 3)
    assert m2["delta_ce"] == pytest.approx(m["delta_ce"]) and m2["kl_replaced"] == pytest.approx(m["kl_replaced"])
    assert abs(m2["delta_ce_with_errors"]) < 1e-5 and m2["kl_with_errors"] < 1e-5

    def first2(k: str) -> float:
        return float(ce(lg[k][:2, :-1].flatten(0, 1), ids[:2, 1:].flatten()))
    want = (first2("zero") - first2("replaced")) / (first2("zero") - first2("clean"))
    assert m2["ce_loss_recovered"] == pytest.approx(want, rel=1e-3, abs=1e-3)  # a ratio


def test_replacement_by_transcoders_that_write_nothing_is_zero_ablation(tiny_gpt2):
    """Known answer: transcoders whose decoders and biases are 0 turn the replacement into MLP zero-ablation,
    so CE loss recovered is 0 and the replaced CE equals the zero-ablated CE."""
    from saescope.train.replacement import replacement_metrics

    for kind in ("plain", "clt"):
        m = replacement_metrics(tiny_gpt2, _model_transcoders(tiny_gpt2, kind, zero=True), _ids(tiny_gpt2, 2, 8))
        assert m["ce_replaced"] == pytest.approx(m["ce_zero_ablation"], abs=1e-6)
        assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5)
        assert m["kl_replaced"] == pytest.approx(m["kl_zero"], abs=1e-6)


def test_cli_trains_transcoders_from_a_store_and_evaluates_the_replacement(pair_store, tiny_dir, tmp_path, capsys):
    import json

    from saescope.cli import main

    _, _, store = pair_store
    out = tmp_path / "tc"
    assert main(["train", "--kind", "transcoder", "--arch", "topk", "--store", str(store.root), "--out", str(out),
                 "--width", "32", "--k", "4", "--batch_size", "32", "--device", "cpu", "--layers", "0,2"]) == 0
    text = capsys.readouterr().out
    assert "transcoder layer_0" in text and "FVU of the MLP output" in text
    assert sorted(p.name for p in out.iterdir()) == ["layer_0", "layer_2"]
    assert main(["eval-replacement", "--transcoders", str(out), "--store", str(store.root), "--contexts", "4",
                 "--model", str(tiny_dir)]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["contexts"] == 4 and m["top1_agreement_with_errors"] == 1.0
    assert abs(m["ce_with_errors"] - m["ce_clean"]) < 1e-4 and 0 <= m["top1_agreement_replaced"] <= 1


# ---- transcoder latents as units -----------------------------------------------------------------------------

def test_transcoder_latents_are_collated_per_layer_and_served_like_sae_latents(tiny_dir, tmp_path):
    """--transcoders DIR collates every layer's latents (transcoder_latents/<set>/<layer>, reading mlp_in.L; the
    top activation equals a brute-force encoding); the viewer serves them and steers along mlp_out.L."""
    import itertools

    from fastapi.testclient import TestClient

    from conftest import TEXT
    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
    from saescope.models import load_model
    from saescope.records import read_unit
    from saescope.units import UnitSet
    from saescope.viewer.server import create_app

    hm = load_model(str(tiny_dir))
    plts = {l: _plt("topk", True, d_in=hm.d_model, d_out=hm.d_model, F=24, k=4) for l in range(hm.n_layers)}
    save_transcoders(TranscoderSet(plts=plts), tmp_path / "mytc")
    (tmp_path / "corpus.txt").write_text(TEXT * 4)
    T = 8
    cfg = CollateConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), out=str(tmp_path / "col"),
                        data=CorpusConfig(str(tmp_path / "corpus.txt")), transcoders=str(tmp_path / "mytc"),
                        collate=CollateOptions(units="", excerpt_len=T, max_tokens=T * 30,
                                               sizes=SlotSizes(top_k=20, n_random=15, pool=24)))
    manifest = collate(cfg, hm)
    paths = sorted(d["path"] for d in manifest["datasets"])
    assert paths == [f"transcoder_latents/mytc/{l}" for l in range(hm.n_layers)]
    ds = next(d for d in manifest["datasets"] if d["path"] == "transcoder_latents/mytc/1")
    assert ds["hookpoints"] == ["mlp_in.1"] and ds["units"] == 24
    ctxs = list(itertools.islice(iter_contexts(hm.tokenizer, iter_texts(str(tmp_path / "corpus.txt")), T + 1), 30))
    x = hm.run_with_cache(torch.tensor(ctxs), None, ["mlp_in.1"])["mlp_in.1"][:, 1:]
    with torch.no_grad():
        acts = plts[1].encode(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
    rec = read_unit(tmp_path / "col" / hm.name / ds["path"], 5)
    assert rec.max_activation == pytest.approx(float(acts[..., 5].max()), rel=1e-4)
    client = TestClient(create_app(tmp_path / "col"))
    r = client.get(f"/api/record/{hm.name}/transcoder_latents/mytc/1/5")
    assert r.status_code == 200 and r.json()["record"]["neuron_id"]["layer_index"] == 1
    assert client.get(f"/u/{hm.name}/transcoder_latents/mytc/1/5").status_code == 200
    wd = UnitSet("transcoder_latents", 1, "mytc", plts[1], "mlp_in.1").write_direction(hm, 5)
    assert wd.hookpoint == "mlp_out.1" and torch.equal(wd.direction, plts[1].W_dec[5].detach())


def test_cross_layer_transcoder_latents_are_collated_per_layer(tiny_dir, tmp_path):
    """--transcoders with a CLT: layer L's latents (read from mlp_in.L) are collated as transcoder_latents/<set>/L;
    the top activation equals a brute-force encode_layer, and the viewer probes and steers them (along the latent's
    write into mlp_out.L)."""
    import itertools

    from fastapi.testclient import TestClient

    from conftest import TEXT
    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
    from saescope.models import load_model
    from saescope.records import read_unit
    from saescope.viewer.server import create_app

    hm = load_model(str(tiny_dir))
    clt = CrossLayerTranscoder(CLTConfig("topk", n_layers=hm.n_layers, d_in=hm.d_model, d_sae=20, k=4))
    _randomise(clt)
    save_transcoders(TranscoderSet(clt=clt.eval()), tmp_path / "myclt")
    (tmp_path / "corpus.txt").write_text(TEXT * 4)
    T = 8
    manifest = collate(CollateConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), out=str(tmp_path / "col"),
                                     data=CorpusConfig(str(tmp_path / "corpus.txt")), transcoders=str(tmp_path / "myclt"),
                                     collate=CollateOptions(units="", excerpt_len=T, max_tokens=T * 30,
                                                            sizes=SlotSizes(top_k=20, n_random=15, pool=24))), hm)
    assert sorted(d["path"] for d in manifest["datasets"]) == [f"transcoder_latents/myclt/{l}" for l in range(3)]
    ctxs = list(itertools.islice(iter_contexts(hm.tokenizer, iter_texts(str(tmp_path / "corpus.txt")), T + 1), 30))
    cache = hm.run_with_cache(torch.tensor(ctxs), None, [f"mlp_in.{l}" for l in range(3)])
    for l in range(3):
        with torch.no_grad():
            acts = clt.encode_layer(l, cache[f"mlp_in.{l}"][:, 1:])  # [B, T, F]
        for i in (0, 7):
            rec = read_unit(tmp_path / "col" / hm.name / f"transcoder_latents/myclt/{l}", i)
            assert rec.max_activation == pytest.approx(float(acts[..., i].max()), rel=1e-4, abs=1e-6)
    client = TestClient(create_app(tmp_path / "col"))
    probe = client.post("/api/probe", json={"model": hm.name, "dataset": "transcoder_latents/myclt/2", "index": 7,
                                             "text": "the cat sat"})
    assert probe.status_code == 200, probe.text
    steer = client.post("/api/steer", json={"model": hm.name, "dataset": "transcoder_latents/myclt/1", "index": 3,
                                            "prompt": "the cat", "strength": 0.0, "tokens": 2})
    assert steer.status_code == 200 and steer.json()["steered"] == steer.json()["unsteered"], steer.text


def test_skip_starts_as_the_least_squares_affine_map():
    """Known answer: where the target is an affine map of the input (y = x A + c, plus a little noise), a skip
    transcoder's skip starts at A and its decoder bias at c, in raw units once the training scale is folded in, from
    Trainer.init_batches batches; `zeros` keeps W_skip at 0 and reads one batch; a CLT with skip gets one map per
    layer."""
    from saescope.sae.transcoder import CLTConfig, CrossLayerTranscoder
    from saescope.train.initialise import INIT_ROWS, fit_skip

    g = torch.Generator().manual_seed(0)
    n, d, L = 2048, 8, 2
    x = torch.randn(n, L, d, generator=g) * 3 + 1
    A, c = torch.randn(L, d, d, generator=g), torch.randn(L, d, generator=g)
    y = torch.einsum("nld,lde->nle", x, A) + c + 0.01 * torch.randn(n, L, d, generator=g)
    cfg = TrainerConfig(arch="topk", kind="skip_transcoder", k=2, width=16, batch_size=256, checkpoint_every=0)
    tr = Trainer(cfg, d, 10, d_out=d)
    assert tr.init_batches == INIT_ROWS // 256
    tr._initialise(x[:, 0], y[:, 0])
    sae = tr.finalize()
    torch.testing.assert_close(sae.W_skip.detach(), A[0], rtol=0.02, atol=0.01)  # the ridge shrinks by ~1 %
    torch.testing.assert_close(sae.b_dec.detach(), c[0], rtol=0.02, atol=0.1)
    plain = Trainer(TrainerConfig(arch="topk", kind="skip_transcoder", k=2, width=16, batch_size=256,
                                  checkpoint_every=0, skip_init="zeros"), d, 10, d_out=d)
    assert plain.init_batches == 1
    plain._initialise(x[:256, 0], y[:256, 0])
    assert not plain.sae.W_skip.detach().any()
    clt = CrossLayerTranscoder(CLTConfig("topk", L, d, 16, d_out=d, k=2, skip=True))
    fit_skip(clt, x, y)
    torch.testing.assert_close(clt.W_skip.detach(), A, rtol=0.02, atol=0.01)
    torch.testing.assert_close(clt.b_dec.detach(), c, rtol=0.02, atol=0.1)
