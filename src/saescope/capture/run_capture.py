"""`saescope capture`'s library entry: corpus mode into an activation store, generate mode into the seed format."""

from __future__ import annotations

from pathlib import Path

from saescope.activations import default_hookpoint
from saescope.capture.capture import capture_corpus
from saescope.capture.config import CaptureConfig, CaptureResult
from saescope.capture.generate import generate_seed_dataset, read_prompts
from saescope.models import HookedModel


def run(cfg: CaptureConfig, hm: HookedModel | None = None) -> CaptureResult:
    """Capture `cfg.data` into a store (resuming), or with `cfg.generate` the prompts' generated tokens (seed format)."""
    hm = hm or cfg.model.load()
    if cfg.generate:
        from saescope.store.seed import seed_entries

        hps = hm.select(cfg.hookpoints) if cfg.hookpoints else [default_hookpoint(hm)]
        meta = generate_seed_dataset(hm, cfg.out, hps[0], read_prompts(cfg.prompts), cfg.generate, cfg.chat_template)
        rows = sum(int(e["shape"][0]) for e in seed_entries(meta) if e.get("shape"))
        return CaptureResult(Path(cfg.out), True, hps[:1], rows)
    store = capture_corpus(cfg, hm)
    return CaptureResult(Path(cfg.out), False, list(store.hookpoints), store.rows)
