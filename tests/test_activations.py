"""The activation stream: one rule splits every consumer's work across torchrun ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from saescope.activations import ActivationStream, rank_slice, valid_mask

# The three consumers' rounds under 2 ranks, as (contexts, per rank): capture (2 shards of 3 contexts, then a round
# cut to a budget of 5), online training (5 contexts per forward, split evenly), collation (4 contexts per rank).
CONSUMERS = {"capture": [(6, 3), (5, 3)], "online": [(5, None)] * 3, "collate": [(8, 4)] * 3}

SCRIPT = r"""
import sys, torch
from saescope import distributed as dist
from saescope.activations import ActivationStream
from saescope.models import load_model
sys.path.insert(0, sys.argv[3])
from test_activations import CONSUMERS, contexts

dist.init_from_env()
hm = load_model(sys.argv[1])
out = {}
for name, rounds in CONSUMERS.items():
    stream = ActivationStream(hm, iter(contexts()), ["resid_post.1", "mlp_out.0"], batch_size=2)
    for i, (size, per) in enumerate(rounds):
        rnd = stream.next_round(size, per)
        rows = [f.rows["resid_post.1"] for f in stream.forwards(rnd)] or [stream.empty_rows(rnd)["resid_post.1"]]
        out[f"{name}.{i}.index"] = torch.arange(rnd.offset, rnd.offset + len(rnd.mine))
        out[f"{name}.{i}.gathered"] = dist.gather_rows(torch.cat(rows))  # rank order on every rank
torch.save(out, f"{sys.argv[2]}/rank{dist.rank()}.pt")
dist.shutdown()
"""


def contexts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [[2] + torch.randint(3, 300, (11,), generator=g).tolist() for _ in range(40)]


def test_rank_slice_covers_a_round_once():
    for n in range(0, 12):
        for world in (1, 2, 3):
            for per in (None, 2, 5):
                got = [i for r in range(world) for i in range(*rank_slice(n, r, world, per))]
                assert got == list(range(n if per is None else min(n, world * per))), (n, world, per)


def test_two_gloo_ranks_split_every_consumer_like_one_process(tiny_dir, tmp_path):
    """Under 2 gloo ranks, each round of each consumer's shape hands every context to exactly one rank with its global
    index, and the rows gathered in rank order are one process's rows for that round, bit for bit."""
    from conftest import free_port

    from saescope.models import load_model

    script = tmp_path / "stream.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "SAESCOPE_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(script), str(tiny_dir), str(tmp_path), os.path.dirname(__file__)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    hm = load_model(str(tiny_dir))
    ctx = contexts()
    for name, rounds in CONSUMERS.items():
        start = 0
        for i, (size, per) in enumerate(rounds):
            idx = torch.cat([rk[f"{name}.{i}.index"] for rk in ranks])
            assert idx.tolist() == list(range(start, start + size)), (name, i)  # each context once, in order
            ids = torch.tensor(ctx[start:start + size])
            ref = hm.run_with_cache(ids, None, ["resid_post.1"])["resid_post.1"][valid_mask(ids, {0, 2})]
            for rk in ranks:  # (batches differ from one forward of the round: equal up to float rounding)
                torch.testing.assert_close(rk[f"{name}.{i}.gathered"], ref.float(), rtol=1e-5, atol=1e-6)
            start += size


def test_one_process_stream_is_the_plain_forward(tiny_gpt2):
    hm = tiny_gpt2
    ctx = contexts()[:5]
    stream = ActivationStream(hm, iter(ctx), ["resid_post.0"], batch_size=2, start=7)
    rnd = stream.next_round(10)
    assert (rnd.start, rnd.size, rnd.offset, rnd.mine) == (7, 5, 7, ctx) and stream.next_round(10) is None
    fwds = list(stream.forwards(rnd))
    assert [f.first for f in fwds] == [7, 9, 11]
    ids = torch.tensor(ctx)
    ref = hm.run_with_cache(ids, None, ["resid_post.0"])["resid_post.0"][valid_mask(ids, {0, 2})]
    torch.testing.assert_close(torch.cat([f.rows["resid_post.0"] for f in fwds]), ref.float())
