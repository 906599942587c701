"""Viewer: JSON API over a collated tiny-model dataset, safety (traversal, 404, broken files), and a real browser."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
from saescope.collate.run_collate import collate
from saescope.config import ModelConfig
from saescope.corpus import CorpusConfig
from saescope.sae import SAEConfig, TopKSAE


@pytest.fixture(scope="module")
def collated_root(tiny_dir, tmp_path_factory) -> Path:
    from conftest import TEXT

    tmp = tmp_path_factory.mktemp("view")
    (tmp / "corpus.txt").write_text(TEXT * 4)
    torch.manual_seed(0)  # module-scoped: set up before the autouse seed, so the SAE would depend on test order
    sae = TopKSAE(SAEConfig("topk", 32, 48, k=4, metadata={"hook_name": "resid_post.1"}))
    sae.save(tmp / "tiny_sae")
    cfg = CollateConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), out=str(tmp / "collated"),
                        data=CorpusConfig(str(tmp / "corpus.txt")), layers="1", sae=str(tmp / "tiny_sae"),
                        collate=CollateOptions(excerpt_len=8, max_tokens=8 * 40,
                                               sizes=SlotSizes(top_k=20, n_random=15, pool=24)))
    collate(cfg)
    return tmp / "collated"


@pytest.fixture(scope="module")
def client(collated_root):
    from fastapi.testclient import TestClient

    from saescope.viewer.server import create_app

    return TestClient(create_app(collated_root))


def test_the_dataset_list_shows_an_sae_s_added_loss_first(client):
    """An SAE with an eval.json next to its weights: the dataset row carries ΔCE ± SE and KL ahead of FVU, L0."""
    import json

    sae_row = next(d for d in client.get("/api/datasets").json() if d["unit_type"] == "sae_latents")
    assert "dictionary" not in sae_row  # no eval.json yet
    ev = {"fvu": 0.2, "l0": 4.0, "dead_fraction": 0.0, "delta_ce": 0.12, "delta_ce_se": 0.008, "kl_div": 0.1,
          "kl_div_se": 0.004, "ce_clean": 3.0, "mse": 1.0, "spliced_contexts": 64, "spliced_from": "corpus"}
    path = Path(sae_row["source"]) / "eval.json"
    path.write_text(json.dumps(ev))
    try:
        rows = client.get("/api/datasets").json()
        got = next(d for d in rows if d["unit_type"] == "sae_latents")["dictionary"]
        assert list(got)[:4] == ["delta_ce", "delta_ce_se", "kl_div", "kl_div_se"] and got["fvu"] == 0.2
        assert "mse" not in got and all("dictionary" not in d for d in rows if d["unit_type"] != "sae_latents")
        assert got["spliced_contexts"] == 64 and got["spliced_from"] == "corpus"  # what the ΔCE was measured on
        path.write_text("{broken")
        assert "dictionary" not in next(d for d in client.get("/api/datasets").json() if d.get("source"))
    finally:
        path.unlink()


def test_datasets_units_and_records(client, tiny_dir):
    ds = client.get("/api/datasets").json()
    paths = {d["path"] for d in ds}
    assert paths == {"mlp_neurons/1", "attention_heads/1", "sae_latents/tiny_sae/1"}
    model = ds[0]["model"]
    r = client.get(f"/api/units/{model}/mlp_neurons/1", params={"sort": "max_activation", "desc": True, "limit": 5})
    body = r.json()
    assert r.status_code == 200 and body["total"] == 48 and len(body["units"]) == 5
    maxes = [u["max_activation"] for u in body["units"]]
    assert maxes == sorted(maxes, reverse=True)
    rec = client.get(f"/api/record/{model}/mlp_neurons/1/3").json()
    assert rec["record"]["neuron_id"] == {"dataclass_name": "NeuronId", "neuron_index": 3, "layer_index": 1}
    assert rec["prev"] == 2 and rec["next"] == 4 and rec["max_activation"] == rec["summary"]["max_activation"]
    head = client.get(f"/api/record/{model}/attention_heads/1/0").json()
    assert head["by_token_pair"] and len(head["record"]["most_positive_activation_records"][0]["activations"]) == 36
    lens = client.get(f"/api/logit_lens/{model}/sae_latents/tiny_sae/1/5").json()
    assert len(lens["top"]) == 10 and lens["top"][0]["logit"] >= lens["top"][-1]["logit"]
    probe = client.post("/api/probe", json={"model": model, "dataset": "mlp_neurons/1", "index": 3,
                                             "text": "the quick brown fox"}).json()
    assert len(probe["tokens"]) == len(probe["activations"]) > 0
    # the live probe on a record's own excerpt gives back the activations collation stored for it
    top = rec["record"]["most_positive_activation_records"][0]
    again = client.post("/api/probe", json={"model": model, "dataset": "mlp_neurons/1", "index": 3,
                                             "text": "".join(top["tokens"])}).json()
    assert again["tokens"] == top["tokens"]
    assert again["activations"] == pytest.approx(top["activations"], abs=1e-5)
    assert max(again["normalized"]) == pytest.approx(1.0, abs=1e-4)  # its max is the record's max
    hp = client.post("/api/probe", json={"model": model, "dataset": "attention_heads/1", "index": 1,
                                          "text": "the quick brown fox"}).json()
    n = len(hp["tokens"])
    assert len(hp["activations"]) == n * (n + 1) // 2
    pair_top = head["record"]["most_positive_activation_records"][0]  # by token pair, the same rule
    hp = client.post("/api/probe", json={"model": model, "dataset": "attention_heads/1", "index": 0,
                                          "text": "".join(pair_top["tokens"])}).json()
    assert hp["tokens"] == pair_top["tokens"]
    assert hp["activations"] == pytest.approx(pair_top["activations"], abs=1e-5)
    assert client.get("/u/x/mlp_neurons/1/3").status_code == 200  # stable URLs serve the page
    # the histogram counts every collated token (pair) exactly: positives agree with the density, all add up to n
    for path, i in (("mlp_neurons/1", 3), ("sae_latents/tiny_sae/1", 5), ("attention_heads/1", 0)):
        r = client.get(f"/api/record/{model}/{path}/{i}").json()
        h = r["histogram"]
        assert sum(h["positive"]) + sum(h["negative"]) + h["zero"] == h["n"] > 0
        assert sum(h["positive"]) == pytest.approx(r["summary"]["density"] * h["n"], abs=0.5)
        if not r["by_token_pair"]:
            assert h["n"] == r["tokens"]
    mlp = client.get(f"/api/record/{model}/mlp_neurons/1/3").json()["histogram"]
    assert sum(mlp["negative"]) > 0 and sum(mlp["positive"]) > 0  # GELU: both signs, counted apart


def test_debug_api(client):
    model = client.get("/api/datasets").json()[0]["model"]
    body = {"model": model, "prompt": "the cat sat on the mat and the", "target": " cat", "distractor": " dog"}
    r = client.post("/api/debug", json=body)
    res = r.json()
    assert r.status_code == 200 and res["saes"] == ["tiny_sae (resid_post.1)"] and len(res["nodes"]) == 30
    many = client.post("/api/debug", json={**body, "top": 200}).json()["nodes"]
    grads = [abs(n["act_grad"]) for n in many]
    assert grads == sorted(grads, reverse=True) and many[:30] == res["nodes"]  # ranked by |act × grad|, top first
    latent = next(n for n in many if n["kind"] == "latent")  # the collated SAE is spliced in, its latents link home
    assert latent["url"] == f"/u/{model}/sae_latents/tiny_sae/1/{latent['index']}"
    mlp = next(n for n in many if n["kind"] == "mlp" and n["layer"] == 1)  # layer 1 is the collated one
    # links lead only to units that have records: none for the layers that were not collated
    assert all(n.get("url") is None for n in many if n["kind"] in ("mlp", "head") and n["layer"] != 1)
    assert any(n["kind"] in ("mlp", "head") and n["layer"] != 1 for n in many)
    assert all(client.get(n["url"].replace("/u/", "/api/record/", 1)).status_code == 200 for n in many if n.get("url"))
    assert mlp["url"] == f"/u/{model}/mlp_neurons/1/{mlp['index']}" and mlp["mean"] is not None
    ab = client.post("/api/debug", json={**body, "ablate": {mlp["name"]: "mean"}}).json()
    assert ab["ablated_behaviour"] is not None and ab["behaviour"] == pytest.approx(res["behaviour"])
    assert client.post("/api/debug", json={**body, "prompt": ""}).status_code == 400
    assert "expected mlp.L.i@t" in client.post("/api/debug", json={**body, "trace": "x"}).json()["detail"]
    schema = client.get("/api/openapi.json")  # the API, /api/debug included, is documented, offline
    assert schema.status_code == 200 and "/api/debug" in schema.json()["paths"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/openapi.json" in docs.text and "http" not in docs.text  # nothing loaded from elsewhere


def test_steering_adds_the_units_write_direction_and_strength_zero_changes_nothing(client, tiny_dir):
    import torch

    from saescope.models import load_model
    from saescope.units import UnitSet
    from saescope.explore import steer

    model = client.get("/api/datasets").json()[0]["model"]
    body = {"model": model, "dataset": "sae_latents/tiny_sae/1", "index": 5, "prompt": "the cat sat on", "tokens": 8}
    zero = client.post("/api/steer", json={**body, "strength": 0.0}).json()
    assert zero["steered"] == zero["unsteered"] and len(zero["unsteered"]) == 8 and zero["hookpoint"] == "resid_post.1"
    strong = client.post("/api/steer", json={**body, "strength": 200.0}).json()
    assert strong["unsteered"] == zero["unsteered"] and strong["steered"] != strong["unsteered"]
    neuron = client.post("/api/steer", json={**body, "dataset": "mlp_neurons/1", "strength": 0.0}).json()
    assert neuron["hookpoint"] == "mlp_post_act.1" and neuron["steered"] == neuron["unsteered"]
    assert client.post("/api/steer", json={**body, "dataset": "attention_heads/1", "strength": 1.0}).status_code == 400
    assert client.post("/api/steer", json={**body, "index": 999, "strength": 1.0}).status_code == 404
    # the vector added is strength × the latent's decoder row, at every position
    from saescope.sae import load_sae

    hm = load_model(str(tiny_dir))
    sae = load_sae(Path(next(d for d in client.get("/api/datasets").json() if d["unit_type"] == "sae_latents")["source"]))
    t = UnitSet("sae_latents", 1, "tiny_sae", sae, "resid_post.1").write_direction(hm, 5)
    torch.testing.assert_close(t.direction, sae.W_dec[5].detach())
    ids = torch.tensor([[hm.tokenizer.bos_token_id, 5, 6, 7]])
    clean = hm.run_with_cache(ids, None, ["resid_post.1"])["resid_post.1"]
    with hm.patch("resid_post.1", lambda a: a + 3.0 * t.direction):
        patched = hm.run_with_cache(ids, None, ["resid_post.1"])["resid_post.1"]
    torch.testing.assert_close(patched - clean, (3.0 * t.direction).expand_as(clean), rtol=1e-5, atol=1e-5)
    assert steer(hm, t, "the cat", 0.0, 4)["steered"] == steer(hm, t, "the cat", 0.0, 4)["unsteered"]


def test_concurrent_model_requests_do_not_see_each_others_hooks(client):
    """A steering generate and early-stopping probes at once: hooks live on the shared model, so a forward that ran
    during another's capture used to stop early (500 _StopForward)."""
    from concurrent.futures import ThreadPoolExecutor

    model = client.get("/api/datasets").json()[0]["model"]
    steer = {"model": model, "dataset": "sae_latents/tiny_sae/1", "index": 5, "prompt": "the cat sat on",
             "strength": 3.0, "tokens": 12}
    probe = {"model": model, "dataset": "mlp_neurons/1", "index": 3, "text": "the quick brown fox jumps"}
    calls = [("/api/steer", steer), ("/api/probe", probe)] * 6
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda c: client.post(c[0], json=c[1]).status_code, calls))
    assert codes == [200] * len(calls)


