"""Train transcoders on (mlp_in.L, mlp_out.L) pairs from an activation store, with the SAE trainer and recipe.

    --kind transcoder | skip_transcoder   one per layer: <out>/layer_{L}/ (rows [mlp_in.L | mlp_out.L])
    --kind clt                            one cross-layer transcoder over layers 0..L−1: <out>/
                                          (rows [mlp_in.0 … mlp_in.L−1 | mlp_out.0 … mlp_out.L−1])

Each pair (or the CLT's 2L hookpoints) goes through the same shuffle buffer as one row, so inputs and targets
stay aligned token by token. Metrics per layer on the held-out shards: FVU of the MLP output, L0, dead fraction.
Online training (no store) shares `pair_groups` (train/online.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope import distributed as dist_utils
from saescope.errors import SaescopeError
from saescope.io import write_json
from saescope.train import metrics as M

log = logging.getLogger(__name__)


def pair_groups(kind: str, layers: list[int]) -> dict[str, list[str]]:
    """{output name: hookpoints whose rows, side by side, make one training row} for a transcoder kind."""
    if kind == "clt":
        if layers != list(range(len(layers))):
            raise SaescopeError(f"--kind clt covers layers 0..L−1 without gaps; got layers {layers}")
        return {"clt": [f"mlp_in.{l}" for l in layers] + [f"mlp_out.{l}" for l in layers]}
    return {f"layer_{l}": [f"mlp_in.{l}", f"mlp_out.{l}"] for l in layers}


def store_layers(hookpoints: Iterable[str], spec: str = "") -> list[int]:
    """Layers whose mlp_in and mlp_out are both in the store (all of them, or those named in `spec`, '3,4')."""
    have = set(hookpoints)
    paired = sorted(int(h.split(".")[1]) for h in have if h.startswith("mlp_in.") and f"mlp_out.{h.split('.')[1]}" in have)
    if not paired:
        raise SaescopeError("the store has no mlp_in.L/mlp_out.L pair; capture with --hookpoints 'mlp_in.*,mlp_out.*'")
    if not spec.strip():
        return paired
    try:
        want = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise SaescopeError(f"--layers {spec!r}: expected comma-separated layer numbers") from None
    missing = [l for l in want if l not in paired]
    if missing:
        raise SaescopeError(f"--layers: the store lacks the mlp_in/mlp_out pair of layer(s) {missing}; it has {paired}")
    return want


@torch.no_grad()
def evaluate_pairs(model: Any, split: Callable[[Tensor], tuple[Tensor, Tensor | None]], batches: Iterable[Tensor],
                   device: str = "cpu") -> dict[str, Any]:
    """Held-out metrics of a transcoder (per layer for a CLT): FVU of the MLP output, L0, dead fraction."""
    model.eval()
    sums: list[M.ReconstructionSums] = []
    for b in batches:
        x, y = split(b.to(device, torch.float32))
        assert y is not None
        f, y_hat = model.encode(x), model(x)
        if x.dim() == 2:
            x, y, f, y_hat = x[:, None], y[:, None], f[:, None], y_hat[:, None]
        sums = sums or [M.ReconstructionSums() for _ in range(y.shape[1])]
        for l, s in enumerate(sums):
            s.add(y[:, l], y_hat[:, l], f[:, l])
    if not sums or sums[0].n == 0:
        raise SaescopeError("no evaluation rows (the held-out shards are empty)")
    per_layer, dens = [], []
    for s in sums:
        assert s.fire_counts is not None
        d = M.density(s.fire_counts, s.n)
        dens.append(d)
        per_layer.append({**s.result(), "dead_fraction": M.dead_fraction(d), "dense_fraction": M.dense_fraction(d)})
    if len(per_layer) == 1:
        return {**per_layer[0], "_density": dens[0]}
    mean = {k: sum(p[k] for p in per_layer) / len(per_layer) for k in ("fvu", "l0", "dead_fraction")}
    return {**mean, "tokens": per_layer[0]["tokens"], "per_layer": per_layer, "_density": torch.stack(dens)}


def train_transcoders_from_store(cfg: Any, progress: bool = True) -> dict[str, Any]:
    """`saescope train --kind transcoder|skip_transcoder|clt`: cfg is a TrainConfig; returns {name: report}."""
    from saescope.config import resolve_device
    from saescope.store import ActivationStore, shuffled_batches
    from saescope.train.initialise import split_rows
    from saescope.train.memory import release_freed_memory
    from saescope.train.on_store import split_shards
    from saescope.train.trainer import Trainer

    dist_utils.init_from_env()
    store = ActivationStore(cfg.store)
    tc = cfg.trainer
    layers = store_layers(store.hookpoints, cfg.layers)
    if tc.batch_size % dist_utils.world_size():
        raise SaescopeError(f"--batch_size {tc.batch_size} is not divisible by the {dist_utils.world_size()} ranks")
    train_ids, eval_ids = split_shards(store, tc.holdout_shards)
    train_rows = sum(store.shards[i]["rows"] for i in train_ids)
    steps = max(1, (tc.tokens or train_rows) // tc.batch_size)
    device = resolve_device(cfg.device)
    reports = {}
    for name, hps in pair_groups(tc.kind, layers).items():
        out = Path(cfg.out) / name if tc.kind != "clt" else Path(cfg.out)
        n = len(layers) if tc.kind == "clt" else 1
        meta = {"model_name": store.model, "hook_name": hps[0] if n == 1 else "mlp_in.*",
                "hook_name_out": hps[-1] if n == 1 else "mlp_out.*", "context_size": store.manifest.get("context_len"),
                "prepend_bos": True, "dataset_path": str(store.root), "trained_with": "saescope"}

        def load(i: int, ids: list[int], hps: list[str] = hps) -> Tensor:
            return torch.cat([store.load_shard(h, ids[i]).float() for h in hps], dim=1)

        trainer = Trainer(tc, store.hookpoints[hps[0]], steps, metadata=meta, device=device, out=out,
                          d_out=store.hookpoints[hps[-1]], n_layers=n)
        if cfg.resume:
            trainer.try_resume()
        batches = shuffled_batches(lambda i: load(i, train_ids), len(train_ids), tc.batch_size, seed=tc.seed,
                                   buffer_rows=tc.buffer_rows, skip_batches=trainer.step)
        log.info("training %s %s (F=%d, k=%d) on %s: %d steps x %d tokens", tc.kind, tc.arch, tc.width, tc.k, name,
                 steps, tc.batch_size)
        result = trainer.fit(batches, progress=progress)
        trainer.save_checkpoint()
        model = trainer.finalize()
        batches.close()
        split = functools.partial(split_rows, kind=tc.kind, n_layers=n, d_in=trainer.d_in, d_out=trainer.d_out)
        del trainer, batches
        release_freed_memory()
        if not dist_utils.is_main():
            continue
        ev = evaluate_pairs(model, split, (load(i, eval_ids) for i in range(len(eval_ids))), device)
        density = ev.pop("_density")
        model.cpu().save(out, sparsity=density.clamp_min(1e-10).log10().float())
        last = result.history[-1] if result.history else {}
        reports[name] = {"layers": layers if n > 1 else [int(hps[0].split(".")[1])], "steps": result.steps,
                         "tokens": result.tokens, "train_tokens_per_s": last.get("tokens_per_s"), "heldout": ev,
                         "config": asdict(cfg)}
        write_json(out / "metrics.json", reports[name])
        write_json(out / "train_history.json", result.history)
    dist_utils.shutdown()
    return reports
