"""Diagnose feature recovery on the synthetic generator: how decoder rows evolve during one saescope training run.

Every `--every` steps: MMCS and fraction of true features found (cos > 0.9 / 0.7), split / merged / absorbed
features (see `saescope.train.synthetic.recovery`), found per firing-frequency band, and dead latents (no fire in
the trainer's dead window). Recipe options are TrainerConfig fields as JSON:

    python bench/recovery_diag.py --tokens 262144 --recipe '{"optimizer": "adam", "lr": 2e-3}'
"""

from __future__ import annotations

import argparse
import json

import torch

from saescope.train.config import TrainerConfig
from saescope.train.optim import ScheduleFreeSignSGD
from saescope.train.synthetic import realistic_toy, recovery
from saescope.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--every", type=int, default=32)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--recipe", default="{}")
    args = ap.parse_args()
    cfg = TrainerConfig(**{"width": 4096, "k": 32, "checkpoint_every": 0, **json.loads(args.recipe)})
    toy = realistic_toy(args.d, args.features)
    steps = args.tokens // cfg.batch_size
    tr = Trainer(cfg, args.d, steps)
    g = torch.Generator().manual_seed(1)
    W = tr.sae.W_dec
    for step in range(1, steps + 1):
        x = toy.sample(cfg.batch_size, g)
        if not tr.initialised:
            tr._initialise(x)
        stats = tr.train_step(x)
        if step % args.every == 0 or step == steps:
            dec = tr.opt.average(W) if isinstance(tr.opt, ScheduleFreeSignSGD) else W
            r = recovery(toy.features, dec.detach(), toy.probs)
            print(json.dumps({"step": step, "fvu": round(stats["fvu"], 3), "dead": round(stats["dead"], 3),
                              **{k: round(v, 3) for k, v in r.items()}}), flush=True)


if __name__ == "__main__":
    main()
