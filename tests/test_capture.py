"""Corpus capture, generate mode (seed format), seed import/export, and kill-resume of a capture subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from saescope.capture import capture_corpus, generate_seed_dataset
from saescope.capture.config import CaptureConfig, CaptureOptions
from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
from saescope.errors import SaescopeError
from saescope.store import ActivationStore
from saescope.store.seed import export_seed, import_seed


def test_corpus_capture_matches_direct_forward(tiny_gpt2, text_corpus, tmp_path):
    cfg = CaptureConfig(out=str(tmp_path / "s"), data=CorpusConfig(str(text_corpus)), hookpoints="resid_post.1,mlp_post_act.0",
                        capture=CaptureOptions(context_len=16, batch_size=3, shard_contexts=4))
    store = capture_corpus(cfg, tiny_gpt2)
    ctxs = list(iter_contexts(tiny_gpt2.tokenizer, iter_texts(str(text_corpus)), 16))
    assert store.rows == len(ctxs) * 15  # BOS is not stored
    assert len(store.shards) == -(-len(ctxs) // 4)
    tok = torch.cat([store.load_tokens(i)["token_ids"] for i in range(len(store.shards))])
    assert not (tok == tiny_gpt2.tokenizer.bos_token_id).any()
    # row k of context 5 equals the model's own hidden state
    ids = torch.tensor([ctxs[5]])
    with torch.no_grad():
        hs = tiny_gpt2.model(ids, output_hidden_states=True).hidden_states[2][0, 1:]
    acts = store.load_all("resid_post.1")
    ctx = torch.cat([store.load_tokens(i)["context"] for i in range(len(store.shards))])
    torch.testing.assert_close(acts[ctx == 5], hs)
    assert store.load_all("mlp_post_act.0").shape == (store.rows, tiny_gpt2.d_mlp)
    # the stage's face: run(cfg) resumes the complete store (nothing new) and says what is there
    from saescope.capture import run

    res = run(cfg, tiny_gpt2)
    assert (res.out, res.seed_format, res.rows) == (tmp_path / "s", False, len(ctxs) * 15)
    assert res.hookpoints == ["mlp_post_act.0", "resid_post.1"]


def test_jsonl_corpus_and_errors(tiny_gpt2, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"body": "the quick brown fox " * 20}) for _ in range(3)))
    cfg = CaptureConfig(out=str(tmp_path / "s"), data=CorpusConfig(str(p), text_field="body"),
                        capture=CaptureOptions(context_len=8, max_tokens=30))
    store = capture_corpus(cfg, tiny_gpt2)
    assert 30 <= store.rows < 30 + 7
    with pytest.raises(SaescopeError, match="no string field 'text'"):
        list(iter_texts(str(p)))
    with pytest.raises(SaescopeError, match="no such file"):
        list(iter_texts(str(tmp_path / "missing.txt")))


def test_generate_mode_writes_seed_format_and_round_trips(tiny_gpt2, tmp_path):
    out = tmp_path / "seed"
    prompts = ["Once upon a time", "What is the capital of France?"]
    md = generate_seed_dataset(tiny_gpt2, out, "resid_post.1", prompts, max_new_tokens=6)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta == md and len(meta["files"]) == 2
    for i, e in enumerate(meta["files"]):
        t = torch.load(out / f"activations_{i}.pt", weights_only=True)
        assert list(t.shape) == e["shape"] and t.shape[1] == 32 and t.shape[0] <= 6
        assert len(e["tokens"]) == len(e["token_ids"]) == t.shape[0] and e["prompt"] == prompts[i]
        # the rows are the activations of the generated tokens in a plain forward over prompt + generation
        full = torch.tensor([e["prompt_token_ids"] + e["token_ids"]])
        with torch.no_grad():
            hs = tiny_gpt2.model(full, output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(t, hs[len(e["prompt_token_ids"]):])
    store = import_seed(out, tmp_path / "store")
    back = export_seed(tmp_path / "store", tmp_path / "back")
    assert json.loads((back / "metadata.json").read_text()) == meta
    for i in range(2):
        a = torch.load(out / f"activations_{i}.pt", weights_only=True)
        b = torch.load(back / f"activations_{i}.pt", weights_only=True)
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert store.rows == sum(e["shape"][0] for e in meta["files"])
    with pytest.raises(SaescopeError, match="empty prompt"):
        generate_seed_dataset(tiny_gpt2, tmp_path / "x", "resid_post.1", ["ok", "  "], 3)
    from saescope.capture import run

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    res = run(CaptureConfig(out=str(tmp_path / "seed2"), generate=6, prompts=str(prompts_file),
                            hookpoints="resid_post.1"), tiny_gpt2)
    assert res.seed_format and res.hookpoints == ["resid_post.1"] and res.rows == store.rows


def test_seed_import_rejects_non_tensor_pickles(tmp_path):
    d = tmp_path / "seed"
    d.mkdir()
    torch.save({"not": "a tensor"}, d / "activations_0.pt")
    with pytest.raises(SaescopeError, match="expected a \\[seq_len, d\\] tensor"):
        import_seed(d, tmp_path / "s")
    (d / "activations_0.pt").write_bytes(b"garbage")
    with pytest.raises(SaescopeError, match="not a plain tensor file"):
        import_seed(d, tmp_path / "s")
    torch.save(torch.zeros(3, 4), d / "activations_0.pt")
    torch.save(torch.zeros(3, 5), d / "activations_1.pt")
    with pytest.raises(SaescopeError, match="disagrees"):
        import_seed(d, tmp_path / "s")


def _capture_cmd(model_dir, corpus, out):
    return [sys.executable, "-m", "saescope", "capture", "--model", str(model_dir), "--corpus", str(corpus),
            "--out", str(out), "--context_len", "32", "--batch_size", "1", "--shard_contexts", "1",
            "--hookpoints", "resid_post.2", "--device", "cpu"]


def test_kill_and_resume_equals_uninterrupted(tiny_dir, tmp_path):
    corpus = tmp_path / "big.txt"
    from conftest import TEXT

    corpus.write_text(TEXT * 30)
    env = {**os.environ, "SAESCOPE_LOG": "WARNING"}
    ref = tmp_path / "ref"
    subprocess.run(_capture_cmd(tiny_dir, corpus, ref), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_capture_cmd(tiny_dir, corpus, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # start-up (torch + transformers imports) is slow on a loaded machine
    while time.time() < deadline and proc.poll() is None:
        m = out / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"], "capture finished before it could be killed; make the corpus bigger"
    subprocess.run(_capture_cmd(tiny_dir, corpus, out), check=True, env=env, capture_output=True)
    a, b = ActivationStore(ref), ActivationStore(out)
    assert a.rows == b.rows and len(a.shards) == len(b.shards)
    assert torch.equal(a.load_all("resid_post.2"), b.load_all("resid_post.2"))
    ta = torch.cat([a.load_tokens(i)["context"] for i in range(len(a.shards))])
    tb = torch.cat([b.load_tokens(i)["context"] for i in range(len(b.shards))])
    assert torch.equal(ta, tb)


def test_cli_one_line_errors(tmp_path):
    from saescope.cli import main

    assert main(["store-info", "--store", str(tmp_path)]) == 2
    assert main(["capture", "--context_len", "1"]) == 2
    assert main(["nonsense"]) == 2


def test_shared_defaults_declared_once(monkeypatch):
    import torch

    from saescope.config import resolve_device, resolve_layer

    for available, expected in ((True, "cuda"), (False, "cpu")):  # "auto" follows what torch sees, at call time
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        assert resolve_device("auto") == expected
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_layer(-1, 18) == 9 and resolve_layer(3, 18) == 3
    with pytest.raises(SaescopeError, match="out of range"):
        resolve_layer(18, 18)


def test_cli_positional_directories(tmp_path, capsys):
    from saescope.cli import main
    from saescope.store import StoreMeta, StoreWriter

    w = StoreWriter(tmp_path / "s", StoreMeta(model="m", hookpoints={"resid_post.0": 4}, source={"kind": "t"}))
    w.add_shard({"resid_post.0": torch.randn(3, 4)}, torch.arange(3), torch.zeros(3), torch.arange(3), (0, 1))
    assert main(["store", "info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "rows       3 in 1 shards" in out and "verified 1 shards" in out


def test_shuffled_documents_are_a_deterministic_permutation(tmp_path):
    from saescope.corpus import shuffled_docs

    docs = [f"doc {i}" for i in range(50)]
    a = list(shuffled_docs(iter(docs), 64))
    assert sorted(a) == sorted(docs) and a != docs and a == list(shuffled_docs(iter(docs), 64))
    b = list(shuffled_docs(iter(docs), 8))  # a small buffer still spreads and keeps every document once
    assert sorted(b) == sorted(docs) and b != docs
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert list(CorpusConfig(str(p), shuffle_docs=64).texts()) == a


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny):
    """Prompts of different lengths decoded together (left padding) continue exactly as each decoded alone."""
    from saescope.capture.generate import _stop_ids, greedy_generate

    hm = tiny
    tok = hm.tokenizer
    prompts = [tok(p).input_ids for p in ("a b c d e f g", "x", "hello there my", "q r")]
    stops = _stop_ids(hm)
    together = greedy_generate(hm, prompts, 8, stops, batch=4)
    alone = [greedy_generate(hm, [p], 8, stops, batch=1)[0] for p in prompts]
    assert together == alone
    assert any(len(g) > 0 for g in together)
