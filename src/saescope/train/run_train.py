"""`saescope train`'s library entry: one `run(cfg) -> TrainResult` over the three ways to train (an SAE on a store,
transcoders on a store's (mlp_in, mlp_out) pairs, dictionaries straight from the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.train.config import OnlineConfig, TrainConfig, TrainedDictionary, TrainResult


def run(cfg: TrainConfig | OnlineConfig, hm: Any = None, progress: bool = True) -> TrainResult:
    """Train what `cfg` asks for; an OnlineConfig trains from the model (`hm`, or cfg.model loaded). An SAE on a
    store uses `hm` for --input_weights auto and --e2e_contexts (None: loaded from the store's model if needed)."""
    kind = cfg.trainer.kind
    if isinstance(cfg, OnlineConfig):
        from saescope.train.online import train_online

        reports = train_online(cfg, hm, progress=progress)
        out = Path(cfg.out)
        return TrainResult(kind, [_online(h, r, out / h.replace(".", "_") if h != "clt" else out)
                                  for h, r in reports.items()], bool(reports))
    if kind != "sae":
        from saescope.train.transcoders import train_transcoders_from_store

        reports = train_transcoders_from_store(cfg, progress)
        out = Path(cfg.out)
        return TrainResult(kind, [_stored(name, r, out / name if kind != "clt" else out)
                                  for name, r in reports.items()], bool(reports))
    from saescope.train.on_store import train_from_store

    report = train_from_store(cfg, progress, hm=hm)
    if not report:
        return TrainResult(kind, [], main_rank=False)
    return TrainResult(kind, [_stored(report["hookpoint"], report, Path(cfg.out))])


def _stored(name: str, r: dict[str, Any], out: Path) -> TrainedDictionary:
    return TrainedDictionary(name, out, r["steps"], r["tokens"], r.get("train_tokens_per_s"), r["heldout"],
                             bool(r.get("heldout_is_training_data")))


def _online(name: str, r: dict[str, Any], out: Path) -> TrainedDictionary:
    metrics = {k: r[k] for k in ("fvu", "l0", "dead") if r.get(k) is not None}
    return TrainedDictionary(name, out, r["steps"], r["tokens"], r.get("train_tokens_per_s"), metrics)
