"""`saescope graph`: the attribution graph of a prompt under transcoders on every layer (circuit tracing), pruned,
scored and written as the graph JSON Neuronpedia's viewer and circuit-tracer's local server read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saescope.config import ModelConfig


@dataclass
class GraphConfig:
    """Attribution graph of a prompt's next token: transcoder features, error nodes, embeddings and logits."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: str = ""
    """The prompt (BOS is prepended)."""
    transcoders: str = "runs/default/transcoders"
    """A transcoder folder with one transcoder per layer or a cross-layer transcoder: saescope's layout,
    circuit-tracer's (config.yaml) or Gemma Scope 2."""
    target: list[str] = field(default_factory=list)
    """Output tokens to explain (' Paris'); default: the most likely tokens up to 0.95 probability, at most 10."""
    node_threshold: float = 0.8
    """Keep the nodes that make up this fraction of the influence on the logits."""
    edge_threshold: float = 0.98
    """Keep the edges that make up this fraction of the edge influence."""
    max_feature_nodes: int = 7500
    """Feature nodes at most (taken in order of estimated influence); 0 = every active feature."""
    batch_size: int = 512
    """Features ranked per influence update (circuit-tracer's batch size; sets the order, not the memory)."""
    chunk: int = 64
    """Targets per backward pass (memory: chunk × layers × tokens × d_model floats)."""
    out: str = "graph.json"
    """The graph JSON; its folder's graph-metadata.json lists it (slug = the file name without .json)."""


def main(argv: list[str]) -> int:
    import logging

    from saescope.cli import parse
    from saescope.errors import SaescopeError
    from saescope.graph.attribute import attribute
    from saescope.graph.prune import prune
    from saescope.graph.replacement import from_transcoder_set
    from saescope.graph.schema import graph_json, write_graph
    from saescope.sae.transcoder_io import load_transcoders

    cfg = parse(GraphConfig, argv, "saescope graph")
    if not cfg.prompt.strip():
        raise SaescopeError("--prompt is empty; give the text whose next token the graph explains")
    if not Path(cfg.transcoders).expanduser().is_dir():
        raise SaescopeError(f"--transcoders {cfg.transcoders}: no such folder; train transcoders on every layer "
                            "(saescope train --kind transcoder) or give a circuit-tracer / Gemma Scope 2 folder")
    if not cfg.out.endswith(".json"):
        raise SaescopeError(f"--out {cfg.out}: the graph is one .json file (e.g. graphs/capital.json)")
    logging.getLogger("saescope").info("loading %s and %s", cfg.model.model, cfg.transcoders)
    hm = cfg.model.load()
    ts = load_transcoders(cfg.transcoders)
    tc = from_transcoder_set(ts, hm.n_layers, scan=ts.metadata.get("scan", "") or Path(cfg.transcoders).name)
    graph = attribute(hm, tc, cfg.prompt, targets=cfg.target or None, max_feature_nodes=cfg.max_feature_nodes or None,
                      batch_size=cfg.batch_size, chunk=cfg.chunk)
    pr = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    doc = graph_json(graph, pr, Path(cfg.out).stem, cfg.node_threshold)
    path = write_graph(doc, cfg.out)
    s = doc["metadata"]["saescope"]
    print(f"{path}: {s['nodes_after']} nodes, {s['edges_after']} links (of {s['nodes_before']} / {s['edges_before']}); "
          f"replacement {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f} "
          f"(pruned {s['pruned_replacement_score']:.3f} / {s['pruned_completeness_score']:.3f})")
    for j, tok in enumerate(graph.logit_strs):
        print(f"  target {tok!r} p={float(graph.logit_probabilities[j]):.3f}")
    return 0
