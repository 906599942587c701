"""Online training (no store): equal to store training on the same contexts, exact resume, the shuffle buffer."""

from __future__ import annotations

import pytest
import torch

from saescope.capture.capture import capture_corpus
from saescope.capture.config import CaptureConfig, CaptureOptions
from saescope.config import ModelConfig
from saescope.corpus import CorpusConfig
from saescope.sae import load_sae
from saescope.store import shuffled_batches
from saescope.store.iterate import ShuffleBuffer
from saescope.train.config import OnlineConfig, TrainerConfig
from saescope.train.online import train_online
from saescope.train.trainer import Trainer

HPS = "resid_post.1,mlp_out.0"


def recipe(**kw) -> TrainerConfig:
    return TrainerConfig(**{"arch": "topk", "k": 4, "width": 48, "batch_size": 32, "checkpoint_every": 0, **kw})


def test_online_with_a_whole_run_buffer_equals_store_training_on_the_same_contexts(tiny_dir, text_corpus, tmp_path):
    model, data = ModelConfig(model=str(tiny_dir), device="cpu"), CorpusConfig(str(text_corpus))
    store = capture_corpus(CaptureConfig(model=model, data=data, out=str(tmp_path / "store"), hookpoints=HPS,
                                         capture=CaptureOptions(context_len=16, shard_contexts=4, batch_size=2)))
    rows = store.rows
    big = rows + 1  # one buffer for the whole run: one permutation of every row, whatever the chunking
    steps = rows // 32
    online = train_online(OnlineConfig(model=model, data=data, trainer=recipe(tokens=steps * 32, buffer_rows=big),
                                       hookpoints=HPS, out=str(tmp_path / "online"), context_len=16,
                                       forward_contexts=3), progress=False)
    assert set(online) == {"resid_post.1", "mlp_out.0"} and all(r["steps"] == steps for r in online.values())
    for hp in ("resid_post.1", "mlp_out.0"):
        tr = Trainer(recipe(tokens=steps * 32, buffer_rows=big), store.hookpoints[hp], steps)
        tr.fit(shuffled_batches(lambda i, hp=hp: store.load_shard(hp, i), len(store.shards), 32, seed=0,
                                buffer_rows=big, shard_order="sequential", epochs=1), progress=False)
        ref = tr.finalize()
        got = load_sae(tmp_path / "online" / hp.replace(".", "_"))
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name).detach(), rtol=1e-5, atol=1e-6,
                                       msg=f"{hp} {name}")


def test_online_killed_and_resumed_equals_uninterrupted(tiny_dir, text_corpus, tmp_path, monkeypatch):
    model, data = ModelConfig(model=str(tiny_dir), device="cpu"), CorpusConfig(str(text_corpus))

    def cfg(out: str) -> OnlineConfig:  # a small buffer: drains mid-run, and a checkpoint lands inside a drain
        return OnlineConfig(model=model, data=data, trainer=recipe(tokens=12 * 32, buffer_rows=100, checkpoint_every=5),
                            hookpoints=HPS, out=str(tmp_path / out), context_len=16, forward_contexts=2)
    train_online(cfg("whole"), progress=False)
    calls = {"n": 0}
    step = Trainer.train_step

    def dying(self, x, y=None):
        calls["n"] += 1
        if calls["n"] > 2 * 7:  # both trainers did 7 steps: the checkpoint of step 5 is on disk
            raise KeyboardInterrupt
        return step(self, x, y)
    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_online(cfg("killed"), progress=False)
    monkeypatch.setattr(Trainer, "train_step", step)
    assert (tmp_path / "killed" / "online_checkpoint" / "checkpoint").is_dir()
    train_online(cfg("killed"), progress=False)  # --resume (the default)
    for hp in ("resid_post_1", "mlp_out_0"):
        a, b = load_sae(tmp_path / "whole" / hp), load_sae(tmp_path / "killed" / hp)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(a.__getattr__(name), b.__getattr__(name), msg=f"{hp} {name}")


