"""The viewer's attribution-graph routes: the /graph page, the graphs in <root>/graphs, and interventions.

    GET  /graph                                  the page (graph.html + graph.js; served with the other pages)
    GET  /api/graphs                             graph-metadata.json's list (as circuit-tracer's local server has it)
    GET  /api/graph/{slug}                       one graph JSON; features without a label get their explanation from
                                                 the collated transcoder_latents/<set>/<layer> dataset, if there is one
    POST /api/graph/{slug}/intervene {interventions: [{node_id, factor}], top}
                                                 the output distribution before and after scaling the features (a
                                                 real forward with patched latents: `saescope.graph.intervene`)
    POST /api/graph/{slug}/heads {target, target_type, source, source_type}
                                                 an edge split by the attention heads that carry it (`graph.heads`)
    POST /api/graph/{slug}/qk {layer, head, query_pos, key_pos}
                                                 why a head attends where it does, in features (`graph.qk`)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response
from pydantic import BaseModel

from saescope.viewer.data import DataRoot, NotFound, parse_dataset

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from saescope.viewer.hub import ModelHub

FEATURE_TYPE = "cross layer transcoder"
MAX_INTERVENTIONS = 256


class NodeFactor(BaseModel):
    node_id: str
    factor: float
    """Multiplies the feature's activation: 0 ablates it, 1 changes nothing."""


class InterveneRequest(BaseModel):
    """POST /api/graph/{slug}/intervene body: every listed feature node scaled by its factor (a supernode is its
    members with one factor)."""

    interventions: list[NodeFactor]
    top: int = 10


class HeadsRequest(BaseModel):
    """POST /api/graph/{slug}/heads body: the edge source → target, nodes as the graph JSON names them."""

    target: str
    target_type: str
    source: str
    source_type: str


class QKRequest(BaseModel):
    """POST /api/graph/{slug}/qk body: head `head` of `layer` at `query_pos` (default: the last position), attending
    to `key_pos` (default: where it attends most)."""

    layer: int
    head: int
    query_pos: int | None = None
    key_pos: int | None = None


def _graph_path(data: DataRoot, slug: str) -> Path:
    from fastapi import HTTPException

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", slug) or slug.startswith("."):
        raise HTTPException(400, "a graph slug is letters, digits, '_', '-' or '.'")
    path = data._inside("graphs", f"{slug}.json")
    if not path.is_file():
        raise NotFound(f"graphs/{slug}.json")
    return path


def with_labels(data: DataRoot, doc: dict[str, Any]) -> dict[str, Any]:
    """Fill empty feature labels (clerp) from the collated explanations and say where each feature's record page is
    (metadata.saescope.record_base: /u/<model>/transcoder_latents/<set>; + /<layer>/<index>)."""
    meta = doc.get("metadata", {}).get("saescope", {})
    model, records = meta.get("model", ""), meta.get("records", "")
    if not model or not records:
        return doc
    try:
        datasets = {d["path"] for d in data.manifest(model).get("datasets", [])}
    except NotFound:
        return doc
    layers = sorted({int(n["layer"]) for n in doc["nodes"] if n["feature_type"] == FEATURE_TYPE})
    if any(f"{records}/{layer}" in datasets for layer in layers):
        meta["record_base"] = f"/u/{model}/{records}"
    for layer in layers:
        if f"{records}/{layer}" not in datasets:
            continue
        expl = data.explanations(parse_dataset(model, [*records.split("/"), str(layer)]))
        for n in doc["nodes"]:
            if n["feature_type"] == FEATURE_TYPE and int(n["layer"]) == layer and not n["clerp"]:
                index = int(n["node_id"].split("_")[1])
                n["clerp"] = (expl.get(index) or {}).get("explanation") or ""
    return doc


