"""Capture: corpus mode into an activation store, generate mode into the seed dataset format."""

from saescope.capture.capture import capture_corpus
from saescope.capture.config import CaptureConfig, CaptureOptions
from saescope.capture.generate import SEED_PROMPTS, generate_seed_dataset, read_prompts

__all__ = ["SEED_PROMPTS", "CaptureConfig", "CaptureOptions", "capture_corpus", "generate_seed_dataset", "read_prompts"]
