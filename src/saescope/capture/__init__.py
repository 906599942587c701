"""Capture: corpus mode into an activation store, generate mode into the seed dataset format."""

from saescope.capture.capture import CaptureConfig, CaptureOptions, capture_corpus, default_hookpoint, valid_mask
from saescope.capture.generate import SEED_PROMPTS, generate_seed_dataset, read_prompts

__all__ = [
    "SEED_PROMPTS", "CaptureConfig", "CaptureOptions", "capture_corpus", "default_hookpoint", "generate_seed_dataset",
    "read_prompts", "valid_mask",
]
