"""Activation store: round trip, resume identity, corruption errors, NaN accounting, shuffled iteration."""

from __future__ import annotations

import json

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.store import ActivationStore, StoreMeta, StoreWriter, shuffled_batches


def _meta(**kw):
    base = dict(model="m", hookpoints={"resid_post.0": 4, "mlp_out.0": 3}, context_len=5, source={"kind": "t"})
    base.update(kw)
    return StoreMeta(**base)


def _shard(w, n, c0, fill=None):
    acts = {h: torch.randn(n, d) if fill is None else torch.full((n, d), fill) for h, d in w.meta.hookpoints.items()}
    return acts, w.add_shard(acts, torch.arange(n), torch.full((n,), c0), torch.arange(n), (c0, c0 + 1))


def test_round_trip_and_resume(tmp_path):
    w = StoreWriter(tmp_path, _meta())
    a0, _ = _shard(w, 6, 0)
    a1, _ = _shard(w, 5, 1)
    s = ActivationStore(tmp_path)
    assert s.rows == 11 and len(s.shards) == 2
    assert torch.equal(s.load_shard("resid_post.0", 1), a1["resid_post.0"])
    assert torch.equal(s.load_all("mlp_out.0"), torch.cat([a0["mlp_out.0"], a1["mlp_out.0"]]))
    w2 = StoreWriter(tmp_path, _meta())  # same identity: resumes
    assert w2.next_context == 2 and w2.rows == 11
    with pytest.raises(SaescopeError, match="different context_len"):
        StoreWriter(tmp_path, _meta(context_len=9))
    assert StoreWriter(tmp_path, _meta(context_len=9), overwrite=True).rows == 0


def test_fp16_storage(tmp_path):
    w = StoreWriter(tmp_path, _meta(dtype="float16"))
    a, _ = _shard(w, 4, 0)
    got = ActivationStore(tmp_path).load_shard("resid_post.0", 0)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), a["resid_post.0"], atol=1e-2, rtol=1e-3)


def test_nonfinite_rows_are_dropped_and_counted(tmp_path):
    w = StoreWriter(tmp_path, _meta())
    acts = {h: torch.randn(5, d) for h, d in w.meta.hookpoints.items()}
    acts["mlp_out.0"][2, 1] = float("nan")
    acts["resid_post.0"][4, 0] = float("inf")
    kept = w.add_shard(acts, torch.arange(5), torch.zeros(5), torch.arange(5), (0, 1))
    assert kept == 3
    s = ActivationStore(tmp_path)
    assert s.manifest["nonfinite_rows_dropped"] == 2
    assert torch.isfinite(s.load_shard("mlp_out.0", 0)).all()
    assert s.load_tokens(0)["position"].tolist() == [0, 1, 3]


def test_corrupted_and_inconsistent_shards_fail_with_one_line(tmp_path):
    w = StoreWriter(tmp_path, _meta())
    _shard(w, 6, 0)
    path = tmp_path / "resid_post.0" / "shard_00000.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaescopeError, match="checksum mismatch") as e:
        ActivationStore(tmp_path).load_shard("resid_post.0", 0)
    assert "\n" not in str(e.value)
    with pytest.raises(SaescopeError, match="unreadable shard"):
        ActivationStore(tmp_path, verify=False).load_shard("resid_post.0", 0)
    path.unlink()
    with pytest.raises(SaescopeError, match="shard file missing"):
        ActivationStore(tmp_path).load_shard("resid_post.0", 0)
    # a manifest whose d disagrees with the shard
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["hookpoints"]["mlp_out.0"] = 7
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SaescopeError, match="manifest says d=7"):
        ActivationStore(tmp_path).load_shard("mlp_out.0", 0)
    with pytest.raises(SaescopeError, match="no hookpoint 'x.1'"):
        ActivationStore(tmp_path).load_shard("x.1", 0)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(SaescopeError, match="not valid JSON"):
        ActivationStore(tmp_path)


