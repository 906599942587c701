"""Simulators: predict a unit's per-token activations (0–10 scale) from an explanation.

- baseline: the token-lookup table parsed from a token-lookup explanation (offline);
- logprobs (hf backends, and OpenAI-compatible servers that echo prompt logprobs): the all-at-once method —
  one pass over a prompt with 'unknown' placeholders, expected value over the digit tokens at each placeholder;
- lines (chat models without logprobs): the model rewrites `token<TAB>?` lines with digits; any misalignment
  or non-integer makes the call a failure (never silent zeros).
"""

from __future__ import annotations

import re

from saescope.interp.backends import Backend, BackendError
from saescope.interp.prompts import PREFIX, SIMULATE_SYSTEM, simulation_prompt

_LINE = re.compile(r"^(.*)\t(\d+)\s*$")


def expected_values(dists: list[dict[int, float]]) -> list[float]:
    return [sum(k * p for k, p in d.items()) for d in dists]


def simulate(backend: Backend, explanation: str, tokens: list[str]) -> tuple[list[float], str]:
    """(predictions on the 0–10 scale, method). Raises BackendError on failure."""
    return backend.simulate(explanation, tokens)


def simulate_with_llm(backend: Backend, explanation: str, tokens: list[str]) -> tuple[list[float], str]:
    """A language model's simulation: prompt logprobs where the backend has them, else rewritten lines."""
    prompt, offsets = simulation_prompt(explanation, tokens)
    dists = backend.digit_distributions(prompt, offsets)
    if dists is not None:
        if any(not d for d in dists):
            raise BackendError("no digit probabilities at some placeholder (tokenizer mismatch)")
        return expected_values(dists), "logprobs"
    lines = "".join(f"{t}\t?\n" for t in tokens)
    answer = backend.chat([
        {"role": "system", "content": SIMULATE_SYSTEM + " Reply with the same lines, each ? replaced by an integer 0-10."},
        {"role": "user", "content": f"Explanation: {PREFIX} {explanation}\n\n{lines}"},
    ], max_tokens=8 * len(tokens) + 20)
    got = [m for m in (_LINE.match(x) for x in answer.strip("\n").split("\n")) if m]
    if len(got) != len(tokens):
        raise BackendError(f"simulator answered {len(got)} lines for {len(tokens)} tokens")
    return [min(10.0, float(m.group(2))) for m in got], "lines"
