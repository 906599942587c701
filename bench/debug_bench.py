"""Debugger latency: one `saescope.debug.debug` request (forward with every node kept + one backward + ranking) on
gemma-3-270m with one spliced SAE, over 20 prompts of exactly 32 tokens (BOS included: each sentence below behind a
shared lead-in, cut to its last 31 tokens); median and p95, plus the bare forward of the same prompt (with the
unembedding) as the baseline and an upstream trace of a head through its key side, measured in the same run.

    python bench/debug_bench.py [--sae runs/default/saes/resid_post] [--model default]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PROMPTS = [
    "The capital of France is a city of museums, cafés and old bridges over the river, and its name is",
    "After the long winter the farmers in the northern valley began to plant wheat, barley and, as always,",
    "In 1969 the first astronauts walked on the surface of the Moon, and millions of people watched the",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and half a cup of warm",
    "She opened the old wooden box and found a stack of letters written by her grandmother during the",
    "The orchestra tuned their instruments while the conductor waited at the front of the stage for the",
    "Python is a programming language that is widely used for data analysis, machine learning and",
    "The river flows from the mountains through the forest and finally reaches the sea near the small",
    "During the match the striker ran past two defenders and kicked the ball straight into the",
    "The committee will meet on Tuesday to discuss the budget, the new building and the plans for the",
    "Photosynthesis is the process by which green plants use sunlight to turn water and carbon dioxide into",
    "The train to Berlin was delayed by an hour because of snow on the tracks near the border with",
    "When the museum opened its doors in the morning, a long line of visitors was already waiting to see the",
    "He learned to play the violin as a child and later studied music at the conservatory in",
    "The storm knocked down trees and power lines across the region, leaving thousands of homes without",
    "Most of the world's coffee is grown in countries near the equator, such as Brazil, Colombia and",
    "The novel tells the story of a young sailor who leaves his village to travel across the ocean to",
    "Scientists measured the temperature of the lake every day for ten years and found that it was slowly",
    "The king ordered a new castle to be built on the hill so that his soldiers could watch over the",
    "On Sunday mornings the market in the town square sells fresh bread, cheese, fruit and",
]


LEAD_IN = "This sentence was copied from a long report that a student wrote for the school newspaper last year: "
TOKENS = 32


def fixed_length(tok, text: str, n: int = TOKENS) -> str:
    """The last n−1 tokens of LEAD_IN + text, decoded (BOS makes n)."""
    ids = tok(LEAD_IN + text, add_special_tokens=False).input_ids[-(n - 1):]
    return tok.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="runs/default/saes/resid_post")
    args = ap.parse_args()
    from saescope.debug import debug
    from saescope.debug.explain import load_saes
    from saescope.models import load_model

    hm = load_model(args.model)
    saes, _ = load_saes(args.sae, hm)
    prompts = [fixed_length(hm.tokenizer, p) for p in PROMPTS]
    debug(hm, prompts[0], " Paris", " London", saes)  # warm-up
    lat, fwd, lens, trc = [], [], [], []
    mid = hm.n_layers // 2
    for p in prompts:
        ids = hm.tokenizer(p, return_tensors="pt").input_ids
        lens.append(ids.shape[1])
        t0 = time.perf_counter()
        with torch.no_grad():
            hm.model(input_ids=ids, use_cache=False)
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        debug(hm, p, " the", "", saes)
        lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        debug(hm, p, " the", "", saes, trace=f"head.{mid}.0@{ids.shape[1] - 1}:k")
        trc.append(time.perf_counter() - t0)

    def p95(x: list[float]) -> float:
        return sorted(x)[int(round(0.95 * (len(x) - 1)))]
    print(f"\n{hm.name}, SAE {args.sae} ({next(iter(saes))}), {len(PROMPTS)} prompts of {min(lens)}-{max(lens)} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| request | median s | p95 s |")
    print("|---|---|---|")
    print(f"| bare forward (no hooks, no gradient) | {statistics.median(fwd):.3f} | {p95(fwd):.3f} |")
    print(f"| debug: rank every node (forward + backward + ranking) | {statistics.median(lat):.3f} | {p95(lat):.3f} |")
    print(f"| debug: trace head.{mid}.0 at the last token through its key side | {statistics.median(trc):.3f} | "
          f"{p95(trc):.3f} |")


if __name__ == "__main__":
    main()
