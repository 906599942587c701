"""`saescope store info`, `import-seed`, `export-seed`."""

from __future__ import annotations


def info(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.store.config import StoreInfoConfig
    from saescope.store.run_store import run

    res = run(parse(StoreInfoConfig, argv, "saescope store info"))
    print(res.summary)
    if res.verified:
        late = "" if res.complete else " (incomplete: re-run the capture to finish it)"
        print(f"verified {res.shards} shards x {len(res.hookpoints) + 1} files: OK{late}")
    return 0


def import_seed(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.store.config import ImportSeedConfig
    from saescope.store.run_store import run

    print(run(parse(ImportSeedConfig, argv, "saescope import-seed")).summary)
    return 0


def export_seed(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.store.config import ExportSeedConfig
    from saescope.store.run_store import run

    print(f"seed dataset written to {run(parse(ExportSeedConfig, argv, 'saescope export-seed')).out}")
    return 0
