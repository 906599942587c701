"""`saescope store info`, `import-seed`, `export-seed`."""

from __future__ import annotations


def info(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.errors import SaescopeError
    from saescope.store import ActivationStore
    from saescope.store.config import StoreInfoConfig

    cfg = parse(StoreInfoConfig, argv, "saescope store info")
    store = ActivationStore(cfg.store, verify=cfg.verify)
    if store.rows == 0:
        raise SaescopeError(f"{cfg.store}: the store holds 0 rows; re-run the capture with a corpus that has text")
    if cfg.verify:
        for hp in store.hookpoints:
            for i in range(len(store.shards)):
                store.load_shard(hp, i)
        for i in range(len(store.shards)):
            store.load_tokens(i)
    print(store.info())
    if cfg.verify:
        late = "" if store.manifest.get("complete") else " (incomplete: re-run the capture to finish it)"
        print(f"verified {len(store.shards)} shards x {len(store.hookpoints) + 1} files: OK{late}")
    return 0


def import_seed(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.store.config import ImportSeedConfig
    from saescope.store.seed import import_seed as do_import

    cfg = parse(ImportSeedConfig, argv, "saescope import-seed")
    print(do_import(cfg.seed, cfg.out, overwrite=cfg.overwrite).info())
    return 0


def export_seed(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.store.config import ExportSeedConfig
    from saescope.store.seed import export_seed as do_export

    cfg = parse(ExportSeedConfig, argv, "saescope export-seed")
    print(f"seed dataset written to {do_export(cfg.store, cfg.out, cfg.hookpoint or None)}")
    return 0