def test_logit_lens_reads_in_logits_when_the_unit_fires_at_its_max(client, tiny_dir):
    """The lens is the logit change of the unit's write at its max activation, divided by the final norm's median
    scale on the unit's top excerpts (measured here with a hook of our own), and says so."""
    import torch

    from saescope.models import load_model
    from saescope.models.lens import logit_lens

    model = client.get("/api/datasets").json()[0]["model"]
    hm = load_model(str(tiny_dir))
    rec = client.get(f"/api/record/{model}/mlp_neurons/1/3").json()["record"]
    tops = [r for r in rec["most_positive_activation_records"] if max(r["activations"]) > 0][:5]
    act = max(max(r["activations"]) for r in tops)
    scales = []
    h = hm.final_norm().register_forward_pre_hook(lambda m, a: scales.append(
        a[0][0, 1:].float().pow(2).mean(-1).add(hm.final_norm().variance_epsilon).sqrt()))
    with torch.no_grad():
        for r in tops:
            ids = hm.tokenizer("".join(r["tokens"]), add_special_tokens=False)["input_ids"][:64]
            hm.model(input_ids=torch.tensor([[hm.tokenizer.bos_token_id, *ids]]))
    h.remove()
    scale = float(torch.cat(scales).median())
    want = logit_lens(hm, hm.W_out_mlp(1)[3].detach(), 1) * act / scale
    got = client.get(f"/api/logit_lens/{model}/mlp_neurons/1/3").json()
    assert got["norm_scale"] == pytest.approx(scale, rel=1e-4) and got["activation"] == pytest.approx(act)
    assert got["top"][0]["logit"] == pytest.approx(float(want.max()), rel=1e-3)
    assert got["bottom"][0]["logit"] == pytest.approx(float(want.min()), rel=1e-3)
    assert got["units"].startswith("logit change when the unit fires at its max")


