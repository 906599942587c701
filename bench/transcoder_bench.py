"""saescope's transcoder training against sparsify `--transcode` on real MLP activations: tokens/s and held-out FVU
of the MLP output at equal wall-clock.

    .venv-synthsaebench/bin/python bench/transcoder_bench.py --store STORE [--layer 9] [--seconds 60]

STORE holds mlp_in.L and mlp_out.L of the layer (e.g. `saescope capture --hookpoints 'mlp_in.*,mlp_out.*'
--max_tokens 40000`); its last shard is held out. Rows (same width F, k and batch of tokens):
- saescope: `--kind skip_transcoder` with its recipe (Adam, LR warm-up/decay, k annealing, AuxK, resampling, input
  and output normalisation).
- sparsify default: `SparseCoder(transcode=True)` as `--transcode` trains it: no skip connection, SignSGD in a
  ScheduleFreeWrapper at its automatic LR 5e-3/√(F/2^14), FVU loss, no AuxK. (Its default batch, 32 sequences of
  2,048 tokens, is more than the store's training tokens: the batch is equalised in every row.)
- saescope `--optimizer signum`: the same with sign-SGD and schedule-free averaging (sparsify's optimizer).
- sparsify equalised: the same with `skip_connection=True`, the architecture saescope's skip transcoder has.
The rows train interleaved, one step each in turn, and each row's clock runs only during its own steps, so machine
load shifts them alike. saescope needs its step count up front (its LR and k schedules): it is set from a 10-step
timing probe, and its actual seconds are reported.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def load_pairs(store_dir: str, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from saescope.store import ActivationStore
    from saescope.train.on_store import split_shards

    st = ActivationStore(store_dir)
    train, held = split_shards(st, 1)

    def cat(hp: str, ids: list[int]) -> torch.Tensor:
        return torch.cat([st.load_shard(hp, i).float() for i in ids])
    return (cat(f"mlp_in.{layer}", train), cat(f"mlp_out.{layer}", train), cat(f"mlp_in.{layer}", held),
            cat(f"mlp_out.{layer}", held))


class Row:
    """One trainer: `step(x, y)` timed, `predict(x)` for the held-out FVU."""

    def __init__(self, name: str) -> None:
        self.name, self.seconds, self.steps, self.tokens = name, 0.0, 0, 0


def saescope_row(args: argparse.Namespace, d: int, steps: int, optimizer: str = "adam") -> Row:
    from saescope.train.config import TrainerConfig
    from saescope.train.trainer import Trainer

    row = Row(f"saescope skip_transcoder ({'its recipe' if optimizer == 'adam' else '--optimizer ' + optimizer})")
    tr = Trainer(TrainerConfig(kind="skip_transcoder", width=args.width, k=args.k, batch_size=args.batch_size,
                               checkpoint_every=0, tokens=steps * args.batch_size, optimizer=optimizer), d, steps,
                 d_out=d)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if not tr.initialised:
            tr._initialise(x, y)
        tr.train_step(x, y)
    row.step, row.done = step, lambda: tr.step >= steps  # type: ignore[attr-defined]
    row.predict = lambda x: tr.finalize()(x)  # type: ignore[attr-defined]
    return row


def sparsify_row(args: argparse.Namespace, d: int, skip: bool) -> Row:
    from benchlib.peers import sparsify_pieces
    from schedulefree import ScheduleFreeWrapper

    SparseCoder, SparseCoderConfig, SignSGD = sparsify_pieces()
    row = Row(f"sparsify --transcode{' (skip, equalised)' if skip else ' (default)'}")
    sc = SparseCoder(d, SparseCoderConfig(num_latents=args.width, k=args.k, transcode=True, skip_connection=skip),
                     device="cpu")
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sc.parameters(), lr=5e-3 / math.sqrt(args.width / 2**14))]),
                              momentum=0.95)
    opt.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        sc(x, y).fvu.backward()
        opt.step()
        opt.zero_grad()

    def predict(x: torch.Tensor) -> torch.Tensor:
        opt.eval()  # the averaged weights, as sparsify saves them
        with torch.no_grad():
            return sc(x).sae_out.float()
    row.step, row.done, row.predict = step, lambda: row.seconds >= args.seconds, predict  # type: ignore[attr-defined]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    x, y, hx, hy = load_pairs(args.store, args.layer)
    N, d = x.shape
    probe = saescope_row(args, d, 10**6)
    t0 = time.perf_counter()
    for i in range(10):
        probe.step(x[i * args.batch_size:(i + 1) * args.batch_size], y[i * args.batch_size:(i + 1) * args.batch_size])
    steps = max(10, int(args.seconds / ((time.perf_counter() - t0) / 10)))
    rows = [saescope_row(args, d, steps), saescope_row(args, d, steps, "signum"), sparsify_row(args, d, False),
            sparsify_row(args, d, True)]
    g = torch.Generator().manual_seed(0)
    perm, at = torch.randperm(N, generator=g), 0
    while not all(r.done() for r in rows):  # type: ignore[attr-defined]
        if at + args.batch_size > N:
            perm, at = torch.randperm(N, generator=g), 0
        idx = perm[at:at + args.batch_size]
        at += args.batch_size
        for r in rows:
            if r.done():  # type: ignore[attr-defined]
                continue
            t = time.perf_counter()
            r.step(x[idx], y[idx])  # type: ignore[attr-defined]
            r.seconds += time.perf_counter() - t
            r.steps, r.tokens = r.steps + 1, r.tokens + len(idx)
    var = (hy - hy.mean(0)).pow(2).sum()
    print(f"layer {args.layer}: {N:,} training tokens, {len(hx):,} held out; F={args.width}, k={args.k}, batch "
          f"{args.batch_size}, ~{args.seconds:.0f} s each, torch threads {torch.get_num_threads()}")
    print("| trainer | steps | tokens | seconds | tokens/s | held-out FVU |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        with torch.no_grad():
            fvu = float((hy - r.predict(hx)).pow(2).sum() / var)  # type: ignore[attr-defined]
        print(f"| {r.name} | {r.steps} | {r.tokens:,} | {r.seconds:.0f} | {r.tokens / r.seconds:,.0f} | {fvu:.3f} |")


if __name__ == "__main__":
    main()
