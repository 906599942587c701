"""`saescope capture`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.capture import CaptureConfig
    from saescope.capture.run_capture import run_capture
    from saescope.cli import parse

    cfg = parse(CaptureConfig, argv, "saescope capture")
    out = run_capture(cfg)
    if cfg.generate:
        from saescope.store.seed import seed_summary

        print(seed_summary(out / "metadata.json"))
        print(f"seed dataset written to {out}")
    else:
        from saescope.store import ActivationStore

        print(ActivationStore(out, verify=False).info())
    return 0