def test_a_long_debug_request_does_not_hold_the_model(client, monkeypatch):
    """/debug holds the model lock for its forward and backward only: a probe sent while the (slow) ranking runs
    answers at once; a prompt past the bound is refused with a clear error before the model is touched."""
    import saescope.debug.run_debug as dbg

    model = client.get("/api/datasets").json()[0]["model"]
    ranking, slow = threading.Event(), 3.0
    real = dbg.rank_nodes

    def slow_rank(*a, **k):
        ranking.set()
        time.sleep(slow)  # stands for the ranking of a long prompt on a big model (tens of seconds)
        return real(*a, **k)
    monkeypatch.setattr(dbg, "rank_nodes", slow_rank)
    body = {"model": model, "prompt": "the cat sat on the mat and the", "target": " cat"}
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", client.post("/api/debug", json=body)))
    t.start()
    assert ranking.wait(30)
    t0 = time.perf_counter()
    r = client.post("/api/probe", json={"model": model, "dataset": "mlp_neurons/1", "index": 3, "text": "the cat"})
    waited = time.perf_counter() - t0
    t.join()
    assert r.status_code == 200 and done["r"].status_code == 200
    assert waited < slow / 2, f"the probe queued {waited:.1f} s behind /debug"
    from saescope.explore import DEBUG_MAX_TOKENS

    long = client.post("/api/debug", json={**body, "prompt": "the cat " * DEBUG_MAX_TOKENS})
    assert long.status_code == 400 and f"at most {DEBUG_MAX_TOKENS}" in long.json()["detail"]


