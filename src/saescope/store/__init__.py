"""Activation store: sharded, resumable, checksummed; shuffled batch iterator; seed-format import/export."""

from saescope.store.iterate import shuffled_batches
from saescope.store.store import DTYPES, ActivationStore, StoreMeta, StoreWriter

__all__ = ["DTYPES", "ActivationStore", "StoreMeta", "StoreWriter", "shuffled_batches"]
