"""`saescope collate`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse, worker_exit
    from saescope.collate.config import CollateConfig
    from saescope.collate.run_collate import run

    cfg = parse(CollateConfig, argv, "saescope collate")
    res = run(cfg)
    if res is None:  # a non-zero torchrun rank: rank 0 writes and reports
        worker_exit()
    print(f"collated {res.tokens:,} tokens ({res.tokens_per_second:,.0f} tokens/s) into {res.root}:")
    for d in res.datasets:
        print(f"  {d.path:<40} {d.units:>6} units")
    return 0
