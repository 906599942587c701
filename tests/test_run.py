"""`saescope run` end to end on a tiny model: every stage runs, writes what the next one reads, a re-run reuses it,
and a changed option recomputes exactly the stages it affects."""

from __future__ import annotations

import dataclasses
import json

import pytest

from saescope.capture.config import CaptureOptions
from saescope.collate.config import CollateOptions
from saescope.config import ModelConfig
from saescope.corpus import CorpusConfig
from saescope.errors import SaescopeError
from saescope.records import read_unit
from saescope.run import RunConfig, run_pipeline
from saescope.train.config import TrainerConfig, TranscoderRunOptions

SAES = ["sae resid_post.1", "sae mlp_post_act.1", "sae mlp_out.1", "sae attn_out.1"]
STAGES = ["seed_dataset", "store", *SAES, "transcoders", "collated", "explanations"]
TC = TranscoderRunOptions(transcoder_width=16, transcoder_k=4, transcoder_tokens=640, transcoder_batch_size=64,
                          transcoder_buffer_rows=256, transcoder_forward_contexts=4, transcoder_eval_contexts=6)


def _cfg(tiny_dir, text_corpus, tmp_path, width: int = 64) -> RunConfig:
    return RunConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), data=CorpusConfig(str(text_corpus)),
                     out=str(tmp_path / "run"), generate=4, capture=CaptureOptions(max_tokens=1500, context_len=17),
                     train=TrainerConfig(width=width, k=4), transcoders=TC, whole_model_tokens=160,
                     collate=CollateOptions(max_tokens=320, excerpt_len=16, token_pairs=True),
                     no_serve=True)


def _recomputed(decisions: dict[str, str]) -> list[str]:
    return [name for name, d in decisions.items() if d != "reuse"]


