"""`saescope capture`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    import os

    from saescope.capture import run
    from saescope.capture.config import CaptureConfig
    from saescope.cli import parse, worker_exit

    cfg = parse(CaptureConfig, argv, "saescope capture")
    res = run(cfg)
    if int(os.environ.get("RANK", "0")) > 0:  # a torchrun worker: rank 0 has listed every shard and reports
        worker_exit()
    if res.seed_format:
        from saescope.store.seed import seed_summary

        print(seed_summary(res.out / "metadata.json"))
        print(f"seed dataset written to {res.out}")
    else:
        from saescope.store import ActivationStore

        print(ActivationStore(res.out, verify=False).info())
    return 0
