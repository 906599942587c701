"""`saescope run`: every stage on the embedded default model, reusing whatever is already complete."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from saescope.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Run the whole pipeline: seed dataset, corpus capture, (then SAE, collation, explanations, viewer)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str = "runs/default"
    """Output directory; re-running reuses every complete stage."""
    layer: int = -1
    """Layer to study (-1 = the middle layer)."""
    generate: int = 50
    """Tokens generated per seed prompt."""
    corpus: str = "wiki"
    """Corpus for the activation store."""
    max_tokens: int = 200_000
    """Tokens captured into the store."""
    context_len: int = 128
    """Tokens per corpus context."""
    arch: str = "topk"
    """SAE architecture."""
    k: int = 32
    """SAE latents per token (TopK family)."""
    width: int = 4096
    """SAE latents."""
    collate_tokens: int = 32_768
    """Corpus tokens streamed for the collated records."""
    no_serve: bool = False
    """Do not serve the viewer at the end (it is only served when run from a terminal anyway)."""
    port: int = 8000
    """Viewer port."""


def run_pipeline(cfg: RunConfig) -> tuple[list[tuple[str, Path]], Path]:
    """Run (or reuse) every stage; returns [(what, where)] and the collated root for the viewer."""
    from saescope.capture import CaptureConfig, capture_corpus, generate_seed_dataset, read_prompts
    from saescope.corpus import CorpusConfig

    out = Path(cfg.out)
    hm = cfg.model.load()
    layer = cfg.layer if cfg.layer >= 0 else hm.n_layers // 2
    hookpoint = f"resid_post.{layer}"
    done: list[tuple[str, Path]] = []

    seed_dir = out / "seed_dataset"
    if (seed_dir / "metadata.json").exists():
        log.info("seed dataset already in %s", seed_dir)
    else:
        generate_seed_dataset(hm, seed_dir, hookpoint, read_prompts(""), cfg.generate)
    done.append(("seed dataset (activations_<i>.pt + metadata.json)", seed_dir))

    store_cfg = CaptureConfig(
        model=cfg.model, out=str(out / "store"), hookpoints=f"{hookpoint},mlp_post_act.{layer}", data=CorpusConfig(cfg.corpus),
        max_tokens=cfg.max_tokens, context_len=cfg.context_len,
    )
    store = capture_corpus(store_cfg, hm)
    done.append((f"activation store ({store.rows:,} tokens)", out / "store"))

    from saescope.train.api import EvalConfig, TrainConfig, evaluate, train_from_store
    from saescope.train.trainer import TrainerConfig

    sae_dir = out / "sae"
    if (sae_dir / "metrics.json").exists() and (sae_dir / "cfg.json").exists():
        log.info("SAE already trained in %s", sae_dir)
    else:
        train_from_store(TrainConfig(
            trainer=TrainerConfig(arch=cfg.arch, k=cfg.k, width=cfg.width), store=str(out / "store"),
            hookpoint=hookpoint, out=str(sae_dir), device=cfg.model.device))
    if not (sae_dir / "eval.json").exists():
        from saescope.io import write_json

        ev = evaluate(EvalConfig(sae=str(sae_dir), store=str(out / "store"), hookpoint=hookpoint), hm=hm)
        write_json(sae_dir / "eval.json", ev)
    from saescope.io import read_json

    ev = read_json(sae_dir / "eval.json")
    done.append((f"SAE {cfg.arch} F={cfg.width} (FVU {ev['fvu']:.3f}, L0 {ev['l0']:.1f}, "
                 f"CE recovered {ev.get('ce_loss_recovered', float('nan')):.3f})", sae_dir))

    from saescope.collate.run_collate import CollateConfig, collate

    col_root = out / "collated"
    manifest_path = col_root / hm.name / "manifest.json"
    if manifest_path.exists():
        log.info("collated records already in %s", col_root)
    else:
        collate(CollateConfig(model=cfg.model, out=str(col_root), data=CorpusConfig(cfg.corpus), layers=str(layer),
                              units="mlp,heads", sae=str(sae_dir), max_tokens=cfg.collate_tokens), hm)
    done.append((f"collated records (MLP neurons, heads, SAE latents at layer {layer})", col_root / hm.name))

    from saescope.interp.pipeline import InterpConfig, run_interp

    interp = run_interp(InterpConfig(root=str(col_root / hm.name), dataset=f"sae_latents/{sae_dir.name}/{layer}",
                                     explainer="baseline", simulator="baseline", max_units=cfg.width), hm=hm)
    done.append((f"explanations + scores (token-lookup baseline: mean {interp['mean_score']:.3f}, "
                 f"null {interp['mean_null_score']:.3f})", Path(interp['out'])))

    return done, col_root
