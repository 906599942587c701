"""What more training buys the residual SAE's ΔCE: train variants on one store, splice them on the same contexts.

    python bench/resid_sae_sweep.py --store runs/default/store --out runs/resid_sweep \
        "e2=--epochs 2" "e4=--epochs 4" "e2_w8k=--epochs 2 --width 8192" "e4_w8k=--epochs 4 --width 8192"

Each variant is `saescope train --hookpoint resid_post.L --batch_size 256 --input_weights read_gain
--holdout_shards H` plus its own options (a variant already trained in --out is reused); then every variant is
spliced into the model on the same held-out contexts (one shared clean pass per batch, so the rows' differences
are paired; `--spliced_from corpus`: the corpus's contexts after the store's, unseen articles) and one table is
printed: training seconds, ΔCE ± SE, KL, held-out FVU, contexts. docs/metrics.md has the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs/default/store")
    ap.add_argument("--out", default="runs/resid_sweep")
    ap.add_argument("--hookpoint", default="resid_post.9")
    ap.add_argument("--holdout_shards", type=int, default=3, help="held out of training; spliced contexts come from them")
    ap.add_argument("--contexts", type=int, default=256)
    ap.add_argument("--spliced_from", default="holdout", choices=("holdout", "corpus"),
                    help="corpus: contexts of the store's corpus after the store's (unseen articles; `saescope run`)")
    ap.add_argument("variants", nargs="+", help="name=options for `saescope train`")
    a = ap.parse_args()
    from saescope.train.config import EvalConfig
    from saescope.train.on_store import evaluate_many

    out, exe = Path(a.out), str(Path(sys.executable).with_name("saescope"))
    variants = dict(v.split("=", 1) for v in a.variants)
    seconds: dict[str, float] = {}
    for name, opts in variants.items():
        if not (out / name / "cfg.json").exists():
            t0 = time.perf_counter()
            subprocess.run([exe, "train", "--store", a.store, "--hookpoint", a.hookpoint, "--out", str(out / name),
                            "--batch_size", "256", "--input_weights", "read_gain", "--holdout_shards",
                            str(a.holdout_shards), *opts.split()], check=True)
            seconds[name] = time.perf_counter() - t0
    # target_se tiny and min_contexts 0: every variant is spliced on all the contexts (zero-ablation on 8 only)
    cfgs = [EvalConfig(sae=str(out / n), store=a.store, hookpoint=a.hookpoint, holdout_shards=a.holdout_shards,
                       contexts=a.contexts, target_se=1e-9, min_contexts=0, spliced_from=a.spliced_from)
            for n in variants]
    evs = evaluate_many(cfgs)
    (out / "sweep.json").write_text(json.dumps(dict(zip(variants, evs)), indent=1))
    print("| variant | options | train s | ΔCE ± SE (nats) | KL | held-out FVU | contexts |")
    print("|---|---|---:|---|---:|---:|---:|")
    for (name, opts), ev in zip(variants.items(), evs):
        s = f"{seconds[name]:.0f}" if name in seconds else "(reused)"
        print(f"| {name} | `{opts}` | {s} | {ev['delta_ce']:.3f} ± {ev['delta_ce_se']:.3f} | {ev['kl_div']:.3f} | "
              f"{ev['fvu']:.3f} | {ev['spliced_contexts']} |")


if __name__ == "__main__":
    main()
