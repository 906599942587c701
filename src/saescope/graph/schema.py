"""The graph JSON that Neuronpedia's graph viewer and circuit-tracer's local server read: node ids and field names in
one place (shared/reference/circuit_tracing.md §Graph JSON; circuit-tracer `frontend/graph_models.py` at 4bb8c0e).

    {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version, saescope},
     "qParams":  {pinnedIds, supernodes, linkType, clickedId, sg_pos},
     "nodes":    [{node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx,
                   reverse_ctx_idx, jsNodeId, clerp, influence, activation}],
     "links":    [{source, target, weight = A[target, source]}]}

Ids: feature "{layer}_{index}_{pos}" (feature = Cantor pairing of (layer, index)); error "0_{layer}_{pos}";
embedding "E_{token_id}_{pos}"; logit "{n_layers + 1}_{vocab_id}_{last_pos}". Only features and errors that are an
endpoint of a kept link are written; every embedding and logit is. `metadata.saescope` (ignored by the readers)
carries the scores and counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saescope.graph.graph import Graph
from saescope.graph.prune import PruneResult, graph_scores, pruned_adjacency

SCHEMA_VERSION = 1
METADATA_FIELDS = ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version")
QPARAMS_FIELDS = ("pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos")
NODE_FIELDS = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
               "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation")
LINK_FIELDS = ("source", "target", "weight")
FEATURE_TYPE = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "embedding": "embedding",
                "logit": "logit"}
"""Per node kind; circuit-tracer writes "cross layer transcoder" for per-layer sets too."""
GRAPH_INDEX = "graph-metadata.json"
"""The list of graphs in a folder that circuit-tracer's local server serves."""


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def feature_id(layer: int, index: int, pos: int) -> str:
    return f"{layer}_{index}_{pos}"


def error_id(layer: int, pos: int) -> str:
    return f"0_{layer}_{pos}"


def embedding_id(token: int, pos: int) -> str:
    return f"E_{token}_{pos}"


def logit_id(n_layers: int, vocab: int, pos: int) -> str:
    return f"{n_layers + 1}_{vocab}_{pos}"


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, influence: float | None,
          activation: float | None = None, clerp: str = "", token_prob: float = 0.0, target: bool = False
          ) -> dict[str, Any]:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": FEATURE_TYPE[kind],
            "token_prob": token_prob, "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js,
            "clerp": clerp, "influence": influence, "activation": activation}


def node_json(graph: Graph, i: int, cumulative: float, labels: dict[tuple[int, int], str]) -> dict[str, Any]:
    """Node i of the graph as the viewer reads it."""
    kind = graph.node_kind(i)
    if kind == "feature":
        layer, pos, idx, act = graph.feature(i)
        return _node(feature_id(layer, idx, pos), cantor(layer, idx), str(layer), pos, kind, f"{layer}_{idx}-0",
                     cumulative, act, labels.get((layer, idx), ""))
    if kind == "error":
        layer, pos = graph.error(i)
        return _node(error_id(layer, pos), -1, str(layer), pos, kind, f"{layer}_{pos}-0", cumulative)
    if kind == "embedding":
        pos = i - graph.embed_start
        tok = int(graph.tokens[pos])
        return _node(embedding_id(tok, pos), pos, "E", pos, kind, f"E_{tok}-{pos}", cumulative)
    j = i - graph.logit_start
    vocab, p, pos = int(graph.logit_tokens[j]), float(graph.logit_probabilities[j]), graph.n_pos - 1
    return _node(logit_id(graph.n_layers, vocab, pos), vocab, str(graph.n_layers + 1), pos, kind, f"L_{vocab}-{pos}",
                 None, clerp=f'Output "{graph.logit_strs[j]}" (p={p:.3f})', token_prob=p, target=j == 0)


def graph_json(graph: Graph, pruned: PruneResult, slug: str, node_threshold: float,
               labels: dict[tuple[int, int], str] | None = None) -> dict[str, Any]:
    """The pruned graph as one JSON object (circuit-tracer's `create_graph_files` selection and order)."""
    labels = labels or {}
    keep = pruned.node_mask
    nodes = {i: node_json(graph, i, float(pruned.cumulative_scores[i]), labels)
             for i in keep.nonzero().flatten().tolist()}
    A = pruned_adjacency(graph, pruned)  # rows-major order: target, then source
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
             for t, s, w in zip(A.rows.tolist(), A.cols.tolist(), A.vals.tolist())]
    connected = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values() if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")]
    full, kept = graph_scores(graph), graph_scores(graph, A)
    meta = {"slug": slug, "scan": graph.scan or "saescope", "transcoder_list": [], "prompt_tokens": graph.token_strs,
            "prompt": graph.prompt, "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION,
            "saescope": {"model": graph.model, "replacement_score": full.replacement,
                         "completeness_score": full.completeness, "pruned_replacement_score": kept.replacement,
                         "pruned_completeness_score": kept.completeness, "nodes_before": graph.n_nodes,
                         "edges_before": graph.adjacency.nnz, "nodes_after": len(used), "edges_after": len(links),
                         **graph.info}}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": used, "links": links}


def write_graph(doc: dict[str, Any], out: str | Path) -> Path:
    """Write `doc` to `out` (a .json file) and add its metadata to the folder's graph-metadata.json."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    index_path = out.parent / GRAPH_INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
    meta = {k: doc["metadata"][k] for k in METADATA_FIELDS}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != meta["slug"]] + [meta]
    index_path.write_text(json.dumps(index, indent=2))
    return out
