"""The graph stage's face: `run(cfg) -> GraphResult` (load, attribute, prune, score, write)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.graph.config import GraphConfig
from saescope.graph.graph import Graph
from saescope.models import HookedModel


@dataclass
class GraphResult:
    path: Path
    """The graph JSON written."""
    graph: Graph
    """The unpruned graph."""
    summary: dict[str, Any]
    """Scores and counts (the JSON's metadata.saescope)."""
    tc: Any = None
    """The transcoders as the graph read them (`graph.transcoders.Transcoders`)."""


def run(cfg: GraphConfig, hm: HookedModel | None = None) -> GraphResult:
    from saescope.graph.attribute import attribute
    from saescope.graph.prune import prune
    from saescope.graph.replacement import from_transcoder_set
    from saescope.graph.schema import graph_json, write_graph
    from saescope.sae.transcoder_io import load_transcoders

    if not cfg.prompt.strip():
        raise SaescopeError("--prompt is empty; give the text whose next token the graph explains")
    if not Path(cfg.transcoders).expanduser().is_dir():
        raise SaescopeError(f"--transcoders {cfg.transcoders}: no such folder; train transcoders on every layer "
                            "(saescope train --kind transcoder) or give a circuit-tracer / Gemma Scope 2 folder")
    from saescope import distributed as dist

    dist.init_from_env()  # under torchrun: the target rows split across ranks, rank 0 writes
    hm = hm or cfg.model.load()
    where = Path(cfg.transcoders).expanduser().resolve()
    ts = load_transcoders(where)
    tc = from_transcoder_set(ts, hm.n_layers, scan=ts.metadata.get("scan", "") or where.name,
                             write_point=cfg.write_point)
    graph = attribute(hm, tc, cfg.prompt, targets=cfg.target or None, max_feature_nodes=cfg.max_feature_nodes or None,
                      batch_size=cfg.batch_size, chunk=cfg.chunk, min_edge=cfg.min_edge)
    # what the viewer needs to intervene (the model and transcoders to load) and to link each feature to its record
    # page (collate --transcoders names the dataset after the set's folder)
    graph.info.update(model_spec=cfg.model.model, transcoders=str(where), write_point=tc.write_point,
                      records=f"transcoder_latents/{where.name}")
    graph.info.update(ranks=dist.world_size())
    doc = graph_json(graph, prune(graph, cfg.node_threshold, cfg.edge_threshold), Path(cfg.out).stem,
                     cfg.node_threshold)
    path = write_graph(doc, cfg.out) if dist.is_main() else Path(cfg.out)
    dist.shutdown()
    return GraphResult(path, graph, doc["metadata"]["saescope"], tc)
