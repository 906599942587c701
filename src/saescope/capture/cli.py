"""`saescope capture` entry point (the CLI layer prints; the library logs)."""

from __future__ import annotations

from saescope.capture.capture import CaptureConfig
from saescope.capture.run_capture import run_capture

__all__ = ["CaptureConfig", "cli_capture"]


def cli_capture(cfg: CaptureConfig) -> int:
    out = run_capture(cfg)
    if cfg.generate:
        from saescope.store.seed import seed_summary

        print(seed_summary(out / "metadata.json"))
        print(f"seed dataset written to {out}")
    else:
        from saescope.store import ActivationStore

        print(ActivationStore(out, verify=False).info())
    return 0
