"""Automated interpretability: explain → simulate → score with offline baselines, hf and OpenAI-compatible backends.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("InterpConfig", "InterpResult"), "saescope.interp.config"),
    **dict.fromkeys(("run", "run_many"), "saescope.interp.pipeline"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.interp.config import InterpConfig, InterpResult
    from saescope.interp.pipeline import run, run_many
