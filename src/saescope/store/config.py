"""`saescope store-info`, `import-seed`, `export-seed` options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class StoreInfoConfig:
    """Print a store's summary (model, hookpoints, rows, disk use) and verify every shard's checksum."""

    store: str = "runs/default/store"
    """Store directory."""
    verify: bool = True
    """Check every shard's sha256 and shape."""



@dataclass
class ImportSeedConfig:
    """Turn a seed activation dataset (activations_<i>.pt + metadata.json) into a store."""

    seed: str = "runs/default/seed_dataset"
    """Seed-format folder."""
    out: str = "runs/default/seed_store"
    """Store directory to write."""
    overwrite: bool = False
    """Replace an existing store."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.existing_dir(self.seed, "--seed", "seed-format folder")
        validate.not_a_file(self.out, "--out")



@dataclass
class ExportSeedConfig:
    """Write a store back in the seed format (one activations_<i>.pt per context + metadata.json)."""

    store: str = "runs/default/seed_store"
    """Store directory."""
    out: str = "runs/default/seed_export"
    """Folder to write."""
    hookpoint: str = ""
    """Hookpoint to export (default: the store's first)."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.not_a_file(self.out, "--out")


@dataclass
class StoreResult:
    """What a store command read or wrote: the store (info, import-seed) or the seed folder (export-seed)."""

    out: Path
    """The store directory, or the seed folder written by export-seed."""
    rows: int
    """Token rows of the store."""
    hookpoints: list[str]
    shards: int
    summary: str
    """The store's summary (model, hookpoints, rows, disk use), as `store info` prints it."""
    verified: bool = False
    """Every shard's checksum and shape was checked (`store info --verify`)."""
    complete: bool = True
    """False while a capture into the store has not finished."""
