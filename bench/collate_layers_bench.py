"""Collating every layer: the model forward alone vs the whole collation (streaming state + writing), one process.

    python bench/collate_layers_bench.py [--layers 0-17] [--tokens 4096] [--units mlp,heads] [--transcoders DIR]
                                         [--records compact] [--profile 25]

Rows, measured in the same process on the same contexts: `forward` (the hooked forward collation runs: the same
hookpoints, stopped after the deepest layer, no per-unit state), `collate pass` (forward + per-unit state
updates), `write` (records, summaries, histograms), and peak RSS of the process (ru_maxrss). --profile N prints
the N most expensive functions of the collation (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
import time

import torch


def forward_only(hm, ctxs: list[list[int]], hookpoints: list[str], batch_size: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(ctxs), batch_size):
            hm.run_with_cache(torch.tensor(ctxs[b:b + batch_size]), None, hookpoints)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layers", default="0-17")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--units", default="mlp,heads")
    ap.add_argument("--transcoders", default="")
    ap.add_argument("--records", default="compact")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--profile", type=int, default=0)
    a = ap.parse_args()
    from saescope.collate.config import CollateConfig, CollateOptions
    from saescope.collate.run_collate import collate, make_groups
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig, iter_contexts

    torch.set_grad_enabled(False)
    lo, _, hi = a.layers.partition("-")
    layers = ",".join(str(x) for x in range(int(lo), int(hi or lo) + 1))
    out = tempfile.mkdtemp(prefix="collate_layers_")
    cfg = CollateConfig(model=ModelConfig(model=a.model), layers=layers, transcoders=a.transcoders, out=out,
                        data=CorpusConfig("wiki"),
                        collate=CollateOptions(units=a.units, max_tokens=a.tokens, batch_size=a.batch_size,
                                               records=a.records))
    hm = cfg.model.load()
    groups = make_groups(cfg, hm)
    hps = sorted({h for g in groups for h in g.hookpoints})
    T = cfg.collate.excerpt_len
    ctxs = list(itertools.islice(iter_contexts(hm.tokenizer, cfg.data.texts(), T + 1), -(-a.tokens // T)))
    tokens = len(ctxs) * T
    units = sum(g.n_units for g in groups)
    fwd = forward_only(hm, ctxs, hps, a.batch_size)
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    manifest = collate(cfg, hm)
    total = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
    pass_s = manifest["tokens"] / manifest["tokens_per_second"]
    fwd2 = forward_only(hm, ctxs, hps, a.batch_size)  # again after: the machine is shared, so bracket the collation
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {hm.name}, layers {layers}, {len(groups)} groups, {units} units, {tokens} tokens, "
          f"records {a.records}, batch {a.batch_size}")
    print(f"{'row':<16}{'seconds':>9}{'tok/s':>9}")
    for name, s in (("forward (before)", fwd), ("forward (after)", fwd2), ("collate pass", pass_s),
                    ("write", total - pass_s), ("collate total", total)):
        print(f"{name:<16}{s:>9.2f}{tokens / s:>9.0f}")
    print(f"collate pass / forward (mean of before, after): {(fwd + fwd2) / 2 / pass_s:.2f}; "
          f"total: {(fwd + fwd2) / 2 / total:.2f}; peak RSS {rss:.0f} MB")
    if prof is not None:
        import pstats

        pstats.Stats(prof).sort_stats("cumulative").print_stats(a.profile)


if __name__ == "__main__":
    main()