def test_neighbours_and_search_by_inference(client, collated_root, capsys):
    import torch

    from saescope.cli import main
    from saescope.sae import load_sae

    ds = client.get("/api/datasets").json()
    model = ds[0]["model"]
    nb = client.get(f"/api/neighbours/{model}/sae_latents/tiny_sae/1/5", params={"k": 4}).json()
    sae = load_sae(Path(next(d for d in ds if d["unit_type"] == "sae_latents")["source"]))
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    cos = (W @ W[5]).tolist()
    naive = sorted((i for i in range(48) if i != 5), key=lambda i: -cos[i])[:4]  # brute force
    assert [n["index"] for n in nb["decoder"]] == naive
    assert all(0 < c["fraction"] <= 1 and c["index"] != 5 for c in nb["coactive"])
    assert client.get(f"/api/neighbours/{model}/mlp_neurons/1/5").status_code == 404
    res = client.post("/api/search", json={"model": model, "text": "the cat sat on the mat"}).json()
    assert len(res["tokens"]) == len(res["units"]) > 3
    datasets = {u["dataset"] for units in res["units"] for u in units}
    assert datasets <= {"mlp_neurons/1", "attention_heads/1", "sae_latents/tiny_sae/1"} and len(datasets) >= 2
    for units in res["units"]:
        rel = [u["relative"] for u in units]
        assert rel == sorted(rel, reverse=True) and all(r > 0 for r in rel)
    # relative = activation / the unit's collated max activation
    u = res["units"][2][0]
    row = client.get(f"/api/record/{model}/{u['dataset']}/{u['index']}").json()
    assert u["relative"] == pytest.approx(u["activation"] / row["max_activation"], rel=1e-3, abs=1e-4)
    assert client.post("/api/search", json={"model": model, "text": ""}).status_code == 400
    assert main(["search", "the cat sat", "--root", str(collated_root), "--per_token", "2"]) == 0
    out = capsys.readouterr().out
    toks = client.post("/api/search", json={"model": model, "text": "the cat sat"}).json()["tokens"]
    listed = sum(out.count(f"{kind}/") for kind in ("sae_latents", "mlp_neurons", "attention_heads"))
    assert all(repr(t) in out for t in toks) and listed >= len(toks)  # every token lists units, of whatever kind


def test_unit_table_filters(client, collated_root):
    import json

    model = client.get("/api/datasets").json()[0]["model"]
    base = f"/api/units/{model}/sae_latents/tiny_sae/1"
    every = client.get(base, params={"limit": 1000}).json()["units"]
    dense = client.get(base, params={"limit": 1000, "min_density": 0.05}).json()["units"]
    assert dense and all(u["density"] >= 0.05 for u in dense) and len(dense) < len(every)
    live = client.get(base, params={"limit": 1000, "hide_dead": True}).json()["units"]
    assert [u["index"] for u in live] == [u["index"] for u in every if u["max_activation"] > 0]
    # explanations with scores, one a constant prediction: flagged, hidden on request, filtered by score
    scores = collated_root / model / "explanations" / "sae_latents" / "tiny_sae" / "1" / "scores.json"
    scores.parent.mkdir(parents=True, exist_ok=True)
    scores.write_text(json.dumps({"units": {
        "1": {"explanation": "cats", "score": 0.0, "scores": {"constant_prediction": True}},
        "2": {"explanation": "dogs", "score": 0.7, "scores": {"constant_prediction": False}},
        "3": {"explanation": "mats", "score": 0.2, "scores": {"constant_prediction": False}}},
        "summary": {"units": 3, "mean_score": 0.3, "fraction_ge_0.8": 0.0, "mean_null_score": float("nan")}}))
    try:
        page = client.get(base, params={"limit": 1000}).json()
        rows = {u["index"]: u for u in page["units"]}
        assert rows[1]["constant"] and not rows[2]["constant"]
        # the file's summary is served (NaN, undefined, as null)
        assert page["scores_summary"] == {"units": 3, "mean_score": 0.3, "fraction_ge_0.8": 0.0,
                                          "mean_null_score": None}
        no_const = client.get(base, params={"limit": 1000, "hide_constant": True}).json()["units"]
        assert 1 not in [u["index"] for u in no_const] and len(no_const) == len(every) - 1
        good = client.get(base, params={"limit": 1000, "min_score": 0.5}).json()["units"]
        assert [u["index"] for u in good] == [2]
    finally:
        scores.unlink()


def test_unknown_units_traversal_and_broken_files(client, collated_root):
    model = client.get("/api/datasets").json()[0]["model"]
    assert client.get(f"/api/record/{model}/mlp_neurons/1/9999").status_code == 404
    assert client.get(f"/api/record/{model}/secrets/1/0").status_code == 404
    for bad in ("/api/record/..%2F..%2Fetc/mlp_neurons/1/0", f"/api/units/{model}/mlp_neurons/..%2F..%2F..",
                f"/api/units/{model}/sae_latents/..%2F/1", "/static/..%2F..%2Fdata.py", "/static/../../io.py"):
        r = client.get(bad)
        assert r.status_code == 404, bad
        assert "root:" not in r.text
    broken = collated_root / model / "mlp_neurons" / "1" / "records.safetensors"
    good = broken.read_bytes()
    broken.write_bytes(good[:50])
    r = client.get(f"/api/record/{model}/mlp_neurons/1/7")
    assert r.status_code == 422 and "mlp_neurons/1/records.safetensors: not a readable records file" in r.json()["detail"]
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2)}, str(broken), metadata={"format": "other"})  # safetensors, but not records
    r = client.get(f"/api/record/{model}/mlp_neurons/1/7")
    assert r.status_code == 422 and "not a saescope records file" in r.json()["detail"]
    broken.write_bytes(good)
    assert client.get(f"/api/record/{model}/mlp_neurons/1/7").status_code == 200


