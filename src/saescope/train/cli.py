"""CLI entry points for `saescope train` and `saescope eval`."""

from __future__ import annotations

import json

from saescope.train.api import EvalConfig, TrainConfig, evaluate, train_from_store

__all__ = ["EvalConfig", "TrainConfig", "cli_eval", "cli_train"]


def format_metrics(m: dict) -> str:
    keys = ["tokens", "fvu", "explained_variance", "mse", "cosine", "l0", "l1", "dead_fraction", "dense_fraction",
            "shrinkage", "relative_reconstruction_bias", "ce_clean", "ce_with_sae", "ce_zero_ablation",
            "ce_loss_recovered", "kl_div"]
    return "\n".join(f"  {k:<30} {m[k]:.4f}" if isinstance(m[k], float) else f"  {k:<30} {m[k]}"
                     for k in keys if k in m)


def cli_train(cfg: TrainConfig) -> int:
    report = train_from_store(cfg)
    if report:
        print(f"SAE written to {cfg.out} ({report['steps']} steps, {report['tokens']:,} tokens, "
              f"{report['train_tokens_per_s'] or 0:,.0f} tokens/s)")
        print("held-out metrics:")
        print(format_metrics(report["heldout"]))
    return 0


def cli_eval(cfg: EvalConfig) -> int:
    m = evaluate(cfg)
    print(format_metrics(m))
    print(json.dumps({k: v for k, v in m.items() if k != "density_histogram"}))
    return 0
