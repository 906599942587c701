"""`saescope graph`: the attribution graph of a prompt under transcoders on every layer (circuit tracing), pruned,
scored and written as the graph JSON Neuronpedia's viewer and circuit-tracer's local server read."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.graph.config import GraphConfig
    from saescope.graph.run_graph import run

    res = run(parse(GraphConfig, argv, "saescope graph"))
    s, g = res.summary, res.graph
    print(f"{res.path}: {s['nodes_after']} nodes, {s['edges_after']} links (of {s['nodes_before']} / "
          f"{s['edges_before']}); replacement {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f} "
          f"(pruned {s['pruned_replacement_score']:.3f} / {s['pruned_completeness_score']:.3f})")
    for j, tok in enumerate(g.logit_strs):
        print(f"  target {tok!r} p={float(g.logit_probabilities[j]):.3f}")
    return 0
