"""delphi-style detection and fuzzing with an LLM: the model labels examples given the explanation.

- detection: plain excerpts, half activating (max ≥ 0.3·max), half not; the model answers a list like [1, 0, ...];
- fuzzing: the same excerpts with tokens marked <<like this>> — the truly active tokens in activating excerpts,
  random tokens in the others; the model says whether each marking matches the explanation.
The answer must be a JSON list of 0/1 of the right length; anything else is a failure (not a score).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from saescope.interp.backends import Backend, BackendError
from saescope.interp.scoring import balanced_accuracy
from saescope.records import is_activating

_LIST = re.compile(r"\[[\s\d,]*\]")

DETECTION = ("You will see an explanation of a language-model latent and numbered text examples. For each example, "
             "answer 1 if the latent would activate on it according to the explanation, else 0. Reply with only a "
             "list such as [1, 0, 1].")
FUZZING = ("You will see an explanation of a language-model latent and numbered text examples in which some tokens "
           "are marked <<like this>>. For each example, answer 1 if the marked tokens are what the explanation "
           "describes, else 0. Reply with only a list such as [1, 0, 1].")


def parse_labels(answer: str, n: int) -> list[int]:
    m = _LIST.search(answer)
    if not m:
        raise BackendError("no [..] list in the classifier's answer")
    try:
        labels = json.loads(m.group(0))
    except json.JSONDecodeError:
        raise BackendError("unparseable list in the classifier's answer") from None
    if len(labels) != n or any(v not in (0, 1) for v in labels):
        raise BackendError(f"classifier answered {len(labels)} labels for {n} examples")
    return labels


def examples(records: list[dict[str, Any]], max_act: float, seed: int) -> tuple[list[str], list[str], list[int]]:
    """(plain texts, marked texts, labels) for detection and fuzzing."""
    rng = random.Random(seed)
    plain, marked, labels = [], [], []
    for r in records:
        acts, toks = r["activations"], r["tokens"]
        y = 1 if is_activating(max(acts, default=0), max_act) else 0
        hot = {i for i, a in enumerate(acts) if y and is_activating(a, max_act)}
        if not y:
            hot = set(rng.sample(range(len(toks)), min(len(toks), 2)))
        plain.append("".join(toks))
        marked.append("".join(f"<<{t}>>" if i in hot else t for i, t in enumerate(toks)))
        labels.append(y)
    return plain, marked, labels


def classify_scores(backend: Backend, explanation: str, records: list[dict[str, Any]], max_act: float,
                    seed: int = 0) -> dict[str, float | None]:
    plain, marked, labels = examples(records, max_act, seed)
    out: dict[str, float | None] = {}
    for name, system, texts in (("llm_detection", DETECTION, plain), ("llm_fuzzing", FUZZING, marked)):
        body = "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))
        answer = backend.chat([{"role": "system", "content": system},
                               {"role": "user", "content": f"Explanation: {explanation}\n\n{body}"}],
                              max_tokens=4 * len(texts) + 10)
        out[name] = balanced_accuracy(labels, parse_labels(answer, len(texts)))
    return out
