"""The compact record format against the JSON writer it replaces: every record of every dataset kind, byte for byte."""

from __future__ import annotations

import json

import pytest
import torch

from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
from saescope.collate.run_collate import collate
from saescope.compact_records import EXCERPTS_FILE, PACK_FILE, ExcerptTable
from saescope.corpus import CorpusConfig
from saescope.records import JsonRecords, loads, open_records

T = 8


def _saes_and_transcoders(hm, tmp_path) -> tuple[str, str]:
    from saescope.sae import SAEConfig, sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import save_transcoders

    g = torch.Generator().manual_seed(0)
    for hp in ("resid_post.1", "attn_out.1"):
        sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 16, k=3, metadata={"hook_name": hp}))
        torch.nn.init.normal_(sae.W_enc, generator=g)
        sae.save(tmp_path / hp.split(".")[0])
    plts = {}
    for layer in range(hm.n_layers):
        cls = transcoder_class(sae_class("topk"), False)
        t = cls(SAEConfig(cls.architecture, hm.d_model, 12, k=3, d_out=hm.d_model, apply_b_dec_to_input=False,
                          metadata={"hook_name": f"mlp_in.{layer}"}))
        torch.nn.init.normal_(t.W_enc, generator=g)
        plts[layer] = t.eval()
    save_transcoders(TranscoderSet(plts=plts), tmp_path / "tc")
    return f"{tmp_path / 'resid_post'},{tmp_path / 'attn_out'}", str(tmp_path / "tc")


def _collate(hm, tmp_path, corpus, out: str, records: str, saes: str, tcs: str, seed: int = 0,
             units: str = "mlp,heads") -> dict:
    return collate(CollateConfig(out=str(tmp_path / out), data=CorpusConfig(str(corpus)), layers="0,1", sae=saes,
                                 transcoders=tcs,
                                 collate=CollateOptions(excerpt_len=T, max_tokens=T * 40, batch_size=6, seed=seed, units=units,
                                                        records=records, sizes=SlotSizes(top_k=20, n_random=15,
                                                                                         pool=24))), hm)


def test_lazy_records_equal_the_json_writer_byte_for_byte(tiny, text_corpus, tmp_path):
    """MLP neurons, heads by token pair, SAE latents, an attention SAE by pair and transcoder latents, on GPT-2,
    Gemma 3 and Llama: every unit's lazily built JSON is the JSON writer's file, and the unit tables are equal."""
    hm = tiny
    saes, tcs = _saes_and_transcoders(hm, tmp_path)
    ref = _collate(hm, tmp_path, text_corpus, "json", "json", saes, tcs)
    new = _collate(hm, tmp_path, text_corpus, "compact", "compact", saes, tcs)
    kinds = {d["unit_type"] + ("-pair" if d["by_token_pair"] else "") for d in new["datasets"]}
    assert kinds == {"mlp_neurons", "attention_heads-pair", "sae_latents", "sae_latents-pair", "transcoder_latents"}
    assert [d["path"] for d in ref["datasets"]] == [d["path"] for d in new["datasets"]]
    dense = sparse = 0
    for d in new["datasets"]:
        a, b = tmp_path / "json" / hm.name / d["path"], tmp_path / "compact" / hm.name / d["path"]
        assert not list(b.glob("*.json"))[1:] and (b / PACK_FILE).is_file()  # summary.json only
        recs = open_records(b)
        assert isinstance(open_records(a), JsonRecords) and len(recs) == d["units"]
        dense += recs.dense
        sparse += not recs.dense
        for u in range(d["units"]):
            assert recs.record_text(u) == (a / f"{u}.json").read_text(encoding="utf-8"), (d["path"], u)
        assert (a / "summary.json").read_text() == (b / "summary.json").read_text(), d["path"]
        assert (a / "histogram.safetensors").read_bytes() == (b / "histogram.safetensors").read_bytes()
    assert dense and sparse  # both storages are covered (MLP/heads dense, dictionary latents CSR)
    with pytest.raises(FileNotFoundError):
        open_records(tmp_path / "compact" / hm.name / "mlp_neurons" / "1").record_text(hm.d_mlp)


def test_excerpt_table_is_shared_and_append_only(tiny_gpt2, text_corpus, tmp_path):
    """Excerpts are stored once per model folder; a second collation (another seed, other units) adds only the
    excerpts it needs and the first collation's records still read the same."""
    hm = tiny_gpt2
    saes, tcs = _saes_and_transcoders(hm, tmp_path)
    _collate(hm, tmp_path, text_corpus, "c", "compact", "", "")
    root = tmp_path / "c" / hm.name
    before = open_records(root / "mlp_neurons" / "0").record_text(3)
    n0 = len(ExcerptTable.read(root / EXCERPTS_FILE))
    assert 0 < n0 <= 40  # 40 excerpts collated; each stored once although thousands of slots refer to them
    _collate(hm, tmp_path, text_corpus, "c", "compact", saes, "", seed=1, units="")
    table = ExcerptTable.read(root / EXCERPTS_FILE)
    assert len(table) == n0  # same corpus: no excerpt added twice
    assert open_records(root / "mlp_neurons" / "0").record_text(3) == before
    assert all(table.strings(e) == hm.token_strings(table.ids(e)) for e in range(len(table)))  # no model needed
    rec = loads(open_records(root / "sae_latents" / "resid_post" / "1").record_text(2))
    assert rec.neuron_id.layer_index == 1 and len(rec.most_positive_activation_records) > 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert {d["path"] for d in manifest["datasets"]} >= {"mlp_neurons/0", "sae_latents/resid_post/1"}


def test_csr_rows_match_their_dense_rows():
    """The sparse groups' CSR rows (collate/pack.py) read back as the dense rows they stand for: any subset of rows,
    all of them, and each row's max with its implicit zeros (an all-negative row that is full keeps its max)."""
    import numpy as np

    from saescope.collate.pack import CsrRows

    rng = np.random.default_rng(0)
    R, L = 50, 20
    d = ((rng.random((R, L)) < 0.2) * rng.standard_normal((R, L))).astype(np.float32)
    d[3] = 0  # an empty row
    d[5] = -rng.random(L).astype(np.float32) - 0.1  # a full row of negatives
    nz = d != 0
    r, p = nz.nonzero()
    csr = CsrRows(np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64), p.astype(np.int32), d[r, p], (R, L))
    idx = np.array([3, 7, 0, 49, 7, 5])
    assert np.array_equal(csr.rows(idx), d[idx]) and np.array_equal(csr.dense(), d)
    assert np.array_equal(csr.row_max(), d.max(1))