def test_browser_end_to_end(collated_root, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (`make test` installs Debian's chromium)")
    import json

    import uvicorn
    from conftest import free_port
    from playwright.sync_api import sync_playwright

    from saescope.viewer.server import create_app

    model = json.loads(next(collated_root.glob("*/manifest.json")).read_text())["model"]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(collated_root), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#datasets a >> text=mlp_neurons")
            page.wait_for_selector("#units td a")
            page.click("#units th[data-k=max_activation]")  # toggles the sort order
            page.click("#units td a >> nth=0")
            page.wait_for_selector("#top .seq .tok")
            assert page.locator("#top .seq").count() == 20
            assert page.locator("#top .excerpt .emax").count() == 20  # each top excerpt labelled with its own max
            assert page.locator("#random .seq").count() == 15
            styled = page.eval_on_selector_all("#top .seq .tok", "els => els.filter(e => e.style.background).length")
            assert styled > 0
            assert int(page.get_attribute("#hist", "data-drawn")) > 0
            page.wait_for_selector("#lens ol li")
            page.fill("#probe-text", "the cat sat on the mat")
            page.click("#probe-run")
            page.wait_for_selector("#probe-out .tok")
            assert page.locator("#probe-out .tok").count() > 3
            page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)
            page.goto(f"http://127.0.0.1:{port}/u/{model}/mlp_neurons/1/3")
            page.wait_for_selector("#top .seq .tok")
            label = page.inner_text("#hist-label")  # exact counts over every collated token, signs apart
            n_tok = page.evaluate(f"fetch('/api/record/{model}/mlp_neurons/1/3').then(r => r.json())"
                                                  ".then(r => r.histogram.n)")
            assert f"all {n_tok:,} collated tokens" in label and "negative" in label and "log counts" in label
            assert n_tok > 0 and int(page.get_attribute("#hist", "data-drawn")) > 0
            # negative activations are drawn (red), not white
            negs = page.eval_on_selector_all("#top .seq .tok.neg", "els => els.map(e => e.style.background)")
            assert negs and all("220, 38, 38" in b for b in negs)  # SiLU neurons go negative
            page.keyboard.press("ArrowRight")  # keyboard next unit
            page.wait_for_url(f"**/u/{model}/mlp_neurons/1/4")
            # the dataset table keeps its sort and filters in the URL, and Back restores them
            page.goto(f"http://127.0.0.1:{port}/u/{model}/sae_latents/tiny_sae/1")
            page.wait_for_selector("#units td a")
            page.click("#units th[data-k=index]")
            page.check("#hide_dead")
            page.wait_for_function("location.search.includes('hide_dead=true') && location.search.includes('sort=index')")
            page.click("#units td a >> nth=0")
            page.wait_for_selector("#top")
            page.go_back()
            page.wait_for_selector("#units td a")
            assert page.is_checked("#hide_dead") and "sort=index" in page.url
            page.fill("#jump", "4")
            page.press("#jump", "Enter")
            page.wait_for_url(f"**/u/{model}/sae_latents/tiny_sae/1/4")
            # a sparse latent: only the excerpts where it fires, and how often it fires; a dead one says so
            summary = json.loads((collated_root / model / "sae_latents" / "tiny_sae" / "1" / "summary.json").read_text())
            rows = summary["units"]
            sparse = next(u for u in rows if 0 < u["firing_excerpts"] < 20)
            page.goto(f"http://127.0.0.1:{port}/u/{model}/sae_latents/tiny_sae/1/{sparse['index']}")
            page.wait_for_selector("#fires")
            assert page.locator("#top .seq").count() == sparse["firing_excerpts"]
            assert "fires on" in page.inner_text("#fires") and " of 320 tokens" in page.inner_text("#fires")
            dead = next((u for u in rows if u["max_activation"] <= 0), None)
            if dead is not None:
                page.goto(f"http://127.0.0.1:{port}/u/{model}/sae_latents/tiny_sae/1/{dead['index']}")
                page.wait_for_selector("#dead")
                assert page.locator("#top .seq").count() == 0
            page.goto(f"http://127.0.0.1:{port}/u/{model}/attention_heads/1/0")
            page.wait_for_selector("#top .seq.pairs .tok")
            page.hover("#top .seq.pairs .tok >> nth=3")
            q, k = map(int, page.get_attribute("#top .seq.pairs >> nth=0", "data-top-pair").split(","))
            assert 0 <= k <= q  # the excerpt's top pair is marked: a query and a key at or before it
            assert page.locator("#toppairs tr").count() == 11  # header + the 10 largest query ← key pairs
            page.click("#top .seq.pairs .matrix-btn >> nth=0")  # the pattern as a matrix, on demand
            assert int(page.get_attribute("#top canvas.matrix", "data-cells")) == 36
            vals = [float(v) for v in page.eval_on_selector_all("#toppairs td:nth-child(3)", "els => els.map(e => e.textContent)")]
            assert vals == sorted(vals, reverse=True)
            page.goto(f"http://127.0.0.1:{port}/u/{model}/mlp_neurons/1/99999")
            page.wait_for_selector("#error")
            page.goto(f"http://127.0.0.1:{port}/u/{model}/mlp_neurons/1/abc")  # a readable error, not [object Object]
            page.wait_for_selector("#error")
            assert "not a unit number" in page.inner_text("#error")
            # the Debug page: enter a prompt, rank nodes, ablate the top node, see the behaviour move
            page.goto(f"http://127.0.0.1:{port}/debug")
            page.fill("#prompt", "the cat sat on the mat and the")
            page.fill("#target", " cat")
            page.fill("#distractor", " dog")
            page.click("#go")
            page.wait_for_selector("#nodes td a")
            before = page.inner_text("#behaviour")
            assert page.locator("#nodes tr").count() > 10 and "/debug?" in page.url and "prompt=" in page.url
            page.click("#nodes button.abl >> nth=0")
            page.wait_for_selector("#ablated")
            assert "Δ" in page.inner_text("#ablated") and page.inner_text("#behaviour") == before
            assert "=zero" in page.input_value("#ablate")
            page.click("#nodes button.prs >> nth=0")  # a head's token-pair view of the prompt
            page.wait_for_selector("table.pairgrid td[title]")
            assert "pairs=head." in page.url
            page.screenshot(path=str(tmp_path / "debug.png"), full_page=True)
            page.click("#nodes button.trc:text-is('k') >> nth=0")  # trace a head upstream through its key side
            page.wait_for_function("document.querySelector('#behaviour') && "
                                   "document.querySelector('#behaviour').innerText.includes('through its key side')")
            assert ":k" in page.input_value("#trace") and "trace=head." in page.url
            assert page.locator("#nodes tr").count() > 5
            # steering from a unit page: strength in the URL, both continuations shown
            page.goto(f"http://127.0.0.1:{port}/u/{model}/sae_latents/tiny_sae/1/5?prompt=the+cat&strength=0")
            page.wait_for_selector("#steer-steered")
            assert page.inner_text("#steer-steered") == page.inner_text("#steer-plain")
            page.wait_for_selector("#nb-decoder li a")
            # search by inference: click a token, see the units behind it, click through
            page.goto(f"http://127.0.0.1:{port}/search?text=the+cat+sat+on+the+mat")
            page.wait_for_selector("#hits td a")
            page.click("#tokens .tok >> nth=1")
            page.wait_for_selector("#tokens .tok.sel")
            page.click("#hits td a >> nth=0")
            page.wait_for_selector("#top .seq .tok")
            page.goto(f"http://127.0.0.1:{port}/api/docs")
            page.wait_for_selector("h3.endpoint >> text=\"POST /api/debug\"")
            browser.close()
        assert (tmp_path / "unit.png").stat().st_size > 10_000 and (tmp_path / "debug.png").stat().st_size > 10_000
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("arch", ["gemma", "gpt2"])
def test_logit_lens_folds_the_norms_between_the_unit_and_the_unembedding(arch):
    """The lens of an MLP neuron equals the logits' change when its write is added to the MLP's output, computed
    with the model's own post-feedforward norm, final norm and unembedding with their 1/rms frozen (linearised),
    up to that positive factor; on Gemma with non-trivial norm weights the unfolded W_out·W_U ranks differently."""
    import torch
    from conftest import make_model

    from saescope.models.lens import logit_lens

    hm = make_model(arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in hm.model.modules():
            if hasattr(m, "weight") and m.weight is not None and "Norm" in type(m).__name__:
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 2)
    L, i = 1, 5
    write = hm.W_out_mlp(L)[i].detach().float()
    lens = logit_lens(hm, write, L)

    def frozen(norm, x, dx):
        """The norm's change for x → x + dx with its normalising factor held at x, through the module itself:
        norm(dx) is gain ⊙ (centred) dx / scale(dx), so rescaling it by scale(dx) / scale(x) freezes the scale."""
        if isinstance(norm, torch.nn.LayerNorm):
            scale = lambda v: torch.sqrt(v.var(unbiased=False) + norm.eps)  # noqa: E731
            return (norm(dx) - norm.bias) * scale(dx) / scale(x)
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
        scale = lambda v: torch.sqrt(v.pow(2).mean() + eps)  # noqa: E731
        return norm(dx) * scale(dx) / scale(x)

    x_mlp = torch.randn(hm.d_model, generator=g)
    x_fin = torch.randn(hm.d_model, generator=g)
    with torch.no_grad():
        dx = write
        pn = hm.post_mlp_norm(L)
        if pn is not None:
            dx = frozen(pn, x_mlp, dx)
        dy = frozen(hm.final_norm(), x_fin, dx)
        dlogits = hm.model.get_output_embeddings()(dy)  # the model's own unembedding (no bias in these models)
    live = lens.abs() > 1e-6  # tokens whose unembedding row is zero (padding) have no lens
    assert int(live.sum()) > 0.9 * lens.numel()
    torch.testing.assert_close(dlogits[~live], torch.zeros_like(dlogits[~live]), rtol=0, atol=1e-5)
    ratio = dlogits[live] / lens[live]
    assert float(ratio.min()) > 0
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=0)
    if arch == "gemma":
        unfolded = write @ hm.W_U().detach().float()
        assert not torch.equal(unfolded.topk(10).indices, lens.topk(10).indices)


