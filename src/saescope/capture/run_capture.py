"""`saescope capture`'s library entry: corpus mode into an activation store, generate mode into the seed format."""

from __future__ import annotations

from pathlib import Path

from saescope.activations import default_hookpoint
from saescope.capture.capture import capture_corpus
from saescope.capture.config import CaptureConfig
from saescope.capture.generate import generate_seed_dataset, read_prompts
from saescope.models import HookedModel


def run_capture(cfg: CaptureConfig, hm: HookedModel | None = None) -> Path:
    hm = hm or cfg.model.load()
    if cfg.generate:
        hps = hm.select(cfg.hookpoints) if cfg.hookpoints else [default_hookpoint(hm)]
        generate_seed_dataset(hm, cfg.out, hps[0], read_prompts(cfg.prompts), cfg.generate, cfg.chat_template)
    else:
        capture_corpus(cfg, hm)
    return Path(cfg.out)
