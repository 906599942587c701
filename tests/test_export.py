"""Handing results to other tools: Neuronpedia's export layout, SAELens' registry, Gemma Scope 2 files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from saescope.errors import SaescopeError
from saescope.io import write_json
from saescope.records import ActivationRecord, NeuronId, NeuronRecord, summary_row, write_record
from saescope.sae import load_sae
from saescope.sae.base import SAEConfig
from saescope.sae.topk import TopKSAE

# Neuronpedia's documented fields (docs.neuronpedia.org "Exports" and its importer's models), typed: written here
# independently of saescope.export.neuronpedia.FIELDS so that a renamed field fails.
SCHEMA = {
    "feature": {"modelId": str, "layer": str, "index": int, "maxActApprox": float, "hasVector": bool, "vector": list,
                "hookName": str, "topkCosSimIndices": list, "topkCosSimValues": list, "neg_str": list,
                "neg_values": list, "pos_str": list, "pos_values": list, "frac_nonzero": float,
                "freq_hist_data_bar_heights": list, "freq_hist_data_bar_values": list,
                "logits_hist_data_bar_heights": list, "logits_hist_data_bar_values": list,
                "decoder_weights_dist": list, "neuron_alignment_indices": list, "neuron_alignment_values": list,
                "neuron_alignment_l1": list, "correlated_neurons_indices": list, "correlated_neurons_pearson": list,
                "correlated_neurons_l1": list, "correlated_features_indices": list,
                "correlated_features_pearson": list, "correlated_features_l1": list, "creatorId": str},
    "activation": {"id": str, "tokens": list, "modelId": str, "layer": str, "index": int, "maxValue": float,
                   "maxValueTokenIndex": int, "minValue": float, "values": list, "creatorId": str,
                   "dfaValues": list, "lossValues": list, "binMin": float, "binMax": float, "binContains": float,
                   "dataSource": str},
    "explanation": {"id": str, "modelId": str, "layer": str, "index": int, "description": str, "authorId": str,
                    "typeName": str, "explanationModelName": str},
}


def _ok(value, typ) -> bool:
    return isinstance(value, (int, float)) if typ is float else isinstance(value, typ) and not (
        typ is int and isinstance(value, bool))


@pytest.fixture
def run_dir(tmp_path, tiny_dir) -> Path:
    """A run folder as `saescope run` leaves it: one SAE, its collated latents, explanations, the store manifest."""
    from saescope.models import load_model

    hm = load_model(str(tiny_dir))
    run = tmp_path / "run"
    F, d, layer = 12, hm.d_model, 1
    sae = TopKSAE(SAEConfig("topk", d, F, k=2, metadata={"model_name": hm.name, "hook_name": f"resid_post.{layer}"}))
    sae.save(run / "saes" / "resid_post")
    write_json(run / "saes" / "resid_post" / "eval.json", {"delta_ce": 0.21234, "delta_ce_se": 0.00812, "kl_div": 0.2,
                                                         "l0": 2.0, "explained_variance": 0.5})
    write_json(run / "store" / "manifest.json", {"model": str(tiny_dir), "extra": {"model_spec": str(tiny_dir)}})
    mdir = run / "collated" / hm.name
    ds = f"sae_latents/resid_post/{layer}"
    rows, scores = [], {}
    for i in range(F):
        top = [ActivationRecord([0.0, (i + 1) * 0.5, 0.25], [" a", " b", " c"]),
               ActivationRecord([0.1 * i, 0.0, 0.0], [" d", " e", " f"])] if i != 3 else []  # latent 3 is dead
        rec = NeuronRecord(NeuronId(i, layer), [], None, None, 0.0, 1.0, 0.0, 0.0, top)
        write_record(mdir / "sae_latents" / "resid_post", rec)
        rows.append({**summary_row(rec, False), "density": 0.01 * i})
        if i % 2 == 0 and i != 3:
            scores[str(i)] = {"explanation": f"token b #{i}", "score": 0.5, "scores": {}, "failure": None}
    write_json(mdir / ds / "summary.json", {"unit_type": "sae_latents", "layer": layer, "units": rows})
    write_json(mdir / "explanations" / ds / "scores.json", {"units": scores})
    write_json(mdir / "explanations" / ds / "explanations.json", {"explainer": "baseline", "units": {}})
    write_json(mdir / "manifest.json", {"format": "saescope-collated", "model": hm.name, "excerpt_len": 3,
                                        "excerpts": 10, "corpus": {"store": "x"},
                                        "datasets": [{"unit_type": "sae_latents", "name": "resid_post",
                                                      "layer": layer, "path": ds, "units": F,
                                                      "by_token_pair": False,
                                                      "hookpoints": [f"resid_post.{layer}"]}]})
    return run


def test_neuronpedia_export_matches_the_schema_and_round_trips(run_dir, tmp_path):
    from saescope.cli import main
    from saescope.export.neuronpedia import read_export
    from saescope.records import read_unit

    assert main(["export", "neuronpedia", str(run_dir), str(tmp_path / "np"), "--batch_size", "5",
                 "--neighbours", "3"]) == 0
    (model_dir,) = (tmp_path / "np").iterdir()
    (src,) = model_dir.iterdir()
    assert src.name == "1-saescope-resid-post-12"
    for kind, folder in (("feature", "features"), ("activation", "activations"), ("explanation", "explanations")):
        files = sorted((src / folder).glob("batch-*.jsonl.gz"))
        assert files, folder
        for f in files:
            with gzip.open(f, "rt") as fh:
                for line in fh:
                    row = json.loads(line)
                    for field, typ in SCHEMA[kind].items():
                        assert field in row and _ok(row[field], typ), (f.name, field, row.get(field))
    assert len(list((src / "features").glob("*.gz"))) == 3  # 12 features in batches of 5
    records, expl, feats = read_export(src)
    mdir = next((run_dir / "collated").iterdir())
    for i in range(12):
        orig = read_unit(mdir / "sae_latents/resid_post/1", i)
        firing = [r for r in orig.most_positive_activation_records if max(r.activations) > 0]
        got = records.get(i, NeuronRecord(NeuronId(i, 1))).most_positive_activation_records
        assert [r.tokens for r in got] == [r.tokens for r in firing]
        for a, b in zip(got, firing):
            assert a.activations == pytest.approx(b.activations, abs=1e-5)
    assert expl == {i: f"token b #{i}" for i in (0, 2, 4, 6, 8, 10)}
    f5 = next(f for f in feats if f["index"] == 5)
    assert f5["maxActApprox"] == pytest.approx(3.0) and f5["frac_nonzero"] == pytest.approx(0.05)
    assert len(f5["pos_str"]) == 10 and f5["pos_values"] == sorted(f5["pos_values"], reverse=True)
    assert len(f5["topkCosSimIndices"]) == 3 and 5 not in f5["topkCosSimIndices"]
    assert (src / "sae" / "cfg.json").is_file() and load_sae(src / "sae").cfg.d_sae == 12
    # malformed: a feature line without a documented field names the file and the field
    bad = src / "features" / "batch-0.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps({"modelId": "m"}) + "\n")
    with pytest.raises(SaescopeError, match=r"batch-0.jsonl.gz: line 1 lacks field 'layer'"):
        read_export(src)


def test_export_refuses_a_folder_without_a_run(tmp_path):
    from saescope.export.neuronpedia import NeuronpediaExportConfig, export_neuronpedia

    with pytest.raises(SaescopeError, match="no collated/<model>/manifest.json"):
        export_neuronpedia(NeuronpediaExportConfig(run=str(tmp_path), out=str(tmp_path / "o")))


def test_saelens_registry_entry_and_loading_by_release(run_dir, tmp_path, capsys, monkeypatch):
    import yaml

    from saescope.cli import main

    assert main(["export", "saelens", str(run_dir), "--release", "my-release"]) == 0
    entry = yaml.safe_load(capsys.readouterr().out)
    assert entry["my-release"]["saes"] == [{"id": "resid_post.1", "path": "resid_post", "delta_ce": 0.2123,
                                            "delta_ce_se": 0.0081, "kl_div": 0.2, "l0": 2.0,
                                            "variance_explained": 0.5}]
    assert entry["my-release"]["conversion_func"] is None
    reg = tmp_path / "pretrained_saes.yaml"
    reg.write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("SAESCOPE_SAELENS_REGISTRY", str(reg))
    sae = load_sae("saelens:my-release:resid_post.1")
    ref = load_sae(run_dir / "saes" / "resid_post")
    torch.testing.assert_close(sae.W_dec, ref.W_dec)
    # from the Hugging Face hub cache layout, when repo_id is a hub repo whose files were downloaded before
    hub = tmp_path / "hf" / "hub" / "models--org--saes" / "snapshots" / "abc123"
    import shutil

    shutil.copytree(run_dir / "saes" / "resid_post", hub / "resid_post")
    entry["my-release"]["repo_id"] = "org/saes"
    reg.write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    torch.testing.assert_close(load_sae("saelens:my-release:resid_post.1").W_dec, ref.W_dec)
    with pytest.raises(SaescopeError, match="no SAE id 'nope'"):
        load_sae("saelens:my-release:nope")
    with pytest.raises(SaescopeError, match="no release 'other'"):
        load_sae("saelens:other:x")
    entry["my-release"]["repo_id"] = "org/absent"
    reg.write_text(yaml.safe_dump(entry))
    with pytest.raises(SaescopeError, match="files not on disk.*huggingface-cli download org/absent"):
        load_sae("saelens:my-release:resid_post.1")
    reg.write_text("my-release: [unclosed")
    with pytest.raises(SaescopeError, match="not valid YAML"):
        load_sae("saelens:my-release:resid_post.1")


def test_gemma_scope_2_sae_and_skip_transcoder_folders(tmp_path):
    g = torch.Generator().manual_seed(0)
    d, F = 6, 10
    w_enc, w_dec = torch.randn(d, F, generator=g), torch.randn(F, d, generator=g)
    b_enc, b_dec, thr = torch.randn(F, generator=g) * 0.1, torch.randn(d, generator=g), torch.rand(F, generator=g)
    skip = torch.randn(d, d, generator=g)
    x = torch.randn(5, d, generator=g)
    z = x @ w_enc + b_enc
    f = z * (z > thr)
    # the published layout: <site>/layer_<L>_width_<W>_l0_<size>/params.safetensors, lower-case keys
    sae_dir = tmp_path / "resid_post" / "layer_9_width_16k_l0_medium"
    sae_dir.mkdir(parents=True)
    save_file({"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr},
              str(sae_dir / "params.safetensors"))
    sae = load_sae(sae_dir)
    assert sae.cfg.metadata["hook_name"] == "resid_post.9" and sae.cfg.architecture == "jumprelu"
    torch.testing.assert_close(sae(x), f @ w_dec + b_dec, rtol=1e-5, atol=1e-5)
    tc_dir = tmp_path / "transcoder" / "layer_9_width_16k_l0_medium"
    tc_dir.mkdir(parents=True)
    save_file({"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr,
               "affine_skip_connection": skip}, str(tc_dir / "params.safetensors"))
    tc = load_sae(tc_dir)
    assert tc.cfg.architecture == "jumprelu_skip_transcoder" and tc.cfg.metadata["layer"] == 9
    torch.testing.assert_close(tc(x), f @ w_dec + b_dec + x @ skip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tc.encode(x), f)
    # saved in the SAELens layout and loaded back, W_skip included
    tc.save(tmp_path / "saved")
    torch.testing.assert_close(load_sae(tmp_path / "saved")(x), tc(x))
    # malformed: a cross-layer decoder, and a skip connection of the wrong shape
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"w_enc": w_enc, "w_dec": torch.randn(F, 3, d), "b_enc": b_enc, "b_dec": b_dec, "threshold": thr},
              str(bad / "params.safetensors"))
    with pytest.raises(SaescopeError, match="cross-layer"):
        load_sae(bad)
    save_file({"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr,
               "affine_skip_connection": torch.randn(d, d + 1)}, str(bad / "params.safetensors"))
    with pytest.raises(SaescopeError, match="W_skip of shape"):
        load_sae(bad)
