"""Prompt formats: TDB/automated-interpretability `token<TAB>activation` (0–10) and delphi-style `<<highlights>>`.

Activations are normalised per unit by the max over the records shown: min(10, floor(10·relu(x)/max)).
Records are split by stride as the automated-interpretability loaders do: top records 4-way (train, calibration,
valid, test), random records 3-way (calibration, valid, test), 5 examples per split.
"""

from __future__ import annotations

import math
from typing import Any

from saescope.records import ACTIVATING_FRACTION, max_activation

EXPLAIN_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at the parts of the document the neuron activates for and summarize in a single sentence what the neuron "
    "is looking for. Don't list examples of words.\n\nThe activation format is token<tab>activation. Activation "
    "values range from 0 to 10. A neuron finding what it's looking for is represented by a non-zero activation "
    "value. The higher the activation value, the stronger the match."
)
SIMULATE_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short document. "
    "Look at an explanation of what the neuron does, and try to predict its activations on each token.\n\n"
    "The activation format is token<tab>activation, activations go from 0 to 10, \"unknown\" indicates an unknown "
    "activation. Most activations will be 0."
)
PREFIX = "this neuron activates for"

# Two small hand-written few-shot units (saescope's own; the format follows the public papers).
FEW_SHOT: list[dict[str, Any]] = [
    {"tokens": ["The", " cat", " sat", " on", " the", " mat", "."], "acts": [0, 0, 0, 0, 0, 0, 10],
     "explanation": "the full stop at the end of a sentence"},
    {"tokens": [" We", " visited", " Paris", " and", " Rome", " last", " year"], "acts": [0, 0, 9, 0, 10, 0, 0],
     "explanation": "names of European capital cities"},
]


def normalize(acts: list[float], max_act: float) -> list[int]:
    if max_act <= 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(a, 0.0) / max_act)) for a in acts]


def format_record(tokens: list[str], values: list[int | str]) -> str:
    return "\n<start>\n" + "".join(f"{t}\t{v}\n" for t, v in zip(tokens, values)) + "<end>\n"


def format_records(records: list[dict[str, Any]], max_act: float, omit_zeros_repeat: bool = True) -> str:
    """The TDB block for several records; adds the zeros-filtered repeat when < 20% of tokens are non-zero."""
    norm = [normalize(r["activations"], max_act) for r in records]
    text = "".join(format_record(r["tokens"], n) for r, n in zip(records, norm))
    total = sum(len(n) for n in norm)
    nonzero = sum(1 for n in norm for v in n if v > 0)
    if omit_zeros_repeat and total and nonzero / total < 0.2:
        text += "Same activations, but with all zeros filtered out:" + "".join(
            format_record([t for t, v in zip(r["tokens"], n) if v > 0], [v for v in n if v > 0])
            for r, n in zip(records, norm))
    return text


def explain_messages(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages: system, few-shot units with their explanations, then the target unit (no explanation)."""
    msgs = [{"role": "system", "content": EXPLAIN_SYSTEM}]
    for i, ex in enumerate(FEW_SHOT, 1):
        block = format_records([{"tokens": ex["tokens"], "activations": ex["acts"]}], 10)
        msgs.append({"role": "user", "content": f"Neuron {i}\nActivations:{block}"})
        msgs.append({"role": "assistant", "content": f"Explanation of neuron {i} behavior: {PREFIX} {ex['explanation']}."})
    n = len(FEW_SHOT) + 1
    msgs.append({"role": "user", "content": f"Neuron {n}\nActivations:{format_records(records, max_activation(records))}"
                                             f"\nExplanation of neuron {n} behavior: {PREFIX}"})
    return msgs


def delphi_explain_messages(records: list[dict[str, Any]], threshold: float = ACTIVATING_FRACTION) -> list[dict[str, str]]:
    """delphi-style: examples with activating tokens wrapped in <<…>>, answer after '[EXPLANATION]:'."""
    mx = max_activation(records)
    lines = []
    for i, r in enumerate(records, 1):
        text = "".join(f"<<{t}>>" if mx > 0 and a >= threshold * mx else t for t, a in zip(r["tokens"], r["activations"]))
        lines.append(f"Example {i}: {text}")
    return [{"role": "system", "content": "You are explaining a latent of a language model. Tokens where it "
                                          "activates are marked <<like this>>. Give a short explanation of what it "
                                          "detects, after '[EXPLANATION]:'."},
            {"role": "user", "content": "\n".join(lines)}]


def simulation_prompt(explanation: str, tokens: list[str]) -> tuple[str, list[int]]:
    """A plain-text all-at-once simulation prompt and the character offsets of each 'unknown' placeholder.

    Few-shot examples show real digits after every tab, so the model expects a number at each placeholder.
    """
    parts = [SIMULATE_SYSTEM, "\n\n"]
    for i, ex in enumerate(FEW_SHOT, 1):
        parts.append(f"Neuron {i}\nExplanation of neuron {i} behavior: {PREFIX} {ex['explanation']}\nActivations:")
        parts.append(format_record(ex["tokens"], ex["acts"]) + "\n")
    n = len(FEW_SHOT) + 1
    parts.append(f"Neuron {n}\nExplanation of neuron {n} behavior: {PREFIX} {explanation}\nActivations:\n<start>\n")
    text = "".join(parts)
    offsets = []
    for t in tokens:
        text += f"{t}\t"
        offsets.append(len(text))
        text += "unknown\n"
    return text + "<end>\n", offsets


def parse_explanation(text: str) -> str:
    """The explanation sentence from a completion (prefix and trailing period stripped)."""
    t = text.strip()
    for marker in ("[EXPLANATION]:", f"{PREFIX}"):
        if marker in t:
            t = t.split(marker, 1)[1]
    t = t.strip().split("\n")[0].strip()
    return t[:-1] if t.endswith(".") else t


def splits(top: list[Any], random: list[Any], n: int = 5) -> dict[str, list[Any]]:
    """Interleaved splits; 'valid' = 5 top + 5 random ("top and random" scoring)."""
    t = {name: top[i::4][:n] for i, name in enumerate(("train", "calibration", "valid", "test"))}
    r = {name: random[i::3][:n] for i, name in enumerate(("calibration", "valid", "test"))}
    return {"train": t["train"], "valid": t["valid"] + r["valid"], "valid_random": r["valid"],
            "test": t["test"] + r["test"], "calibration": t["calibration"] + r["calibration"]}
