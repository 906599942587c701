"""Neuron viewer: FastAPI app + static page over collated records (what it computes: `saescope.explore`).

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("ViewConfig", "ViewResult"), "saescope.viewer.config"),
    **dict.fromkeys(("run",), "saescope.viewer.server"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.viewer.config import ViewConfig, ViewResult
    from saescope.viewer.server import run
