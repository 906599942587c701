"""The viewer's graph routes and /graph page: labels from the collated explanations, record links, interventions
through the API, and the page in Chromium (hover, select, pin, supernodes, intervene, state in the URL)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from saescope.graph import attribute as attr
from saescope.graph.intervene import Intervention, intervene

PROMPT = "The quick brown fox"


def graph_root(tiny_dir: Path, tmp_path: Path):
    """A viewer root with graphs/fox.json (tiny Llama, random TopK transcoders 'tcset') and a collated manifest whose
    transcoder_latents/tcset/<layer> dataset explains the first feature node. → (root, hm, ts, doc, feature node)."""
    from saescope.graph.config import GraphConfig
    from saescope.graph.run_graph import run
    from saescope.models import load_model
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import save_transcoders

    hm = load_model(str(tiny_dir), device="cpu")
    cls = transcoder_class(sae_class("topk"), False)
    ts = TranscoderSet(plts={i: cls(SAEConfig(cls.architecture, hm.d_model, 24, k=4, apply_b_dec_to_input=False))
                             for i in range(hm.n_layers)})
    save_transcoders(ts, tmp_path / "tcset")
    root = tmp_path / "root"
    cfg = GraphConfig(prompt=PROMPT, transcoders=str(tmp_path / "tcset"), out=str(root / "graphs" / "fox.json"),
                      max_feature_nodes=20)
    cfg.model.model, cfg.model.device = str(tiny_dir), "cpu"
    doc = json.loads(run(cfg, hm).path.read_text())
    feats = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(n["clerp"] == "" for n in feats)
    layer, index = int(feats[0]["layer"]), int(feats[0]["node_id"].split("_")[1])
    model_dir = root / hm.name
    expl = model_dir / "explanations" / "transcoder_latents" / "tcset" / str(layer)
    expl.mkdir(parents=True)
    (model_dir / "manifest.json").write_text(json.dumps({"format": "saescope-collated", "model": hm.name, "datasets": [
        {"path": f"transcoder_latents/tcset/{layer}", "unit_type": "transcoder_latents", "layer": layer}]}))
    (expl / "scores.json").write_text(json.dumps({"units": {str(index): {"explanation": "foxes"}}}))
    return root, hm, ts, doc, feats[0]["node_id"]


def test_viewer_intervene_and_labels(tiny_dir, tmp_path):
    """/api/graph labels features from the collated explanations and links their record pages;
    /api/graph/<slug>/intervene scales features in a real forward (factor 1: nothing moves; 0: the library's
    ablation); bad nodes are one-line 400s."""
    from fastapi.testclient import TestClient

    from saescope.graph.transcoders import from_transcoder_set
    from saescope.viewer.server import create_app

    root, hm, ts, doc, node = graph_root(tiny_dir, tmp_path)
    c = TestClient(create_app(root, model=str(tiny_dir)))
    served = c.get("/api/graph/fox").json()
    got = {n["node_id"]: n["clerp"] for n in served["nodes"] if n["feature_type"] == "cross layer transcoder"}
    assert got[node] == "foxes"
    assert served["metadata"]["saescope"]["record_base"] == f"/u/{hm.name}/transcoder_latents/tcset"

    one = c.post("/api/graph/fox/intervene", json={"interventions": [{"node_id": node, "factor": 1.0}]}).json()
    assert one["before"] == one["after"] and one["kl"] == 0.0
    zero = c.post("/api/graph/fox/intervene", json={"interventions": [{"node_id": node, "factor": 0.0}], "top": 5})
    layer, index, pos = (int(v) for v in node.split("_"))
    ids = attr.prompt_ids(hm, PROMPT)[0]
    want = intervene(hm, from_transcoder_set(ts, hm.n_layers), ids, [Intervention(layer, pos, index, 0.0)], top=5)
    assert zero.status_code == 200 and zero.json()["after"] == pytest.approx(want.after, abs=1e-6)
    assert zero.json()["tokens"] == want.tokens
    embedding = next(n["node_id"] for n in doc["nodes"] if n["feature_type"] == "embedding")
    bad = c.post("/api/graph/fox/intervene", json={"interventions": [{"node_id": embedding, "factor": 0.0}]})
    assert bad.status_code == 400 and "not a feature node" in bad.json()["detail"]
    assert c.post("/api/graph/nope/intervene", json={"interventions": []}).status_code == 404

    # heads and QK: the library's answers for the same graph
    from saescope.graph.heads import split_json_edge
    from saescope.graph.qk import qk_attribution
    from saescope.graph.replacement import FrozenModel

    fm = FrozenModel(hm, from_transcoder_set(ts, hm.n_layers), ids)
    logit = next(n for n in doc["nodes"] if n["is_target_logit"])
    link = max((lk for lk in doc["links"] if lk["target"] == logit["node_id"]), key=lambda lk: abs(lk["weight"]))
    src = next(n for n in doc["nodes"] if n["node_id"] == link["source"])
    body = {"target": logit["node_id"], "target_type": "logit", "source": src["node_id"],
            "source_type": src["feature_type"]}
    got = c.post("/api/graph/fox/heads", json=body).json()
    want = split_json_edge(fm, (logit["node_id"], "logit"), (src["node_id"], src["feature_type"]))
    assert got["total"] == pytest.approx(link["weight"], abs=1e-5, rel=1e-4) == pytest.approx(want.total)
    assert {(h["layer"], h["head"]): h["weight"] for h in got["heads"]} == pytest.approx(want.heads)
    qk = c.post("/api/graph/fox/qk", json={"layer": 1, "head": 0}).json()
    ref = qk_attribution(fm, 1, 0, len(ids) - 1, top=15)
    assert qk["key_pos"] == ref.key_pos and qk["score"] == pytest.approx(ref.score, rel=1e-5)
    assert c.post("/api/graph/fox/qk", json={"layer": 99, "head": 0}).status_code == 400


def test_browser_graph_page(tiny_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (`make test` installs Debian's chromium)")
    import uvicorn
    from conftest import free_port
    from playwright.sync_api import sync_playwright

    from saescope.viewer.server import create_app

    root, hm, _, doc, node = graph_root(tiny_dir, tmp_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(root, model=str(tiny_dir)), host="127.0.0.1", port=port,
                                           log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    feats = [n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    sel = lambda i: f'#plot circle[data-id="{i}"][data-type="cross layer transcoder"]'  # noqa: E731
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"http://127.0.0.1:{port}/graph")
            page.wait_for_selector("#plot[data-drawn]")
            assert page.locator("#plot circle").count() == len(doc["nodes"])
            assert page.locator("#plot line").count() == len(doc["links"])
            cx = dict(page.eval_on_selector_all(
                "#plot circle", "cs => cs.map(c => [c.dataset.id + '|' + c.dataset.type, +c.getAttribute('cx')])"))
            cells: dict = {}
            for n in doc["nodes"]:
                if n.get("influence") is not None:
                    cells.setdefault((n["layer"], n["ctx_idx"]), []).append(n)
            crowded = [ns for ns in cells.values() if len(ns) > 1]
            assert crowded
            for ns in crowded:  # within a cell the most influential (smallest cumulative influence) sits leftmost
                xs = [cx[f"{n['node_id']}|{n['feature_type']}"] for n in sorted(ns, key=lambda n: n["influence"])]
                assert xs == sorted(xs), xs
            strokes = set(page.eval_on_selector_all("#plot line", "ls => ls.map(l => l.getAttribute('stroke'))"))
            assert strokes <= {"#2166ac", "#b2182b"} and strokes
            page.hover(sel(node))
            assert "foxes" in page.inner_text("#tip") and "activation" in page.inner_text("#tip")
            page.click(sel(node))
            page.wait_for_function(f"location.search.includes('clicked={node}')")
            layer, index = node.split("_")[:2]
            assert page.get_attribute("#record-link", "href") == f"/u/{hm.name}/transcoder_latents/tcset/{layer}/{index}"
            for f in feats[1:3]:
                page.click(sel(f), modifiers=["Control"])
            page.wait_for_function("new URLSearchParams(location.search).get('pinned').split(',').length === 2")
            page.fill("#sn-name", "fox things")
            page.click("#sn-make")
            assert page.locator("#plot rect.super").count() == 1 and page.text_content("#plot text.super") == "fox things"
            page.select_option("#iv-on", "super:0")
            page.fill("#iv-factor", "0")
            page.click("#iv-run")
            page.wait_for_selector("#iv-out table")
            assert "KL(before‖after)" in page.inner_text("#iv-out")
            page.click("#side button.heads >> nth=0")
            page.wait_for_function("document.querySelector('#hs-0').textContent.includes('no head')")
            page.fill("#qk-layer", "1")
            page.click("#qk-run")
            page.wait_for_selector("#qk-out .lens li")
            assert "attends to" in page.inner_text("#qk-out")
            page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)
            url = page.url
            page.goto(url)  # the URL alone restores the selection and the supernode
            page.wait_for_selector("#plot[data-drawn]")
            assert page.locator("#plot rect.super").count() == 1 and page.locator("#plot circle.clicked").count() == 1
            assert all(r.startswith(f"http://127.0.0.1:{port}/") for r in requests)  # offline: nothing from a CDN
            browser.close()
    finally:
        server.should_exit = True
