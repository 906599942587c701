"""Attribution-graph cost on gemma-3-270m: prompts of exactly 16, 32 and 64 tokens (BOS included), transcoders on all
18 layers; time per graph (wall and process CPU time: on a shared machine the CPU time is the comparable figure; setup = clean
pass + encoding, rows = the backward passes), peak RSS, nodes / edges
before and after pruning (0.8 / 0.98), replacement and completeness scores (unpruned and pruned).

    python bench/graph_bench.py [--transcoders DIR] [--lengths 16,32,64] [--max_feature_nodes 7500]

Without --transcoders the set is random TopK (width --width, k --k; seeded): the timing depends only on the number of
active features and rows, but the scores of a random set are meaningless (the error nodes carry the computation).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

TEXT = ("Fact: the capital of France is Paris. Fact: the capital of Germany is Berlin. Fact: the capital of Italy is "
        "Rome. Fact: the capital of Spain is Madrid. Fact: the capital of Japan is Tokyo. Fact: the capital of Egypt "
        "is Cairo. Fact: the capital of Canada is Ottawa. Fact: the capital of Kenya is Nairobi. Fact: the capital "
        "of Peru is Lima. Fact: the capital of Norway is Oslo. Fact: the capital of the state containing Dallas is")


def prompt_of(hm, n: int) -> str:
    """The last n − 1 tokens of TEXT (BOS makes n)."""
    ids = hm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return hm.tokenizer.decode(ids[-(n - 1):])


def random_transcoders(hm, width: int, k: int):
    from saescope.graph.replacement import Transcoders, topk_activation

    g = torch.Generator().manual_seed(0)
    L, d = hm.n_layers, hm.d_model
    W_enc = [torch.randn(d, width, generator=g) / d**0.5 for _ in range(L)]
    return Transcoders(W_enc, [torch.zeros(width) for _ in range(L)],
                       [torch.randn(width, 1, d, generator=g) * 0.02 for _ in range(L)],
                       [torch.zeros(d) for _ in range(L)], topk_activation(k), scan=f"random-topk-{width}-{k}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--transcoders", default="")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lengths", default="16,32,64")
    ap.add_argument("--max_feature_nodes", type=int, default=7500)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--min_edge", type=float, default=0.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    from saescope.config import ModelConfig
    from saescope.graph.attribute import attribute
    from saescope.graph.prune import graph_scores, prune, pruned_adjacency
    from saescope.graph.replacement import from_transcoder_set

    hm = ModelConfig(model=args.model, device="cpu").load()
    if args.transcoders:
        from saescope.sae.transcoder_io import load_transcoders

        tc = from_transcoder_set(load_transcoders(args.transcoders), hm.n_layers, scan=args.transcoders)
    else:
        tc = random_transcoders(hm, args.width, args.k)
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        prompt = prompt_of(hm, n)
        t0, c0 = time.perf_counter(), time.process_time()
        g = attribute(hm, tc, prompt, max_feature_nodes=args.max_feature_nodes or None, chunk=args.chunk,
                      min_edge=args.min_edge)
        t1 = time.perf_counter()
        pr = prune(g, 0.8, 0.98)
        t2 = time.perf_counter()
        full, kept = graph_scores(g), graph_scores(g, pruned_adjacency(g, pr))
        rows.append({"tokens": g.n_pos, "seconds": round(t2 - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
                     "attribute_s": round(t1 - t0, 2), "min_edge": args.min_edge,
                     "prune_s": round(t2 - t1, 2), **{k: g.info[k] for k in ("seconds_setup", "seconds_rows")},
                     "active_features": g.info["n_active_features"], "feature_nodes": g.n_features,
                     "nodes": g.n_nodes, "edges": g.adjacency.nnz, "nodes_pruned": int(pr.node_mask.sum()),
                     "edges_pruned": int(pruned_adjacency(g, pr).nnz), "replacement": round(full.replacement, 3),
                     "completeness": round(full.completeness, 3), "pruned_replacement": round(kept.replacement, 3),
                     "pruned_completeness": round(kept.completeness, 3),
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "transcoders": args.transcoders or tc.scan,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
