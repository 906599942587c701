"""`saescope train` and `saescope eval`."""

from __future__ import annotations

import json
from typing import Any

METRIC_KEYS = ["delta_ce", "kl_div", "fvu", "l0", "dead_fraction", "tokens", "explained_variance", "mse", "cosine",
               "l1", "dense_fraction", "shrinkage", "relative_reconstruction_bias", "ce_clean", "ce_with_sae",
               "ce_zero_ablation", "ce_loss_recovered"]
"""Printed in this order: the loss the dictionary adds to the model first (ΔCE, KL), then reconstruction, sparsity."""


def format_metrics(m: dict[str, Any]) -> str:
    def row(k: str) -> str:
        v = m[k]
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        if f"{k}_se" in m:  # the standard error over contexts
            where = f"{m['spliced_from']} " if "spliced_from" in m else ""  # corpus: unseen articles
            text += f" ± {m[k + '_se']:.4f} nats/token (SE over {m.get('spliced_contexts', '?')} {where}contexts)"
        if k == "ce_loss_recovered" and not m.get("ce_loss_recovered_reliable", True):
            text += (f"  unreliable: zero-ablation adds only {m['ce_zero_ablation'] - m['ce_clean']:.3f} nats "
                     "(read delta_ce)")
        return f"  {k:<30} {text}"
    return "\n".join(row(k) for k in METRIC_KEYS if k in m)


ONLINE_FLAGS = ("--model", "--corpus", "--hookpoints", "--forward_contexts", "--online")


def train(argv: list[str]) -> int:
    from saescope.cli import parse, worker_exit
    from saescope.train.config import TrainConfig
    from saescope.train.run_train import run

    if any(a.split("=")[0].replace("-", "_").replace("__", "--", 1) in ONLINE_FLAGS for a in argv):
        return train_online(argv)
    cfg = parse(TrainConfig, argv, "saescope train")
    res = run(cfg)
    if not res.main_rank:
        worker_exit()
    if res.kind != "sae":
        for d in res.dictionaries:
            h = d.metrics
            print(f"{res.kind} {d.name}: {d.steps} steps, {d.tokens:,} tokens, {d.tokens_per_s or 0:,.0f} tokens/s; "
                  f"held-out FVU of the MLP output {h['fvu']:.4f}, L0 {h['l0']:.1f}, dead {h['dead_fraction']:.1%}")
        return 0
    d = res.dictionaries[0]
    print(f"SAE written to {d.out} ({d.steps} steps, {d.tokens:,} tokens, {d.tokens_per_s or 0:,.0f} tokens/s)")
    print("metrics on training data (--holdout_shards 0):" if d.heldout_is_training_data else "held-out metrics:")
    print(format_metrics(d.metrics))
    return 0


def train_online(argv: list[str]) -> int:
    """`saescope train --model M --corpus C --hookpoints 'resid_post.*' --tokens N`: straight from the model."""
    from saescope.cli import parse, worker_exit
    from saescope.train.config import OnlineConfig
    from saescope.train.run_train import run

    argv = [a for a in argv if a not in ("--online",)]
    cfg = parse(OnlineConfig, argv, "saescope train (online: --model/--corpus/--hookpoints)")
    res = run(cfg)
    if not res.main_rank:
        worker_exit()
    for d in res.dictionaries:
        print(f"{d.name}: {d.steps} steps, {d.tokens:,} tokens, {d.tokens_per_s or 0:,.0f} tokens/s, "
              f"FVU {d.metrics.get('fvu', float('nan')):.3f} → {d.out}")
    return 0


def evaluate(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.train.on_store import evaluate as run_eval
    from saescope.train.config import EvalConfig

    m = run_eval(parse(EvalConfig, argv, "saescope eval"))
    print(format_metrics(m))
    print(json.dumps({k: v for k, v in m.items() if k != "density_histogram"}))
    return 0


def eval_replacement(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.train.replacement import ReplacementConfig, evaluate_replacement

    m = evaluate_replacement(parse(ReplacementConfig, argv, "saescope eval-replacement"))
    for k, v in m.items():
        if k != "per_layer":
            print(f"  {k:<36} {v:.4f}" if isinstance(v, float) else f"  {k:<36} {v}")
    for l, r in m["per_layer"].items():
        print(f"  layer {l:<30} FVU {r['fvu']:.4f}  L0 {r['l0']:.1f}")
    print(json.dumps(m))
    return 0
