"""Offline baselines that need no LLM: a token-lookup explanation and the simulator that reads it back.

The explanation lists the tokens with the highest mean activation in the explainer's records, with their mean
normalised activation; as an object it predicts ŷ_t = table[token_t] (0 for unlisted tokens), so it can be
scored exactly like an LLM explanation. Its text round-trips: the simulator parses the table from the string.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from saescope.interp.backends import Backend, BackendError
from saescope.interp.prompts import normalize
from saescope.records import max_activation

PREFIX = "token-lookup:"
_ITEM = re.compile(r'("(?:[^"\\]|\\.)*")\s*\((\d+(?:\.\d+)?)\)')


def token_lookup_explanation(records: list[dict[str, Any]], n_tokens: int = 8) -> str:
    mx = max_activation(records)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        for t, v in zip(r["tokens"], normalize(r["activations"], mx)):
            sums[t] += v
            counts[t] += 1
    means = sorted(((sums[t] / counts[t], t) for t in sums), key=lambda x: (-x[0], x[1]))
    items = [f"{json.dumps(t, ensure_ascii=False)} ({m:.1f})" for m, t in means[:n_tokens] if m > 0]
    return f"{PREFIX} " + ", ".join(items) if items else f"{PREFIX} (no activating tokens)"


def parse_table(explanation: str) -> dict[str, float]:
    """Token → predicted activation, read back from a token-lookup explanation (empty for any other text)."""
    if not explanation.startswith(PREFIX):
        return {}
    return {json.loads(tok): float(v) for tok, v in _ITEM.findall(explanation)}


def simulate_lookup(explanation: str, tokens: list[str]) -> list[float]:
    table = parse_table(explanation)
    return [table.get(t, 0.0) for t in tokens]


class BaselineBackend(Backend):
    """The offline backend: token-lookup explanations, simulated by looking their table up."""

    name = "baseline"
    is_llm = False

    def __init__(self) -> None:
        self.usage = {}

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 60, temperature: float = 0.0) -> str:
        raise BackendError("the baseline backend is not a language model")

    def explain(self, records: list[dict[str, Any]], style: str = "tdb") -> str:
        return token_lookup_explanation(records)

    def simulate(self, explanation: str, tokens: list[str]) -> tuple[list[float], str]:
        return simulate_lookup(explanation, tokens), "baseline"