class GraphModels:
    """What the routes that run a graph's model need: the model, transcoders and prompt of a graph, and its local
    replacement model (the last one built, reused by the heads and QK requests)."""

    def __init__(self, data: DataRoot, hub: ModelHub) -> None:
        self.data, self.hub = data, hub
        self.frozen: dict[tuple[str, float], Any] = {}

    def loaded(self, slug: str) -> tuple[dict[str, Any], Any, Any, Any]:
        """(graph JSON, model, transcoders, prompt ids) of a graph, with one-line errors."""
        from fastapi import HTTPException

        from saescope.graph.attribute import prompt_ids

        doc = self.data._json(_graph_path(self.data, slug))
        meta = doc["metadata"].get("saescope", {})
        if not meta.get("transcoders") or not meta.get("model_spec"):
            raise HTTPException(400, "this graph does not say which model and transcoders made it; re-run saescope "
                                     "graph to use it here")
        hm = self.hub.graph_model(meta.get("model", ""), meta["model_spec"])
        tc = self.hub.transcoders(meta["transcoders"], hm.n_layers, meta.get("write_point", "auto"))
        ids = prompt_ids(hm, doc["metadata"]["prompt"])[0]
        if len(ids) != len(doc["metadata"]["prompt_tokens"]):
            raise HTTPException(409, "the model tokenizes the prompt differently from the graph; re-run saescope graph")
        return doc, hm, tc, ids

    def frozen_model(self, slug: str) -> Any:
        from saescope.graph.replacement import FrozenModel

        key = (slug, _graph_path(self.data, slug).stat().st_mtime)
        if key not in self.frozen:
            _, hm, tc, ids = self.loaded(slug)
            with self.hub.forward_lock:
                fm = FrozenModel(hm, tc, ids)
            self.frozen.clear()
            self.frozen[key] = fm
        return self.frozen[key]


def add_graph_routes(app: FastAPI, data: DataRoot, hub: ModelHub) -> None:
    from fastapi import HTTPException

    @app.get("/api/graphs")
    def graphs() -> list[dict[str, Any]]:
        """The attribution graphs in <root>/graphs (graph-metadata.json, as circuit-tracer's local server lists
        them)."""
        index = data.root / "graphs" / "graph-metadata.json"
        return data._json(index).get("graphs", []) if index.is_file() else []

    @app.get("/api/graph/{slug}")
    def graph(slug: str) -> Response:
        """One graph JSON (`saescope graph --out <root>/graphs/<slug>.json`), labelled from the collated records."""
        doc = with_labels(data, data._json(_graph_path(data, slug)))
        return Response(json.dumps(doc), media_type="application/json")

    graphs_ = GraphModels(data, hub)
    loaded, frozen_model = graphs_.loaded, graphs_.frozen_model

    @app.post("/api/graph/{slug}/heads")
    def heads_api(slug: str, req: HeadsRequest) -> dict[str, Any]:
        """An edge split by the first attention head its paths cross (exact; `residual` = paths through none)."""
        from saescope.graph.heads import split_json_edge

        sp = split_json_edge(frozen_model(slug), (req.target, req.target_type), (req.source, req.source_type))
        heads = sorted(sp.heads.items(), key=lambda kv: -abs(kv[1]))
        return {"total": sp.total, "residual": sp.residual,
                "heads": [{"layer": ly, "head": h, "weight": w} for (ly, h), w in heads]}

    @app.post("/api/graph/{slug}/qk")
    def qk_api(slug: str, req: QKRequest) -> dict[str, Any]:
        """Which features at the query and at the key make a head attend where it does."""
        from dataclasses import asdict

        from saescope.graph.qk import qk_attribution

        fm = frozen_model(slug)
        q = fm.n_pos - 1 if req.query_pos is None else req.query_pos
        return asdict(qk_attribution(fm, req.layer, req.head, q, req.key_pos, top=15))

    @app.post("/api/graph/{slug}/intervene")
    def intervene_api(slug: str, req: InterveneRequest) -> dict[str, Any]:
        """Scale features (0 = ablate) in a real forward of the graph's model and prompt; the output distribution
        before and after."""
        from saescope.graph.intervene import Intervention, intervene

        doc, hm, tc, ids = loaded(slug)
        if not req.interventions or len(req.interventions) > MAX_INTERVENTIONS:
            raise HTTPException(400, f"give 1 to {MAX_INTERVENTIONS} interventions")
        # by feature type first: circuit-tracer's error ids (0_{layer}_{pos}) can equal a layer-0 feature's id
        features = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == FEATURE_TYPE}
        ivs = {}
        for item in req.interventions:
            if item.node_id not in features:
                raise HTTPException(400, f"{item.node_id}: not a feature node of this graph (errors, embeddings and "
                                         "logits cannot be scaled)")
            layer, index, pos = (int(v) for v in item.node_id.split("_"))
            ivs[item.node_id] = Intervention(layer, pos, index, item.factor)  # a node listed twice: the last factor
        with hub.forward_lock:  # a SaescopeError (a bad position, a non-finite factor) answers 400
            res = intervene(hm, tc, ids, list(ivs.values()), top=max(1, min(req.top, 50)))
        return res.to_json()
