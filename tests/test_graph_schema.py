"""The graph JSON against the fields circuit-tracer writes (frontend/graph_models.py at 4bb8c0e), and the CLI."""

from __future__ import annotations

import json
import re

import torch

from saescope.graph import attribute as attr
from saescope.graph import prune
from saescope.graph.schema import graph_json, node_json, write_graph

# circuit-tracer's pydantic models, field → type (what its local server and Neuronpedia read)
CT_NODE = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "token_prob": float,
           "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int, "jsNodeId": str, "clerp": str,
           "influence": (float, type(None)), "activation": (float, type(None))}
CT_METADATA = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str,
               "node_threshold": float, "schema_version": int}
CT_QPARAMS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}


def test_graph_json_schema(tiny_gpt2, tmp_path):
    from test_graph_attribute import PROMPT, make_transcoders

    tc = make_transcoders(tiny_gpt2, "plt")
    graph = attr.attribute(tiny_gpt2, tc, PROMPT)
    pr = prune(graph, 0.8, 0.98)
    labels = {(int(l), int(i)): f"L{int(l)} #{int(i)}" for l, _, i in graph.active_features}
    doc = graph_json(graph, pr, "g1", 0.8, labels)
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    for spec, obj in ((CT_METADATA, doc["metadata"]), (CT_QPARAMS, doc["qParams"])):
        assert all(isinstance(obj[k], t) for k, t in spec.items())
    assert doc["metadata"]["prompt_tokens"] == graph.token_strs and len(graph.token_strs) == graph.n_pos
    ids = {}
    for n in doc["nodes"]:
        assert set(n) == set(CT_NODE) and all(isinstance(n[k], t) for k, t in CT_NODE.items()), n
        ids[n["node_id"]] = n
    kinds = [n["feature_type"] for n in doc["nodes"]]
    assert kinds.count("embedding") == graph.n_pos and kinds.count("logit") == graph.n_logits
    L = graph.n_layers
    for n in doc["nodes"]:
        ft, nid = n["feature_type"], n["node_id"]
        if ft == "cross layer transcoder":
            layer, idx, pos = map(int, nid.split("_"))
            assert n["feature"] == (layer + idx) * (layer + idx + 1) // 2 + idx and n["ctx_idx"] == pos
            assert n["jsNodeId"] == f"{layer}_{idx}-0" and n["activation"] > 0 and n["clerp"] == f"L{layer} #{idx}"
        elif ft == "mlp reconstruction error":
            assert re.fullmatch(r"0_\d+_\d+", nid) and n["feature"] == -1
        elif ft == "embedding":
            assert nid == f"E_{int(graph.tokens[n['ctx_idx']])}_{n['ctx_idx']}" and n["layer"] == "E"
        else:
            assert n["layer"] == str(L + 1) and n["ctx_idx"] == graph.n_pos - 1 and n["influence"] is None
            assert n["clerp"].startswith('Output "')
            assert n["is_target_logit"] == (n["feature"] == int(graph.logit_tokens[0]))
    # links: both ends written, weight = A[target, source]; every written feature/error is on a link
    A = graph.adjacency.to_dense()
    index = {}
    for i in pr.node_mask.nonzero().flatten().tolist():
        index[node_json(graph, i, 0.0, {})["node_id"]] = i
    on_links = set()
    for link in doc["links"]:
        assert set(link) == {"source", "target", "weight"} and link["source"] in ids and link["target"] in ids
        assert link["weight"] == float(A[index[link["target"]], index[link["source"]]])
        on_links |= {link["source"], link["target"]}
    assert len(doc["links"]) > 0
    assert all(n["node_id"] in on_links for n in doc["nodes"] if n["feature_type"] not in ("embedding", "logit"))
    out = write_graph(doc, tmp_path / "g1.json")
    assert json.loads(out.read_text()) == doc
    index_file = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index_file["graphs"]] == ["g1"]
    s = doc["metadata"]["saescope"]
    assert 0 < s["replacement_score"] <= 1 and 0 < s["completeness_score"] <= 1


