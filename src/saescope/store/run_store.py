"""The store commands' library entry: `run(cfg) -> StoreResult` for `store info`, `import-seed` and `export-seed`."""

from __future__ import annotations

from pathlib import Path

from saescope.errors import SaescopeError
from saescope.store.config import ExportSeedConfig, ImportSeedConfig, StoreInfoConfig, StoreResult
from saescope.store.store import ActivationStore


def run(cfg: StoreInfoConfig | ImportSeedConfig | ExportSeedConfig) -> StoreResult:
    """Summarise (and verify) a store, import a seed dataset into one, or export one in the seed format."""
    if isinstance(cfg, ImportSeedConfig):
        from saescope.store.seed import import_seed

        return _result(import_seed(cfg.seed, cfg.out, overwrite=cfg.overwrite), Path(cfg.out))
    if isinstance(cfg, ExportSeedConfig):
        from saescope.store.seed import export_seed

        out = export_seed(cfg.store, cfg.out, cfg.hookpoint or None)
        return _result(ActivationStore(cfg.store, verify=False), Path(out))
    store = ActivationStore(cfg.store, verify=cfg.verify)
    if store.rows == 0:
        raise SaescopeError(f"{cfg.store}: the store holds 0 rows; re-run the capture with a corpus that has text")
    if cfg.verify:  # loading a shard checks its sha256 and shape
        for hp in store.hookpoints:
            for i in range(len(store.shards)):
                store.load_shard(hp, i)
        for i in range(len(store.shards)):
            store.load_tokens(i)
    return _result(store, Path(cfg.store), verified=cfg.verify)


def _result(store: ActivationStore, out: Path, verified: bool = False) -> StoreResult:
    return StoreResult(out, store.rows, list(store.hookpoints), len(store.shards), store.info(), verified,
                       bool(store.manifest.get("complete")))
