"""`saescope run` end to end on a tiny model: every stage runs, writes what the next one reads, and a re-run reuses it."""

from __future__ import annotations

import json

from saescope.records import read_record
from saescope.config import ModelConfig
from saescope.run import RunConfig, run_pipeline


def test_pipeline_runs_every_stage_and_reuses_them(tiny_dir, text_corpus, tmp_path):
    cfg = RunConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), out=str(tmp_path / "run"), generate=4,
                    corpus=str(text_corpus), max_tokens=1500, context_len=16, width=64, k=4, collate_tokens=600,
                    no_serve=True)
    done, col_root = run_pipeline(cfg)
    out = tmp_path / "run"
    assert len(done) == 5 and all(path.exists() for _, path in done)
    meta = json.loads((out / "seed_dataset" / "metadata.json").read_text())
    assert meta and (out / "seed_dataset" / "activations_0.pt").is_file()
    ev = json.loads((out / "sae" / "eval.json").read_text())
    assert 0 <= ev["fvu"] < 1 and ev["l0"] <= 4
    manifest = json.loads((col_root / tiny_dir.name / "manifest.json").read_text())
    kinds = {d["unit_type"] for d in manifest["datasets"]}
    assert kinds == {"mlp_neurons", "attention_heads", "sae_latents"}
    sae_ds = next(d for d in manifest["datasets"] if d["unit_type"] == "sae_latents")
    rec = read_record(col_root / tiny_dir.name / sae_ds["path"] / "0.json")
    assert rec.neuron_id.neuron_index == 0 and rec.most_positive_activation_records
    stamp = (out / "sae" / "sae_weights.safetensors").stat().st_mtime_ns
    again, _ = run_pipeline(cfg)  # complete stages are reused, not redone
    assert [w for w, _ in again] == [w for w, _ in done]
    assert (out / "sae" / "sae_weights.safetensors").stat().st_mtime_ns == stamp