def test_cli_graph(tiny_dir, tmp_path, capsys):
    from saescope.cli import main
    from saescope.models import load_model
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import save_transcoders

    hm = load_model(str(tiny_dir), device="cpu")
    cls = transcoder_class(sae_class("topk"), False)
    torch.manual_seed(0)
    ts = TranscoderSet(plts={l: cls(SAEConfig(cls.architecture, hm.d_model, 24, k=4, apply_b_dec_to_input=False))
                             for l in range(hm.n_layers)})
    save_transcoders(ts, tmp_path / "tc")
    out = tmp_path / "graphs" / "fox.json"
    rc = main(["graph", "--model", str(tiny_dir), "--device", "cpu", "--transcoders", str(tmp_path / "tc"),
               "--prompt", "The quick brown fox", "--out", str(out), "--max_feature_nodes", "20", "--target", " the"])
    assert rc == 0
    doc = json.loads(out.read_text())
    logits = [n["clerp"] for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert doc["metadata"]["slug"] == "fox" and len(logits) == 1 and logits[0].startswith('Output " the" (p=')
    assert sum(n["feature_type"] == "cross layer transcoder" for n in doc["nodes"]) <= 20
    assert "replacement" in capsys.readouterr().out
    assert main(["graph", "--model", str(tiny_dir), "--transcoders", str(tmp_path / "nope"), "--prompt", "x"]) == 2


def test_viewer_serves_graphs(tiny_gpt2, tmp_path):
    from fastapi.testclient import TestClient

    from saescope.viewer.server import create_app
    from test_graph_attribute import PROMPT, make_transcoders

    graph = attr.attribute(tiny_gpt2, make_transcoders(tiny_gpt2, "plt"), PROMPT, max_feature_nodes=30)
    doc = graph_json(graph, prune(graph), "fox", 0.8)
    write_graph(doc, tmp_path / "graphs" / "fox.json")
    c = TestClient(create_app(tmp_path))
    assert [g["slug"] for g in c.get("/api/graphs").json()] == ["fox"]
    assert c.get("/api/graph/fox").json() == doc
    assert c.get("/api/graph/nope").status_code == 404 and c.get("/api/graph/..").status_code in (400, 404)
    page = c.get("/graph")
    assert page.status_code == 200 and "/static/graph.js" in page.text and "cdn" not in page.text.lower()
    js = c.get("/static/graph.js").text
    assert "history.replaceState" in js and "/api/graph/" in js


def test_torchrun_splits_the_target_rows(tiny_dir, tmp_path):
    """`saescope graph` under torchrun with 2 gloo ranks: each rank computes every other chunk of rows, the graph
    is the one-process graph (same nodes, same links and weights)."""
    from conftest import one_process_and_two_ranks

    from saescope.models import load_model
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import save_transcoders

    hm = load_model(str(tiny_dir), device="cpu")
    cls = transcoder_class(sae_class("topk"), False)
    torch.manual_seed(0)
    ts = TranscoderSet(plts={i: cls(SAEConfig(cls.architecture, hm.d_model, 24, k=4, apply_b_dec_to_input=False))
                             for i in range(hm.n_layers)})
    save_transcoders(ts, tmp_path / "tc")
    args = ["graph", "--model", str(tiny_dir), "--device", "cpu", "--transcoders", str(tmp_path / "tc"), "--prompt",
            "The quick brown fox sat on the mat", "--max_feature_nodes", "30", "--batch_size", "4", "--chunk", "3"]
    one_process_and_two_ranks(args, tmp_path / "one.json", tmp_path / "two.json")
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["metadata"]["saescope"]["ranks"] == 2 and one["metadata"]["saescope"]["ranks"] == 1
    assert one["nodes"] == two["nodes"] and len(one["links"]) > 20
    assert one["links"] == two["links"]
