"""Feature recovery across regimes (issue 30): saescope's defaults, each LISTA-Matryoshka ingredient on and off, the
re-implemented LISTA-Matryoshka recipe and sparsify's default, on the fast ground-truth generator
(benchlib/regimes.py: `even` frequent and even firing like the issue's held-out set, `rare` skewed and mostly rare,
`hier` a hierarchy with correlated blocks), at equal tokens and, for the rows named in --wallclock, at the wall-clock
sparsify's default needed for the same tokens.

Every row of a regime runs in this one process on the same pre-drawn stream (drawing is not timed; only the
training steps are), one after another, so the tokens/s of all rows are comparable ratios; each is scored by the same
code on the same held-out rows: true features found (a decoder row at cos > 0.9 / > 0.7), by firing band, dead (never
active on the held-out rows), held-out FVU. Needs eai-sparsify for the sparsify row (the SynthSAEBench venv has it):

    .venv-synthsaebench/bin/python bench/regime_bench.py [--regimes even,rare,hier] [--widths 4096] [--tokens 262144]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.recipes import ALL_INGREDIENTS as ALL  # noqa: E402
from benchlib.recipes import INGREDIENTS, OFF, PUBLISHED  # noqa: E402

ROWS: dict[str, dict[str, Any] | None] = {
    "topk": dict(arch="topk"), "matryoshka": dict(arch="matryoshka"),
    **{f"matryoshka+{n}": dict(arch="matryoshka", **kw) for n, kw in INGREDIENTS.items()},
    "matryoshka+all": dict(arch="matryoshka", **ALL),
    **{f"matryoshka+all-{n}": dict(arch="matryoshka", **{k: v for k, v in ALL.items() if k not in kw}, **OFF[n])
       for n, kw in INGREDIENTS.items()},
    "matryoshka-nodetach": dict(arch="matryoshka", **OFF["detach"]),  # the default before 2026-12-08
    "topk+lista": dict(arch="topk", encoder="lista"),
    "topk-noanneal": dict(arch="topk", k_anneal_frac=0.0), "topk-signum": dict(arch="topk", optimizer="signum"),
    "topk-kanneal2q": dict(arch="topk", k_anneal_start=2.0, k_anneal_frac=0.25),
    "topk-noanneal-signum": dict(arch="topk", k_anneal_frac=0.0, optimizer="signum"),
    "topk-noanneal-nodecay": dict(arch="topk", k_anneal_frac=0.0, decay_frac=0.0),
    "topk-noanneal-lr2x": dict(arch="topk", k_anneal_frac=0.0, lr=-2.0),  # lr < 0: that multiple of the default
    "topk-noanneal+lista": dict(arch="topk", k_anneal_frac=0.0, encoder="lista"),
    "matryoshka-noanneal": dict(arch="matryoshka", k_anneal_frac=0.0),
    "matryoshka-kanneal2q": dict(arch="matryoshka", k_anneal_start=2.0, k_anneal_frac=0.25),
    "lista-matryoshka-ref": dict(PUBLISHED),
    "sparsify": None,
}
DEFAULT_ROWS = ("topk,matryoshka,matryoshka+lista,matryoshka+kdecay,matryoshka+detach,matryoshka+term,"
                "matryoshka+freqsort,matryoshka+all,topk+lista,lista-matryoshka-ref,sparsify")


def train_saescope(kw: dict[str, Any], width: int, k: int, data: torch.Tensor, steps: int, bs: int):
    from saescope.train.config import TrainerConfig
    from saescope.train.trainer import Trainer

    torch.manual_seed(0)
    if kw.get("lr", 0) < 0:  # a multiple of the default learning rate for this arch and width
        kw = {**kw, "lr": -kw["lr"] * TrainerConfig(arch=kw.get("arch", "topk"), width=width, batch_size=bs).learning_rate()}
    tr = Trainer(TrainerConfig(k=k, width=width, batch_size=bs, checkpoint_every=0, **kw), data.shape[1], steps)
    spent = 0.0
    for s in range(steps):
        x = batch(data, s, bs)
        t0 = time.perf_counter()
        if not tr.initialised:
            tr._initialise(x)
        tr.train_step(x)
        spent += time.perf_counter() - t0
    sae = tr.finalize()
    return sae.encode, sae.decode, sae.W_dec.detach(), spent


def train_sparsify(width: int, k: int, data: torch.Tensor, steps: int, bs: int):
    """sparsify's default: SparseCoder, SignSGD in schedulefree's wrapper (momentum 0.95, LR 5e-3/√(F/2^14)),
    b_dec = the first batch's mean, FVU loss, no AuxK (its Trainer's step for an SAE)."""
    from benchlib.peers import sparsify_pieces
    from schedulefree import ScheduleFreeWrapper

    SparseCoder, SparseCoderConfig, SignSGD = sparsify_pieces()
    torch.manual_seed(0)
    sae = SparseCoder(data.shape[1], SparseCoderConfig(num_latents=width, k=k), device="cpu")
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / math.sqrt(width / 2**14))]),
                              momentum=0.95)
    opt.train()
    spent = 0.0
    for s in range(steps):
        x = batch(data, s, bs)
        t0 = time.perf_counter()
        if s == 0:
            sae.b_dec.data = x.mean(0).clone()
        sae.set_decoder_norm_to_unit_norm()
        sae(x).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        spent += time.perf_counter() - t0
    opt.eval()  # the averaged weights, as sparsify saves them
    sae.set_decoder_norm_to_unit_norm()

    def enc(v: torch.Tensor) -> torch.Tensor:
        e = sae.encode(v)
        return torch.zeros(v.shape[0], width).scatter_(1, e.top_indices, e.top_acts)
    return enc, lambda f: f @ sae.W_dec + sae.b_dec, sae.W_dec.detach(), spent


def batch(data: torch.Tensor, s: int, bs: int) -> torch.Tensor:
    """Step s's batch; the stream wraps around (passes > 1) for rows given more tokens than it holds."""
    n = data.shape[0] // bs
    return data[(s % n) * bs:(s % n + 1) * bs]