def test_pipeline_runs_every_stage_and_reuses_them(tiny_dir, text_corpus, tmp_path):
    cfg = _cfg(tiny_dir, text_corpus, tmp_path)
    done, col_root, decisions = run_pipeline(cfg)
    out = tmp_path / "run"
    assert len(done) == 9 and all(path.exists() for _, path in done)
    assert all(w.split("(")[1].startswith("ΔCE ") for w, _ in done if w.startswith("SAE "))
    assert decisions == dict.fromkeys(STAGES, "new")
    meta = json.loads((out / "seed_dataset" / "metadata.json").read_text())
    assert meta and (out / "seed_dataset" / "activations_0.pt").is_file()
    for kind in ("resid_post", "mlp_post_act", "mlp_out", "attn_out"):
        ev = json.loads((out / "saes" / kind / "eval.json").read_text())
        assert 0 <= ev["fvu"] < 1 and ev["l0"] > 0 and "ce_loss_recovered" in ev
        arch = json.loads((out / "saes" / kind / "cfg.json").read_text())["architecture"]
        # TopK: exactly k per token at most; the residual SAE is BatchTopK, saved with its threshold as a JumpReLU
        # (a mean L0 of k on training batches, not a cap per token)
        if kind == "resid_post":
            assert arch == "jumprelu"
        else:
            assert arch == "topk" and ev["l0"] <= 4
        assert list(ev)[:2] == ["delta_ce", "delta_ce_se"] and ev["delta_ce_se"] >= 0  # the added loss leads
        assert ev["spliced_from"] == "corpus"  # the corpus's contexts after the store's: none trained on
    manifest = json.loads((col_root / tiny_dir.name / "manifest.json").read_text())
    # the seed's five kinds at the studied layer: MLP neurons, heads by token pair, MLP latents, attention latents by
    # token and by pair; every other layer's neurons and heads; every layer's transcoder latents
    whole = {f"{k}/{l}" for k in ("mlp_neurons", "attention_heads") for l in (0, 2)}
    whole |= {f"transcoder_latents/transcoders/{l}" for l in range(3)}
    assert {d["path"] for d in manifest["datasets"]} == {
        "mlp_neurons/1", "attention_heads/1", "sae_latents/resid_post/1", "sae_latents/mlp_post_act/1",
        "sae_latents/mlp_out/1", "sae_latents/attn_out/1", "sae_latents/attn_out-by-token-pair/1"} | whole
    store_rows = sum(x["rows"] for x in json.loads((out / "store" / "manifest.json").read_text())["shards"])
    for d in manifest["datasets"]:  # the store's contexts are the excerpts: neurons and latents read all of it
        needs_model = d["unit_type"] == "attention_heads" or d["by_token_pair"]
        assert d["tokens"] == (160 if d["path"] in whole else 320 if needs_model else store_rows), d["path"]
        rec = read_unit(col_root / tiny_dir.name / d["path"], 0)
        assert rec.neuron_id.neuron_index == 0 and rec.most_positive_activation_records
        scores = json.loads((col_root / tiny_dir.name / "explanations" / d["path"] / "scores.json").read_text())
        assert scores["summary"]["units"] > 0  # every dataset explained and scored
    _debug_links_resolve(col_root, tiny_dir.name)
    ev = json.loads((out / "transcoders" / "eval.json").read_text())  # the replacement model, held out
    assert sorted(ev["per_layer"]) == ["0", "1", "2"] and all(0 < r["fvu"] for r in ev["per_layer"].values())
    assert ev["top1_agreement_with_errors"] == 1.0 and ev["kl_with_errors"] < 1e-6 and ev["contexts"] == 6
    assert ev["train_tokens"] == 640 and 0 <= ev["top1_agreement_replaced"] <= 1
    stamp = (out / "saes" / "resid_post" / "sae_weights.safetensors").stat().st_mtime_ns
    again = run_pipeline(cfg)  # complete stages are reused, not redone
    assert [w for w, _ in again.done] == [w for w, _ in done]
    assert again.decisions == dict.fromkeys(STAGES, "reuse")
    assert (out / "saes" / "resid_post" / "sae_weights.safetensors").stat().st_mtime_ns == stamp

    # A changed SAE width recomputes the SAE and everything downstream, and nothing upstream.
    narrow = dataclasses.replace(cfg, train=TrainerConfig(width=32, k=4))
    res = run_pipeline(narrow)
    assert res.decisions["sae resid_post.1"] == res.decisions["collated"] == "changed"
    assert _recomputed(res.decisions) == [*SAES, "collated", "explanations"]
    assert json.loads((out / "saes" / "resid_post" / "cfg.json").read_text())["d_sae"] == 32
    manifest = json.loads((col_root / tiny_dir.name / "manifest.json").read_text())
    assert next(d for d in manifest["datasets"] if d["unit_type"] == "sae_latents")["units"] == 32
    scores = json.loads((res.done[-1][1] / "sae_latents" / "attn_out" / "1" / "scores.json").read_text())["units"]
    assert max(int(i) for i in scores) < 32  # no explanation of a latent the new SAE does not have

    # A changed collation budget recomputes only the collation and the explanations.
    fewer = dataclasses.replace(narrow, collate=CollateOptions(max_tokens=160, excerpt_len=16, token_pairs=True))
    assert _recomputed(run_pipeline(fewer).decisions) == ["collated", "explanations"]

    # A changed transcoder width recomputes the transcoders, the collation and the explanations.
    fewer = dataclasses.replace(fewer, transcoders=dataclasses.replace(TC, transcoder_width=24))
    assert _recomputed(run_pipeline(fewer).decisions) == ["transcoders", "collated", "explanations"]
    assert json.loads((out / "transcoders" / "layer_2" / "cfg.json").read_text())["d_sae"] == 24

    # Other interp options on the same records merge into the explanations: units the re-run does not redo are kept.
    expl_file = col_root / tiny_dir.name / "explanations" / "mlp_neurons" / "1" / "explanations.json"
    before = json.loads(expl_file.read_text())["units"]
    two = dataclasses.replace(fewer, interp=dataclasses.replace(fewer.interp, max_units=2, prompt_style="delphi"))
    assert _recomputed(run_pipeline(two).decisions) == ["explanations"]
    after = json.loads(expl_file.read_text())["units"]
    assert len(before) > 2 and set(after) == set(before)


def _debug_links_resolve(col_root, model: str) -> None:
    """The run's Debug page has no dead links: every neuron, head and SAE latent it ranks, on every layer, links to a
    record that the viewer serves."""
    from fastapi.testclient import TestClient

    from saescope.viewer.server import create_app

    client = TestClient(create_app(col_root))
    body = {"model": model, "prompt": "the cat sat on the mat and the dog", "target": " sat", "top": 1000}
    nodes = client.post("/api/debug", json=body).json()["nodes"]
    units = [n for n in nodes if n["kind"] in ("mlp", "head", "latent")]
    # the neurons and heads of the layers outside the studied one (whose SAEs stand for its own) and SAE latents
    assert {(n["kind"], n["layer"]) for n in units} >= {(k, l) for k in ("mlp", "head") for l in (0, 2)} | {
        ("latent", 1)}
    assert [n["name"] for n in units if not n.get("url")] == []
    for n in units:
        r = client.get(n["url"].replace("/u/", "/api/record/", 1))
        assert r.status_code == 200 and r.json()["record"]["neuron_id"]["neuron_index"] == n["index"], n["name"]


