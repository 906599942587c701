"""Capture: corpus mode into an activation store, generate mode into the seed dataset format.

Light on import (no torch): the names below load their module on first use."""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("CaptureConfig", "CaptureOptions", "CaptureResult"), "saescope.capture.config"),
    **dict.fromkeys(("capture_corpus",), "saescope.capture.capture"),
    **dict.fromkeys(("SEED_PROMPTS", "generate_seed_dataset", "read_prompts"), "saescope.capture.generate"),
    **dict.fromkeys(("run",), "saescope.capture.run_capture"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.capture.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions, CaptureResult
    from saescope.capture.generate import SEED_PROMPTS, generate_seed_dataset, read_prompts
    from saescope.capture.run_capture import run