@torch.no_grad()
def score(gen: Any, enc, dec, W_dec: torch.Tensor, held: torch.Tensor) -> dict[str, float]:
    from saescope.train.synthetic import recovery

    fired = torch.zeros(W_dec.shape[0], dtype=torch.bool)
    se = 0.0
    for h in held.split(4096):
        f = enc(h)
        se += float((h - dec(f)).pow(2).sum())
        fired |= (f != 0).any(0)
    r = recovery(gen.features, W_dec.float(), gen.probs)
    return {"fvu": se / float((held - held.mean(0)).pow(2).sum()), "dead": float((~fired).float().mean()), **r}


def run_row(name: str, gen: Any, data: torch.Tensor, held: torch.Tensor, width: int, k: int, steps: int,
            bs: int) -> dict[str, Any]:
    kw = ROWS[name]
    enc, dec, W, spent = train_sparsify(width, k, data, steps, bs) if kw is None else \
        train_saescope(kw, width, k, data, steps, bs)
    res = {"row": name, "width": width, "tokens": steps * bs, "seconds": spent, "tokens_per_s": steps * bs / spent,
           **score(gen, enc, dec, W, held)}
    print("  row " + json.dumps(res), file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    from benchlib.regimes import REGIMES, RegimeGenerator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regimes", default="even,rare,hier")
    ap.add_argument("--widths", default="4096")
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--d", type=int, default=768, help="activation dimension")
    ap.add_argument("--features", type=int, default=4096, help="true features of the generator")
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--heldout", type=int, default=16_384)
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, from {', '.join(ROWS)}")
    ap.add_argument("--row", action="append", default=[], metavar="NAME=JSON",
                    help='an extra row of TrainerConfig fields, e.g. \'mine={"arch": "topk", "lr": 2e-3}\' '
                         '(repeatable; named in --rows or appended to them)')
    ap.add_argument("--wallclock", default="topk,matryoshka,matryoshka+all",
                    help="rows also run for the seconds sparsify's row took (at their own tokens/s)")
    ap.add_argument("--stream-mult", type=float, default=2.0, help="stream drawn = this × --tokens")
    ap.add_argument("--out", default="", help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    rows = [r for r in a.rows.split(",") if r]
    for spec in a.row:
        name, _, js = spec.partition("=")
        ROWS[name] = json.loads(js)
        rows += [] if name in rows else [name]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {', '.join(ROWS)}")
    results, bs = [], a.batch_size
    steps = a.tokens // bs
    for regime in a.regimes.split(","):
        t0 = time.perf_counter()
        gen = RegimeGenerator(REGIMES[regime], n_features=a.features, d=a.d)
        g = torch.Generator().manual_seed(7)
        data = torch.cat([gen.sample(8192, g) for _ in range(math.ceil(a.tokens * a.stream_mult / 8192))])
        held = gen.sample(a.heldout, torch.Generator().manual_seed(8))
        print(f"{regime}: world + {data.shape[0]:,}-row stream in {time.perf_counter() - t0:.0f} s, "
              f"{gen.expected_active():.1f} active per token", file=sys.stderr, flush=True)
        for width in [int(w) for w in a.widths.split(",")]:
            here = [dict(run_row(r, gen, data, held, width, a.k, steps, bs), regime=regime, mode="tokens")
                    for r in rows]
            ref = next((r for r in here if r["row"] == "sparsify"), None)
            for name in [w for w in a.wallclock.split(",") if w and ref]:
                own = next((r for r in here if r["row"] == name), None)
                if own:
                    n = max(1, round(ref["seconds"] * own["tokens_per_s"] / bs))
                    here.append(dict(run_row(name, gen, data, held, width, a.k, n, bs), regime=regime,
                                     mode=f"wallclock {ref['seconds']:.0f}s"))
            results += here
        del data
    report(a, results)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


def report(a: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    import os
    import platform

    print(f"\nregime bench: {a.features:,} true features in d = {a.d}; TopK/BatchTopK k = {a.k}, batch {a.batch_size}, {a.tokens:,} tokens per row at equal "
          f"tokens; held-out {a.heldout:,}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs ({platform.machine()}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| regime | F | mode | row | tokens | train s | tokens/s | vs sparsify | FVU | dead | found >0.9 | found >0.7 "
          "| >0.9 p≥1e-2 | 1e-3..1e-2 | <1e-3 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        sp = next((s for s in results if s["regime"] == r["regime"] and s["width"] == r["width"]
                   and s["row"] == "sparsify"), None)
        vs = f"{r['tokens_per_s'] / sp['tokens_per_s']:.2f}x" if sp else "-"
        band = lambda key: "-" if math.isnan(r.get(key, float("nan"))) else f"{r[key]:.0%}"  # noqa: E731
        print(f"| {r['regime']} | {r['width']} | {r['mode']} | {r['row']} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {vs} | {r['fvu']:.3f} | {r['dead']:.1%} | {r['found_90']:.1%} | "
              f"{r['found_70']:.1%} | {band('found_90 p>=1e-2')} | {band('found_90 p 1e-3..1e-2')} | "
              f"{band('found_90 p<1e-3')} |")


if __name__ == "__main__":
    main()
