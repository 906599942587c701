"""Activation store: sharded, resumable, checksummed; shuffled batch iterator; seed-format import/export.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("DTYPES", "ActivationStore", "StoreMeta", "StoreWriter"), "saescope.store.store"),
    **dict.fromkeys(("shuffled_batches",), "saescope.store.iterate"),
    **dict.fromkeys(("StoreResult",), "saescope.store.config"),
    **dict.fromkeys(("run",), "saescope.store.run_store"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.store.config import StoreResult
    from saescope.store.iterate import shuffled_batches
    from saescope.store.run_store import run
    from saescope.store.store import DTYPES, ActivationStore, StoreMeta, StoreWriter
