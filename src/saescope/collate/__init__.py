"""Collation: TDB NeuronRecords for MLP neurons, attention heads (token pairs) and SAE latents, in one pass.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("CollateConfig", "CollateResult"), "saescope.collate.config"),
    **dict.fromkeys(("run",), "saescope.collate.run_collate"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.collate.config import CollateConfig, CollateResult
    from saescope.collate.run_collate import run
