"""`saescope run`: every stage on one model, each reused only while the options that produced it are unchanged.

The run config nests the stage configs themselves (capture, train, collate, interp, view options), so every
stage option is reachable from `run` under the stage's own name (`--width`, `--k`; names that two stages share
are prefixed: `--capture.max_tokens`, `--collate.max_tokens`, `--train.batch_size`, ...). What the stages get
from the run (model, corpus, output folders, the studied layer) is declared here once. Stage reuse: see
`saescope.stages`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from saescope.capture.capture import CaptureOptions
from saescope.collate.run_collate import CollateOptions
from saescope.config import ModelConfig, resolve_layer
from saescope.corpus import CorpusConfig
from saescope.interp.pipeline import InterpOptions
from saescope.stages import Stage
from saescope.train.trainer import TrainerConfig
from saescope.viewer.server import ViewOptions

log = logging.getLogger(__name__)

# Options that change how fast or where a stage runs, never what it writes: left out of stage fingerprints.
NOT_OUTPUT = {"checkpoint_every", "concurrency", "timeout", "retries", "api_key_env"}


@dataclass
class RunConfig:
    """Run the whole pipeline: seed dataset, corpus capture, SAE, collated records, explanations (then the viewer)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureOptions = field(default_factory=lambda: CaptureOptions(max_tokens=200_000))
    train: TrainerConfig = field(default_factory=TrainerConfig)
    collate: CollateOptions = field(default_factory=lambda: CollateOptions(max_tokens=32_768))
    interp: InterpOptions = field(default_factory=InterpOptions)
    view: ViewOptions = field(default_factory=ViewOptions)
    out: str = "runs/default"
    """Output directory; a re-run reuses every stage whose options (and inputs) are unchanged."""
    layer: int = -1
    """Layer to study (-1 = the middle layer)."""
    generate: int = 50
    """Tokens generated per seed prompt (the seed activation dataset)."""
    no_serve: bool = False
    """Do not serve the viewer at the end (it is only served when run from a terminal anyway)."""


class RunResult(NamedTuple):
    done: list[tuple[str, Path]]
    """(what, where) per stage, for the report."""
    col_root: Path
    """The collated data root (what the viewer serves)."""
    decisions: dict[str, str]
    """Stage name → reuse, resume, new or changed."""


def _options(obj: Any) -> dict[str, Any]:
    d = asdict(obj)
    return {k: v for k, v in d.items() if k not in NOT_OUTPUT}


def run_pipeline(cfg: RunConfig) -> RunResult:
    """Run (or reuse) every stage, in order; each stage's fingerprint includes its inputs' fingerprints."""
    from saescope.io import read_json

    out = Path(cfg.out)
    hm = cfg.model.load()
    layer = resolve_layer(cfg.layer, hm.n_layers)
    hookpoint = f"resid_post.{layer}"
    model_id = {"model": cfg.model.model, "dtype": cfg.model.dtype}
    done: list[tuple[str, Path]] = []
    decisions: dict[str, str] = {}

    def start(stage: Stage) -> bool:
        """Decide, say so in one line, prepare; True when the stage must (re)compute."""
        decision, why = stage.decide()
        decisions[stage.name] = decision
        log.info("stage %s", why)
        if decision == "reuse":
            return False
        stage.begin(decision)
        return True

    # 1. the seed activation dataset: the 7 seed prompts, greedy generation, the studied layer's resid_post
    from saescope.capture import generate_seed_dataset, read_prompts

    seed = Stage("seed_dataset", out / "seed_dataset", {**model_id, "hookpoint": hookpoint, "generate": cfg.generate}, {})
    if start(seed):
        generate_seed_dataset(hm, seed.path, hookpoint, read_prompts(""), cfg.generate)
        seed.finish()
    done.append(("seed dataset (activations_<i>.pt + metadata.json)", seed.path))

    # 2. the activation store: resid_post and the MLP neurons of the studied layer, from the corpus
    from saescope.capture import CaptureConfig, capture_corpus

    hookpoints = f"{hookpoint},mlp_post_act.{layer}"
    store = Stage("store", out / "store", {**model_id, "data": asdict(cfg.data), "capture": _options(cfg.capture),
                                           "hookpoints": hookpoints}, {})
    recompute = start(store)
    st = capture_corpus(CaptureConfig(model=cfg.model, data=cfg.data, capture=cfg.capture, out=str(store.path),
                                      hookpoints=hookpoints), hm) if recompute else None
    if recompute:
        store.finish()
    from saescope.store import ActivationStore

    st = st or ActivationStore(store.path, verify=False)
    done.append((f"activation store ({st.rows:,} tokens)", store.path))

    # 3. the SAE (trained on the store, evaluated on its held-out shard and spliced into the model)
    from saescope.io import write_json
    from saescope.train.api import EvalConfig, TrainConfig, evaluate, train_from_store

    sae = Stage("sae", out / "sae", {"trainer": _options(cfg.train), "hookpoint": hookpoint},
                {"store": store.fingerprint})
    if start(sae):
        train_from_store(TrainConfig(trainer=cfg.train, store=str(store.path), hookpoint=hookpoint,
                                     out=str(sae.path), device=cfg.model.device))
        ev = evaluate(EvalConfig(sae=str(sae.path), store=str(store.path), hookpoint=hookpoint,
                                 holdout_shards=cfg.train.holdout_shards), hm=hm)
        write_json(sae.path / "eval.json", ev)
        sae.finish()
    ev = read_json(sae.path / "eval.json")
    done.append((f"SAE {cfg.train.arch} F={cfg.train.width} (FVU {ev['fvu']:.3f}, L0 {ev['l0']:.1f}, "
                 f"CE recovered {ev.get('ce_loss_recovered', float('nan')):.3f})", sae.path))

    # 4. collated records: MLP neurons, heads and the SAE's latents at the studied layer
    from saescope.collate.run_collate import CollateConfig, collate

    col = Stage("collated", out / "collated", {**model_id, "data": asdict(cfg.data), "collate": _options(cfg.collate),
                                               "layer": layer}, {"sae": sae.fingerprint})
    if start(col):
        collate(CollateConfig(model=cfg.model, data=cfg.data, collate=cfg.collate, out=str(col.path),
                              layers=str(layer), sae=str(sae.path)), hm)
        col.finish()
    done.append((f"collated records ({cfg.collate.units} and SAE latents at layer {layer})", col.path / hm.name))

    # 5. explanations and scores of the SAE latents
    from saescope.interp.pipeline import InterpConfig, run_interp

    dataset = f"sae_latents/{sae.path.name}/{layer}"
    interp = Stage("explanations", col.path / hm.name / "explanations" / dataset, {"interp": _options(cfg.interp)},
                   {"collated": col.fingerprint})
    if start(interp):
        summary = run_interp(InterpConfig(interp=cfg.interp, root=str(col.path / hm.name), dataset=dataset), hm=hm)
        interp.finish()
    else:
        summary = read_json(interp.path / "scores.json")["summary"]
    done.append((f"explanations + scores ({cfg.interp.explainer}: mean {summary['mean_score']:.3f}, "
                 f"null {summary['mean_null_score']:.3f})", interp.path))
    return RunResult(done, col.path, decisions)
