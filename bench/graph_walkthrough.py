"""The docs' graph walkthrough (docs/graphs.md), reproducible: one factual-recall graph on gemma-3-270m with
transcoders on all 18 layers, served by the viewer, screenshotted in Chromium, with the numbers the page quotes.

    python bench/graph_walkthrough.py --transcoders DIR [--root runs/walkthrough] [--shot docs/img/graph.png]

Writes <root>/graphs/<slug>.json, the screenshot, and <root>/walkthrough.json: the top logits, the strongest
features into the top logit, the pinned supernode's ablation (output distribution before/after), the heads that carry
the strongest embedding → logit edge, and the QK attribution of the head that moves the subject's information.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

PROMPT = "The Eiffel Tower is in the city of"


def serve_and_shoot(root: Path, slug: str, pins: list[str], shot: Path) -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from saescope.viewer.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(root), host="127.0.0.1", port=8765, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1700, "height": 950})
            page.set_default_timeout(900_000)  # a graph of ~10⁵ links draws slowly on a loaded machine
            page.goto(f"http://127.0.0.1:8765/graph?slug={slug}&clicked={pins[0]}")
            page.wait_for_selector("#plot[data-drawn]")
            for nid in pins:  # dispatched to the node itself: a click at its centre can land on a node drawn over it
                page.dispatch_event(f'#plot circle[data-id="{nid}"][data-type="cross layer transcoder"]', "click",
                                    {"ctrlKey": True})
            page.fill("#sn-name", "top features")
            page.click("#sn-make")
            page.select_option("#iv-on", "super:0")
            page.fill("#iv-factor", "0")
            page.click("#iv-run")
            page.wait_for_selector("#iv-out table", timeout=300_000)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        server.should_exit = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--root", default="runs/walkthrough")
    ap.add_argument("--shot", default="docs/img/graph_walkthrough.png")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max_feature_nodes", type=int, default=7500)
    ap.add_argument("--shot_only", action="store_true", help="only the screenshot of an existing <root>/walkthrough.json")
    args = ap.parse_args()
    if args.shot_only:
        done = json.loads((Path(args.root) / "walkthrough.json").read_text())
        serve_and_shoot(Path(args.root), "eiffel", done["ablated"], Path(args.shot))
        return

    import torch

    from saescope.graph.config import GraphConfig
    from saescope.graph.heads import split_edge
    from saescope.graph.intervene import Intervention, intervene
    from saescope.graph.qk import qk_attribution
    from saescope.graph.replacement import FrozenModel
    from saescope.graph.run_graph import run

    root, slug = Path(args.root), "eiffel"
    cfg = GraphConfig(prompt=args.prompt, transcoders=args.transcoders, out=str(root / "graphs" / f"{slug}.json"),
                      max_feature_nodes=args.max_feature_nodes)
    cfg.model.device = "cpu"
    hm = cfg.model.load()
    t0 = time.perf_counter()
    res = run(cfg, hm)
    seconds = time.perf_counter() - t0
    g, doc = res.graph, json.loads(res.path.read_text())
    feats = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    top_logit = next(n for n in doc["nodes"] if n["is_target_logit"])
    into = sorted((lk for lk in doc["links"] if lk["target"] == top_logit["node_id"]
                   and lk["source"] in {f["node_id"] for f in feats}), key=lambda lk: -lk["weight"])
    pins = [lk["source"] for lk in into[:4]]
    ids = g.tokens
    tc = res.tc
    ivs = [Intervention(*(int(v) for v in (p.split("_")[0], p.split("_")[2], p.split("_")[1])), 0.0) for p in pins]
    ablation = intervene(hm, tc, ids, ivs, top=5)
    fm = FrozenModel(hm, tc, ids)
    A = g.adjacency
    t = g.logit_start
    rows = A.rows == t
    emb = [(int(c), float(v)) for c, v in zip(A.cols[rows], A.vals[rows]) if g.node_kind(int(c)) == "embedding"
           and int(c) - g.embed_start < g.n_pos - 1]
    s_emb, w_emb = max(emb, key=lambda x: abs(x[1]))
    split = split_edge(fm, g, t, s_emb, min_share=0.05)
    (layer, head), _ = max(split.heads.items(), key=lambda kv: abs(kv[1]))
    qk = qk_attribution(fm, layer, head, g.n_pos - 1, top=5)
    out = {"prompt": args.prompt, "tokens": g.token_strs, "seconds": round(seconds, 1), "summary": res.summary,
           "logits": [(s, round(float(p), 4)) for s, p in zip(g.logit_strs, g.logit_probabilities)],
           "into_top_logit": [(lk["source"], round(lk["weight"], 4)) for lk in into[:8]],
           "ablated": pins, "ablation": ablation.to_json(),
           "edge": {"source": g.token_strs[s_emb - g.embed_start], "position": s_emb - g.embed_start,
                    "weight": round(w_emb, 4), "residual": round(split.residual, 4),
                    "heads": {f"L{l}.H{h}": round(v, 4) for (l, h), v in sorted(split.heads.items(),
                                                                             key=lambda kv: -abs(kv[1]))[:6]}},
           "qk": {"layer": layer, "head": head, "key_pos": qk.key_pos, "key": g.token_strs[qk.key_pos],
                  "pattern": round(qk.pattern, 4), "score": round(qk.score, 3),
                  "query": [(n, round(v, 3)) for n, v in qk.query], "key_side": [(n, round(v, 3)) for n, v in qk.key]},
           "threads": torch.get_num_threads()}
    (root / "walkthrough.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    serve_and_shoot(root, slug, pins, Path(args.shot))


if __name__ == "__main__":
    main()
