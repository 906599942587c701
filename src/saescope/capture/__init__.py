"""Capture: corpus mode into an activation store, generate mode into the seed dataset format.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    "CaptureConfig": "saescope.capture.config",
    "CaptureOptions": "saescope.capture.config",
    "CaptureResult": "saescope.capture.config",
    "capture_corpus": "saescope.capture.capture",
    "SEED_PROMPTS": "saescope.capture.generate",
    "generate_seed_dataset": "saescope.capture.generate",
    "read_prompts": "saescope.capture.generate",
    "run": "saescope.capture.run_capture",
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.capture.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions, CaptureResult
    from saescope.capture.generate import SEED_PROMPTS, generate_seed_dataset, read_prompts
    from saescope.capture.run_capture import run