def test_shuffle_buffer_mixes_within_its_window_and_restores_mid_drain():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.arange(s, s + 10, dtype=torch.float32)[:, None].repeat(1, 3) for s in range(0, 200, 10)]
    sb = ShuffleBuffer(batch_size=8, buffer_rows=40, seed=1)
    seen, first_drain = [], None
    for c in chunks:
        for idx in sb.add(c):
            b = sb.buf[idx]
            first_drain = first_drain if first_drain is not None else len(seen)
            seen += b[:, 0].long().tolist()
    seen += [int(v) for idx in sb.finish() for v in sb.buf[idx][:, 0].tolist()]
    assert len(seen) == len(set(seen)) and len(seen) >= 200 - 8  # every row at most once; all but < one batch
    assert max(seen[:16]) < 40 + 10  # a batch only draws from rows already in the window
    # mixing: the first drain takes rows from all over its window, not its first rows
    assert len({v // 10 for v in seen[:16]}) >= 3
    # state saved mid-drain and restored into a new buffer continues with the same batches
    ref = ShuffleBuffer(8, 40, seed=5)
    out_ref = [ref.buf[i].clone() for c in chunks for i in ref.add(c)]
    sb = ShuffleBuffer(8, 40, seed=5)
    out, it, saved_at = [], iter(chunks), None
    for c in it:
        gen = sb.add(c)
        for i in gen:
            out.append(sb.buf[i].clone())
            if len(out) == 3 and saved_at is None:  # in the middle of the first drain
                saved_at = sb.state_dict()
                break
        if saved_at is not None:
            break
    fresh = ShuffleBuffer(8, 40, seed=123)
    fresh.load_state_dict(saved_at)
    out += [fresh.buf[i].clone() for i in fresh.drain()]
    out += [fresh.buf[i].clone() for c in it for i in fresh.add(c)]
    assert len(out) == len(out_ref) and all(torch.equal(a, b) for a, b in zip(out, out_ref))
    del g


def test_online_two_gloo_ranks_match_one_process(tiny_dir, text_corpus, tmp_path):
    """Under torchrun each rank runs the model on its half of every batch of contexts; the rows are gathered, so the
    buffer and the global batches are the ones a single process has, and data-parallel training follows them."""
    import json

    from conftest import one_process_and_two_ranks

    args = ["train", "--model", str(tiny_dir), "--corpus", str(text_corpus), "--hookpoints", "resid_post.1",
            "--tokens", str(8 * 32), "--batch_size", "32", "--buffer_rows", "64", "--forward_contexts", "4",
            "--context_len", "16", "--width", "48", "--k", "4", "--checkpoint_every", "0", "--device", "cpu"]
    one_process_and_two_ranks(args, tmp_path / "single", tmp_path / "dp")
    a, b = (json.loads((tmp_path / n / "resid_post_1" / "metrics.json").read_text()) for n in ("single", "dp"))
    assert a["steps"] == b["steps"] == 8 and a["tokens"] == b["tokens"] and a["contexts"] == b["contexts"]
    sa, sb = load_sae(tmp_path / "single" / "resid_post_1"), load_sae(tmp_path / "dp" / "resid_post_1")
    torch.testing.assert_close(sa.b_dec, sb.b_dec, rtol=0.05, atol=0.05)  # the same first batch initialised both
    cos = torch.nn.functional.cosine_similarity(sa.W_dec, sb.W_dec, dim=1)
    assert cos.mean() > 0.95, f"decoder rows diverged: mean cosine {cos.mean():.3f}"


def test_capture_under_two_gloo_ranks_equals_one_process(tiny_dir, text_corpus, tmp_path):
    """Rank r captures the r-th shard of every round; rank 0 lists them: the same shards, rows and checksums as one
    process (the token budget included)."""
    import json

    from conftest import one_process_and_two_ranks

    args = ["capture", "--model", str(tiny_dir), "--corpus", str(text_corpus), "--hookpoints", "resid_post.1,mlp_out.0",
            "--context_len", "16", "--shard_contexts", "3", "--batch_size", "2", "--max_tokens", "400"]
    one_process_and_two_ranks(args, tmp_path / "one", tmp_path / "two")
    a, b = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("one", "two"))
    assert b["complete"] and len(a["shards"]) == len(b["shards"]) > 2
    assert [(s["contexts"], s["rows"], s["sha256"]) for s in a["shards"]] == \
        [(s["contexts"], s["rows"], s["sha256"]) for s in b["shards"]]


def test_online_kill_minus_9_and_resume_equals_uninterrupted(tiny_dir, text_corpus, tmp_path):
    """SIGKILL after a checkpoint, run the same command again (resume is the default): the SAEs equal an
    uninterrupted run's."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "saescope", "train", "--model", str(tiny_dir), "--corpus", str(text_corpus),
                "--hookpoints", "resid_post.1,mlp_out.0", "--tokens", str(60 * 32), "--batch_size", "32",
                "--buffer_rows", "100", "--forward_contexts", "2", "--context_len", "16", "--width", "48", "--k", "4",
                "--checkpoint_every", "5", "--device", "cpu", "--out", str(tmp_path / out)]
    env = {**os.environ, "SAESCOPE_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd("ref"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = tmp_path / "killed" / "online_checkpoint" / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["contexts"] > 0:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "resid_post_1" / "cfg.json").exists(), "training finished before the kill"
    subprocess.run(cmd("killed"), check=True, env=env, capture_output=True)
    for hp in ("resid_post_1", "mlp_out_0"):
        a, b = load_sae(tmp_path / "ref" / hp), load_sae(tmp_path / "killed" / hp)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=f"{hp} {name}")