def test_each_dataset_shows_its_own_token_count(tmp_path):
    """Pair datasets see fewer excerpts than the run: the index shows each dataset's count, not the run's."""
    from saescope.viewer.data import DataRoot

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({
        "format": "saescope-collated", "model": "m", "tokens": 200_000, "datasets": [
            {"unit_type": "mlp_neurons", "layer": 1, "path": "mlp_neurons/1", "units": 4, "tokens": 200_000},
            {"unit_type": "attention_heads", "layer": 1, "path": "attention_heads/1", "units": 4, "tokens": 131_072},
            {"unit_type": "mlp_neurons", "layer": 2, "path": "mlp_neurons/2", "units": 4}]}))
    got = {d["path"]: d["tokens"] for d in DataRoot(tmp_path).datasets()}
    assert got == {"mlp_neurons/1": 200_000, "attention_heads/1": 131_072, "mlp_neurons/2": 200_000}


def test_search_ranks_by_capped_relative_activation_and_leaves_dense_units_out(tiny_gpt2):
    """Known activations through a hand-made source: a dense unit at 0.9 of its max everywhere is left out by default
    (and counted), a unit at 3.5× its max ranks level with one at its max (capped at 1; the sparser first), and
    max_density 1 brings the dense one back."""
    import torch

    from saescope.units import UnitGroup
    from saescope.explore import SearchSource, search

    hm = tiny_gpt2
    text = "the cat sat"
    T = len(hm.tokenizer(text, add_special_tokens=False)["input_ids"])
    acts = torch.zeros(4, 1, T)  # [U, B, T]
    acts[0] = 0.9  # dense: 0.9 × its max on every token
    acts[1, 0, 0] = 3.5  # 3.5 × its max on token 0
    acts[2, 0, 0] = 2.0  # exactly its max on token 0, sparser than unit 1
    acts[3, 0, 1] = 0.5  # half its max on token 1
    group = UnitGroup("sae_latents", 0, 4, ["resid_post.0"], lambda cache: acts)
    src = SearchSource("sae_latents/x/0", group, torch.tensor([1.0, 1.0, 2.0, 1.0]), {},
                       torch.tensor([0.6, 0.002, 0.001, 0.01]))
    res = search(hm, [src], text, per_token=3)
    assert res["left_out"] == 1 and res["max_density"] == 0.1
    assert [u["index"] for u in res["units"][0]] == [2, 1]  # both capped at 1: the sparser first; no dense unit
    assert res["units"][0][1]["relative"] == 3.5  # the value shown is the real ratio
    assert [u["index"] for u in res["units"][1]] == [3] and res["units"][2] == []
    every = search(hm, [src], text, per_token=3, max_density=1.0)
    assert every["left_out"] == 0 and [u["index"] for u in every["units"][2]] == [0]


