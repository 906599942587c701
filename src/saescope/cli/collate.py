"""`saescope collate`."""

from __future__ import annotations

from pathlib import Path


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.collate.config import CollateConfig
    from saescope.collate.run_collate import collate

    cfg = parse(CollateConfig, argv, "saescope collate")
    m = collate(cfg)
    if not m:  # a non-zero torchrun rank: rank 0 writes and reports
        return 0
    print(f"collated {m['tokens']:,} tokens ({m['tokens_per_second']:,.0f} tokens/s) into {Path(cfg.out) / m['model']}:")
    for d in m["datasets"]:
        print(f"  {d['path']:<40} {d['units']:>6} units")
    return 0
