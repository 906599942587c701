"""The loss a store-trained SAE adds to the model (ΔCE, KL) against its training cost: one SAE per setting on the
same store, each timed, then all evaluated together (one shared clean pass) on the same held-out contexts.

    python bench/ce_bench.py --store runs/ce/store --hookpoint resid_post.9 [--settings default,epochs4,...]
        [--contexts 256] [--out runs/ce_bench]

A setting is a name from SETTINGS (TrainerConfig fields over the defaults; `epochs` = passes over the training
shards). Prints one markdown table: setting, train seconds, FVU, L0, dead %, ΔCE ± SE, KL ± SE (nats/token, SE over
contexts). Train seconds are wall-clock on whatever else shares the machine: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

SETTINGS: dict[str, dict] = {
    "default": {},
    "epochs2": {"epochs": 2},
    "epochs4": {"epochs": 4},
    "epochs8": {"epochs": 8},
    "lr2x": {"lr_mult": 2.0},
    "lr2x_epochs4": {"lr_mult": 2.0, "epochs": 4},
    "lr0.5x_epochs4": {"lr_mult": 0.5, "epochs": 4},
    "w8192": {"width": 8192},
    "w8192_epochs4": {"width": 8192, "epochs": 4},
    "w16384_epochs4": {"width": 16384, "epochs": 4},
    "batch256": {"batch_size": 256},
    "batch256_epochs2": {"batch_size": 256, "epochs": 2},
    "batch256_epochs4": {"batch_size": 256, "epochs": 4},
    "batch256_lr2x_epochs2": {"batch_size": 256, "epochs": 2, "lr_mult": 2.0},
    "batch128_epochs2": {"batch_size": 128, "epochs": 2},
    "batch512_epochs4": {"batch_size": 512, "epochs": 4},
    "no_anneal_epochs4": {"k_anneal_frac": 0.0, "epochs": 4},
    "batchtopk_epochs4": {"arch": "batchtopk", "epochs": 4},
    "read_gain": {"input_weights": "read_gain"},
    "read_gain_batch256": {"input_weights": "read_gain", "batch_size": 256},
    "read_gain_batch256_epochs2": {"input_weights": "read_gain", "batch_size": 256, "epochs": 2},
    "e2e32": {"e2e_contexts": 32},
}


def trainer_config(name: str, train_rows: int):
    from saescope.train.config import TrainerConfig

    s = dict(SETTINGS[name])
    epochs, lr_mult = s.pop("epochs", 1), s.pop("lr_mult", 1.0)
    tc = replace(TrainerConfig(), **s)
    return replace(tc, tokens=int(epochs * train_rows), lr=tc.learning_rate() * lr_mult if lr_mult != 1 else 0.0)


def main() -> None:
    from saescope.store import ActivationStore
    from saescope.train.on_store import evaluate_many, split_shards, train_from_store
    from saescope.train.config import EvalConfig, TrainConfig, TrainerConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="runs/default/store")
    ap.add_argument("--hookpoint", default="resid_post.9")
    ap.add_argument("--settings", default="default,epochs2,epochs4,lr2x_epochs4,w8192_epochs4,batch256_epochs4")
    ap.add_argument("--contexts", type=int, default=256, help="held-out contexts for ΔCE/KL")
    ap.add_argument("--holdout_shards", type=int, default=TrainerConfig().holdout_shards)
    ap.add_argument("--out", default="runs/ce_bench", help="SAEs are kept here (reused when already trained)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    store = ActivationStore(args.store, verify=False)
    train_ids, _ = split_shards(store, args.holdout_shards)
    train_rows = sum(store.shards[i]["rows"] for i in train_ids)
    rows = []
    for name in args.settings.split(","):
        tc = replace(trainer_config(name, train_rows), holdout_shards=args.holdout_shards)
        out = Path(args.out) / args.hookpoint / name
        t0 = time.perf_counter()
        if not (out / "metrics.json").is_file():
            train_from_store(TrainConfig(trainer=tc, store=args.store, hookpoint=args.hookpoint, out=str(out),
                                         resume=False), progress=False)
            (out / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
        rows.append((name, tc, float((out / "train_seconds.txt").read_text())))
        print(f"trained {name}: {rows[-1][2]:.0f} s", flush=True)
    t0 = time.perf_counter()
    evs = evaluate_many([EvalConfig(sae=str(Path(args.out) / args.hookpoint / name), store=args.store,
                                    hookpoint=args.hookpoint, holdout_shards=args.holdout_shards,
                                    contexts=args.contexts) for name, _, _ in rows])
    eval_s = time.perf_counter() - t0
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"\n{args.hookpoint} of {store.model}, store {args.store} ({train_rows:,} training rows), "
          f"{evs[0]['spliced_contexts']} held-out contexts ({evs[0]['spliced_tokens']:,} predicted tokens), "
          f"evaluation {eval_s:.0f} s for {len(rows)} SAEs; {cpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| setting | arch | F | k | tokens | batch | LR | train s | FVU | L0 | dead % | ΔCE ± SE (nats) | KL ± SE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, tc, secs), ev in zip(rows, evs):
        print(f"| {name} | {tc.arch} | {tc.width} | {tc.k} | {tc.tokens:,} | {tc.batch_size} | "
              f"{tc.learning_rate():.2e} | {secs:.0f} | {ev['fvu']:.3f} | {ev['l0']:.1f} | "
              f"{100 * ev['dead_fraction']:.1f} | {ev['delta_ce']:.3f} ± {ev['delta_ce_se']:.3f} | "
              f"{ev['kl_div']:.3f} ± {ev['kl_div_se']:.3f} |")


if __name__ == "__main__":
    main()