def test_browser_unit_dataset_and_debug_pages_say_what_they_show(collated_root, tmp_path):
    """The page points of issue 27 in Chromium: top activations first, numbered; quantile headings with their range
    and without the top excerpts again; the probe text in the URL; strength=abc refused and an old result cleared;
    a bad filter empties the table; "no units match"; dead units list no top token; the pair matrix has axes; in the
    debugger Back undoes an ablation, the pair grid is blue for positive, and the columns are explained."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (`make test` installs Debian's chromium)")
    import uvicorn
    from conftest import free_port
    from playwright.sync_api import sync_playwright

    from saescope.viewer.server import create_app

    model = json.loads(next(collated_root.glob("*/manifest.json")).read_text())["model"]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(collated_root), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    summary = json.loads((collated_root / model / "sae_latents" / "tiny_sae" / "1" / "summary.json").read_text())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"{base}/u/{model}/sae_latents/tiny_sae/1/5?probe=the+dog+sat")
            page.wait_for_selector("#top .excerpt")
            assert page.locator("#top .excerpt").first.bounding_box()["y"] < page.locator("#hist").bounding_box()["y"]
            assert page.inner_text("#top .exnum >> nth=0").strip() == "#1"
            page.wait_for_selector("#probe-out .tok")  # ?probe= fills the probe and runs it
            assert page.input_value("#probe-text") == "the dog sat"
            page.fill("#probe-text", "the mat")
            page.click("#probe-run")
            page.wait_for_function("location.search.includes('probe=the+mat')")
            for h in page.locator("#quantiles h3").all_inner_texts():
                assert "≥ 0.000" not in h and "excerpt max" in h
            tops = page.eval_on_selector_all("#top .seq", "els => els.map(e => e.innerText)")
            quant = page.eval_on_selector_all("#quantiles .seq", "els => els.map(e => e.innerText)")
            assert len(tops) > 0 and not set(quant) & set(tops)  # the top bucket does not repeat the top excerpts
            page.fill("#steer-strength", "0")
            page.click("#steer-run")
            page.wait_for_selector("#steer-steered")
            page.fill("#steer-strength", "")  # an error on the same page clears the old result
            page.click("#steer-run")
            page.wait_for_selector("#steer-error")
            assert page.locator("#steer-steered").count() == 0
            page.goto(f"{base}/u/{model}/sae_latents/tiny_sae/1/5?prompt=the+cat&strength=abc")
            page.wait_for_selector("#steer-error")
            assert "not a number" in page.inner_text("#steer-error") and page.locator("#steer-steered").count() == 0
            page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)
            # the dataset page: a bad filter says so and empties the table; an empty result says so
            page.goto(f"{base}/u/{model}/sae_latents/tiny_sae/1")
            page.wait_for_selector("#units td a")
            page.fill("#min_density", "abc")
            page.press("#min_density", "Enter")
            page.wait_for_function("document.querySelector('#units-error').innerText.includes('min_density')")
            assert page.locator("#units tr").count() == 0
            page.fill("#min_density", "")
            page.press("#min_density", "Enter")
            page.fill("#q", "zzzz-no-such-token")
            page.wait_for_function("document.querySelector('#page').innerText.includes('no units match')")
            dead = [u["index"] for u in summary["units"] if u["max_activation"] <= 0]
            if dead:
                page.goto(f"{base}/u/{model}/sae_latents/tiny_sae/1?sort=index&desc=false&q=")
                page.wait_for_selector("#units td a")
                row = page.locator(f"#units tr:has(a[href$='/{dead[0]}'])")
                assert row.locator("td >> nth=5").inner_text() == "–"
            # a head's pair matrix has axis labels
            page.goto(f"{base}/u/{model}/attention_heads/1/0")
            page.wait_for_selector("#top .matrix-btn")
            page.click("#top .matrix-btn >> nth=0")
            assert page.get_attribute("#top canvas.matrix >> nth=0", "data-axes") == "query,key"
            # the debugger: Back after an ablation returns to the plain ranking; the pair grid is blue for +
            page.goto(f"{base}/debug?prompt=the+cat+sat+on+the+mat+and+the&target=+cat&distractor=+dog")
            page.wait_for_selector("#nodes td")
            assert "norm of the vector" in page.inner_text("#conventions")
            page.click("#nodes button.abl >> nth=0")
            page.wait_for_selector("#ablated")
            page.go_back()
            page.wait_for_function("!document.querySelector('#ablated') && !location.search.includes('zero')")
            assert page.input_value("#ablate") == ""
            page.goto(f"{base}/debug?prompt=the+cat+sat&target=+cat&freeze_norms=all")  # the convention is a choice
            page.wait_for_selector("#conventions")
            assert "all: every norm" in page.inner_text("#conventions") and page.input_value("#freeze_norms") == "all"
            page.click("#nodes button.prs >> nth=0")
            page.wait_for_selector("table.pairgrid td[title]")
            colours = page.eval_on_selector_all(
                "table.pairgrid td[title]", "els => els.map(e => [e.title, getComputedStyle(e).backgroundColor])")
            pos = [c for t, c in colours if float(t.split("attribution ")[1]) > 0]
            assert pos and all("46, 134, 222" in c for c in pos)
            page.screenshot(path=str(tmp_path / "debug.png"), full_page=True)
            browser.close()
        assert (tmp_path / "unit.png").stat().st_size > 10_000 and (tmp_path / "debug.png").stat().st_size > 10_000
    finally:
        server.should_exit = True


def test_browser_the_model_by_layer_links_every_dataset(tiny_dir, tmp_path):
    """The home page links each model's layer × kind overview: one row per layer, one column per kind (MLP neurons,
    heads, each SAE, each transcoder set), every cell a link to its dataset, an empty cell where a layer lacks it."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on PATH (`make test` installs Debian's chromium)")
    import uvicorn
    from conftest import TEXT, free_port
    from playwright.sync_api import sync_playwright

    from saescope.models import load_model
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import save_transcoders
    from saescope.viewer.server import create_app

    hm = load_model(str(tiny_dir))
    d = hm.d_model
    cls = transcoder_class(TopKSAE, skip=True)
    plts = {l: cls(SAEConfig(cls.architecture, d, 16, k=4, d_out=d, apply_b_dec_to_input=False)) for l in range(3)}
    save_transcoders(TranscoderSet(plts=plts), tmp_path / "tcs")
    TopKSAE(SAEConfig("topk", d, 24, k=4, metadata={"hook_name": "resid_post.1"})).save(tmp_path / "res")
    (tmp_path / "corpus.txt").write_text(TEXT * 4)
    manifest = collate(CollateConfig(model=ModelConfig(model=str(tiny_dir), device="cpu"), out=str(tmp_path / "col"),
                                     data=CorpusConfig(str(tmp_path / "corpus.txt")), layers="0,2",
                                     sae=str(tmp_path / "res"), transcoders=str(tmp_path / "tcs"),
                                     collate=CollateOptions(excerpt_len=8, max_tokens=8 * 30, token_pairs=False,
                                                            sizes=SlotSizes(top_k=20, n_random=15, pool=24))), hm)
    paths = {d["path"] for d in manifest["datasets"]}
    # a transcoder set's eval.json (as `saescope run` writes it): each layer's dataset shows its own layer's row
    (tmp_path / "tcs" / "eval.json").write_text(json.dumps({"delta_ce": 1.5, "fvu": 0.4, "per_layer": {
        str(l): {"fvu": 0.1 * (l + 1), "l0": 4.0, "dead_fraction": 0.0} for l in range(3)}}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "col"), host="127.0.0.1", port=port,
                                           log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"{base}/")
            page.click(f"#models a[href='/u/{hm.name}']")
            page.wait_for_selector("#layers td a")
            heads = page.eval_on_selector_all("#layers tr:first-child th", "els => els.map(e => e.innerText)")
            assert heads == ["layer", "MLP neurons", "attention heads", "SAE res", "transcoder tcs"]
            assert page.eval_on_selector_all("#layers tr[data-layer]", "els => els.map(e => e.dataset.layer)") == \
                ["0", "1", "2"]
            hrefs = page.eval_on_selector_all("#layers td a", "els => els.map(e => e.getAttribute('href'))")
            assert sorted(hrefs) == sorted(f"/u/{hm.name}/{p}" for p in paths)  # every dataset, once
            fvus = page.eval_on_selector_all("#layers tr[data-layer] td:last-child .fvu", "els => els.map(e => e.innerText)")
            assert fvus == ["FVU 0.10", "FVU 0.20", "FVU 0.30"]  # layer L's transcoder, not the replacement model
            row1 = page.eval_on_selector_all("#layers tr[data-layer='1'] td", "els => els.map(e => e.innerText)")
            assert row1[0] == row1[1] == "–" and row1[2].startswith("24 units")  # layer 1: only the SAE
            page.click(f"#layers tr[data-layer='2'] a[href='/u/{hm.name}/transcoder_latents/tcs/2']")
            page.wait_for_selector("#units td a")  # the cell opens the dataset's unit table
            assert page.locator("#units td a").count() > 0 and "transcoder_latents/tcs/2" in page.inner_text("h2")
            browser.close()
    finally:
        server.should_exit = True