def test_run_cli_options_reach_every_stage():
    from saescope.cli import parse

    cfg = parse(RunConfig, ["--width", "512", "--k", "16", "--capture.max_tokens", "1000", "--collate.max_tokens",
                            "300", "--corpus", "x.jsonl", "--explainer", "openai:m", "--port", "9000",
                            "--train.batch_size", "512", "--arch", "batchtopk"], "saescope run")
    assert (cfg.train.width, cfg.train.k, cfg.train.batch_size, cfg.train.arch) == (512, 16, 512, "batchtopk")
    assert (cfg.capture.max_tokens, cfg.collate.max_tokens, cfg.data.corpus) == (1000, 300, "x.jsonl")
    assert (cfg.interp.explainer, cfg.view.port) == ("openai:m", 9000)
    # the transcoders' recipe: LR 1e-3, no dead-latent restarts, a least-squares skip start; both settable
    tr = cfg.transcoders.trainer()
    assert (tr.lr, tr.resample_tokens, tr.skip_init, tr.tokens) == (1e-3, 0, "lstsq", 16_384)
    cfg = parse(RunConfig, ["--transcoder_restarts", "--transcoder_lr", "0"], "saescope run")
    tr = cfg.transcoders.trainer()
    assert tr.resample_tokens == -1 and tr.learning_rate() == pytest.approx(1e-3 / (1024 / 2**14) ** 0.5)


def test_every_command_help_prints(capsys):
    """--help of every command exits 0 and shows its options (a '%' in a field docstring once crashed it)."""

    from saescope.cli import COMMANDS, main

    for cmd in COMMANDS:
        try:
            code = main([cmd, "--help"])
        except SystemExit as e:  # argparse's help exits
            code = e.code
        assert code == 0, cmd
        out = capsys.readouterr().out
        assert "usage:" in out, cmd
        assert "['cfg" not in out and "SlotSizes(" not in out and "(default: )" not in out, cmd  # reads like a tool
        if cmd == "train":
            assert "0 %)" in out  # the literal percent sign survives
        if cmd == "explain":
            assert "--null_baseline bool" in out and "--nonull_baseline" not in out


def test_residual_saes_take_resid_epochs():
    """The run's residual-stream SAEs get --resid_epochs passes and --resid_arch (the stage fingerprint sees both), the others
    --train.epochs; 0 leaves every SAE at --train.epochs."""
    from saescope.run import RunConfig, _Pipeline

    p = object.__new__(_Pipeline)
    p.cfg = RunConfig(resid_epochs=3.0)
    assert p.trainer_for("resid_post.4").epochs == 3.0 and p.trainer_for("resid_pre.2").epochs == 3.0
    assert p.trainer_for("mlp_out.4").epochs == p.cfg.train.epochs == 1.0
    p.cfg = RunConfig(resid_epochs=0)
    assert p.trainer_for("resid_post.4").epochs == 1.0
    # and --resid_arch (BatchTopK by default; '' = --train.arch), which the other SAEs never take
    assert p.trainer_for("resid_post.4").arch == "batchtopk" and p.trainer_for("mlp_out.4").arch == "topk"
    p.cfg = RunConfig(resid_arch="")
    assert p.trainer_for("resid_post.4").arch == p.cfg.train.arch == "topk"
    # and --resid_encoder (LISTA by default; '' = --train.encoder, linear)
    assert p.trainer_for("resid_post.4").encoder == "lista" and p.trainer_for("attn_out.4").encoder == "linear"
    p.cfg = RunConfig(resid_encoder="")
    assert p.trainer_for("resid_post.4").encoder == p.cfg.train.encoder == "linear"
    with pytest.raises(SaescopeError, match="--resid_encoder"):
        RunConfig(resid_encoder="ista")


def test_replacement_headline_reads_the_paired_with_errors_delta():
    """The with-errors ΔCE is the paired one on the checked contexts; float noise around 0 reads 0.000, not -0.000."""
    from saescope.run import replacement_headline

    ev = {"fvu": 0.394, "l0": 16.7, "dead_fraction": 0.09, "delta_ce": 32.9, "delta_ce_se": 3.02, "kl_replaced": 33.1,
          "top1_agreement_replaced": 0.097, "delta_ce_with_errors": -4e-5, "ce_with_errors": 3.471, "ce_clean": 3.476,
          "kl_with_errors": 0.0, "top1_agreement_with_errors": 1.0}
    line = replacement_headline(ev)
    assert "ΔCE 32.90 ± 3.02 nats" in line and "with error terms: ΔCE 0.000, KL 0.000, top-1 100%" in line
    del ev["delta_ce_with_errors"]  # an eval.json from before: the difference of the CEs
    assert "with error terms: ΔCE -0.005" in replacement_headline(ev)