def test_shuffled_batches_cover_each_row_once_per_epoch_and_are_seeded():
    shards = [torch.arange(i * 10, i * 10 + 10, dtype=torch.float32)[:, None] for i in range(7)]
    it = list(shuffled_batches(lambda i: shards[i], 7, batch_size=5, buffer_rows=20, epochs=1, seed=3))
    got = torch.cat(it).flatten().sort().values
    assert torch.equal(got, torch.arange(70, dtype=torch.float32))
    first = torch.cat(it).flatten()[:20]
    assert not torch.equal(first, first.sort().values)  # shuffled
    again = list(shuffled_batches(lambda i: shards[i], 7, batch_size=5, buffer_rows=20, epochs=1, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(it, again))
    skipped = list(shuffled_batches(lambda i: shards[i], 7, batch_size=5, buffer_rows=20, epochs=1, seed=3,
                                    skip_batches=4))
    assert all(torch.equal(a, b) for a, b in zip(it[4:], skipped)) and len(skipped) == len(it) - 4
    # batches mix shards: the first batch draws from more than one shard
    assert len({int(x) // 10 for x in it[0].flatten()}) > 1


def _naive_shuffled(shards, batch_size, seed, buffer_rows, epochs, skip=0):
    """The buffer algorithm written with whole-buffer copies (concatenate, permute, slice): the reference."""
    g = torch.Generator().manual_seed(seed)
    buf, out = None, []
    for _ in range(epochs):
        for i in torch.randperm(len(shards), generator=g).tolist():
            buf = shards[i] if buf is None else torch.cat([buf, shards[i]])
            if buf.shape[0] < buffer_rows:
                continue
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            n_out = (buf.shape[0] // 2 // batch_size) * batch_size
            out += [buf[s:s + batch_size] for s in range(0, n_out, batch_size)]
            buf = buf[n_out:]
    if buf is not None and buf.shape[0] >= batch_size:
        buf = buf[torch.randperm(buf.shape[0], generator=g)]
        out += [buf[s:s + batch_size] for s in range(0, buf.shape[0] - batch_size + 1, batch_size)]
    return out[skip:]


@pytest.mark.parametrize("batch_size,buffer_rows,epochs,skip", [(32, 400, 2, 0), (64, 100, 1, 5), (16, 10_000, 3, 7)])
def test_shuffled_batches_in_place_buffer_equals_the_copying_reference(batch_size, buffer_rows, epochs, skip):
    g = torch.Generator().manual_seed(0)
    shards = [torch.randn(int(r), 8, generator=g) for r in torch.randint(50, 300, (13,), generator=g)]
    got = list(shuffled_batches(lambda i: shards[i], len(shards), batch_size, seed=1, buffer_rows=buffer_rows,
                                epochs=epochs, skip_batches=skip))
    want = _naive_shuffled(shards, batch_size, 1, buffer_rows, epochs, skip)
    assert len(got) == len(want) > 0
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_store_run_verifies_every_shard_and_says_what_is_there(tmp_path):
    """The store commands' face: run(StoreInfoConfig) reads every shard with its checksum (a truncated one fails
    there, not later) and returns the store's numbers; an unfinished capture is not `complete`."""
    from saescope.store import run
    from saescope.store.config import StoreInfoConfig

    w = StoreWriter(tmp_path, _meta())
    _shard(w, 6, 0)
    _shard(w, 5, 1)
    res = run(StoreInfoConfig(store=str(tmp_path)))
    assert (res.out, res.rows, res.shards, res.verified, res.complete) == (tmp_path, 11, 2, True, False)
    assert sorted(res.hookpoints) == ["mlp_out.0", "resid_post.0"] and res.summary == ActivationStore(tmp_path).info()
    w.finish()
    assert run(StoreInfoConfig(store=str(tmp_path), verify=False)).complete
    path = tmp_path / "mlp_out.0" / "shard_00001.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    assert not run(StoreInfoConfig(store=str(tmp_path), verify=False)).verified  # not read: not noticed
    with pytest.raises(SaescopeError, match="checksum mismatch"):
        run(StoreInfoConfig(store=str(tmp_path)))
