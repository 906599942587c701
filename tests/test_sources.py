"""Datasets saescope did not write: the seed's registry through a loopback mirror, TDB-layout folders, the cache."""

from __future__ import annotations

import io
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.records import ActivationRecord, NeuronId, NeuronRecord, dumps


def record(layer: int, index: int, pair: bool = False, scale: float = 1.0) -> NeuronRecord:
    toks = [" the", " cat", " sat", " on"]
    T = len(toks)
    n = T * (T + 1) // 2 if pair else T
    top = [ActivationRecord([scale * (k + 1) * ((j + index) % 3) for j in range(n)], toks) for k in range(3)][::-1]
    rnd = [ActivationRecord([0.0] * n, toks)]
    return NeuronRecord(NeuronId(index, layer), rnd, None, None, 0.1, 0.2, 0.0, 0.0, top)


def old_format(layer: int, index: int) -> str:
    """How some published files look: no dataclass_name, legacy NeuronId names, a string layer, missing fields."""
    return json.dumps({"neuron_id": {"idx": index, "layer": str(layer)},
                       "random_sample": [{"tokens": ["a", "b"], "activations": [0.0, 0.5]}],
                       "most_positive_activation_records": [{"tokens": ["x", "y"], "activations": [2.0, 0.0]}]})


class Evil:
    pass


class Mirror:
    """A loopback HTTP server (127.0.0.1 only) serving a folder in the public blob's layout; counts requests."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    blob = tmp_path / "blob"
    for layer in (0, 1):
        for i in range(4):
            write(blob / f"gpt2_small_data/collated-activations/{layer}/{i}.json", dumps(record(layer, i)))
    write(blob / "gpt2_small_data/collated-activations/0/2.json", old_format(0, 2))
    write(blob / "gpt2_small_data/collated-activations/1/3.json", '{"neuron_id": {"neuron_index": 3,')  # truncated
    pairs = "autoencoder_latent/resid_delta_attn_v4/collated-activations-by-token-pair/0"
    write(blob / f"gpt2_small/{pairs}/0.json", dumps(record(0, 0, pair=True)))  # TDB's path (the seed's .pt absent)
    buf = io.BytesIO()
    torch.save(json.loads(dumps(record(0, 1, pair=True))), buf)  # the seed's .pt path, as plain data
    write(blob / f"gpt2-small/{pairs}/1.pt", buf.getvalue())
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)  # a pickled object of a class: never loaded
    write(blob / f"gpt2-small/{pairs}/2.pt", buf.getvalue())
    m = Mirror(blob)
    monkeypatch.setenv("SAESCOPE_PUBLIC_MIRROR", m.url)
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "cache"))
    yield m
    m.stop()


def test_registry_dataset_through_the_viewer_then_offline(mirror):
    from fastapi.testclient import TestClient

    from saescope.sources import open_root
    from saescope.viewer.server import create_app

    root = open_root("gpt2-small:mlp_neurons")
    client = TestClient(create_app(root))
    ds = client.get("/api/datasets").json()
    assert [d["path"] for d in ds] == [f"mlp_neurons/{layer}" for layer in range(12)]
    units = client.get("/api/units/gpt2-small/mlp_neurons/0?limit=5").json()
    assert units["total"] == 3084 and units["units"][0] == {"index": 0, "explanation": None, "score": None, "constant": False}
    assert mirror.requests == []  # nothing fetched before a unit page asks
    r = client.get("/api/record/gpt2-small/mlp_neurons/0/1").json()
    assert r["record"]["neuron_id"] == {"dataclass_name": "NeuronId", "neuron_index": 1, "layer_index": 0}
    assert r["max_activation"] == pytest.approx(6.0) and r["n_units"] == 3084  # from the record just fetched
    assert mirror.requests == ["/gpt2_small_data/collated-activations/0/1.json"]
    # the unit table fills in as records arrive
    row = client.get("/api/units/gpt2-small/mlp_neurons/0?limit=5").json()["units"][1]
    assert row["max_activation"] == pytest.approx(3 * 2.0) and row["top_token"] == " cat"
    old = client.get("/api/record/gpt2-small/mlp_neurons/0/2")  # older TDB format: string layer, legacy names
    assert old.status_code == 200 and old.json()["record"]["neuron_id"]["layer_index"] == 0
    bad = client.get("/api/record/gpt2-small/mlp_neurons/1/3")
    assert bad.status_code == 422 and "collated-activations/1/3.json" in bad.json()["detail"]
    assert client.get("/api/record/gpt2-small/mlp_neurons/0/7").status_code == 404  # in range, not published
    mirror.stop()
    n = len(mirror.requests)
    again = TestClient(create_app(open_root("gpt2-small:mlp_neurons")))
    assert again.get("/api/record/gpt2-small/mlp_neurons/0/1").json()["record"] == r["record"]  # from the cache
    assert len(mirror.requests) == n
    offline = again.get("/api/record/gpt2-small/mlp_neurons/0/3")  # never fetched: one clear line
    assert offline.status_code == 422 and "cannot fetch" in offline.json()["detail"]


def test_every_registry_name_opens_against_a_mirror(tmp_path, monkeypatch):
    """Each of the seed's datasets, by name: its URLs (the seed's first, TDB's path second) in a loopback mirror, the
    viewer lists its layers with the seed's unit counts and serves a record of its last layer."""
    from fastapi.testclient import TestClient

    from saescope.sources import BLOB, PUBLIC, open_root
    from saescope.viewer.server import create_app

    blob = tmp_path / "blob"
    for i, d in enumerate(PUBLIC.values()):
        template = d.templates[i % len(d.templates)]  # some at the seed's URL, some at TDB's
        rel = template[len(BLOB) + 1:].format(layer=d.layers - 1, index=7)
        rec = dumps(record(d.layers - 1, 7, pair=d.by_token_pair))
        if rel.endswith(".pt"):
            buf = io.BytesIO()
            torch.save(json.loads(rec), buf)
            write(blob / rel, buf.getvalue())
        else:
            write(blob / rel, rec)
    m = Mirror(blob)
    monkeypatch.setenv("SAESCOPE_PUBLIC_MIRROR", m.url)
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "cache"))
    try:
        for d in PUBLIC.values():
            client = TestClient(create_app(open_root(d.name)))
            rows = [x for x in client.get("/api/datasets").json() if x["source"] == d.name]
            assert len(rows) == d.layers and {x["units"] for x in rows} == {d.units}, d.name
            path = rows[-1]["path"]
            r = client.get(f"/api/record/{d.model}/{path}/7")
            assert r.status_code == 200, (d.name, r.text)
            assert r.json()["by_token_pair"] == d.by_token_pair and r.json()["record"]["neuron_id"]["neuron_index"] == 7
    finally:
        m.stop()


def test_corrupted_cache_is_fetched_again(mirror):
    from saescope.sources import loads_checked, open_root, record_text

    root = open_root("gpt2-small:mlp_neurons")
    model_dir = root / "gpt2-small"
    entry = json.loads((model_dir / "manifest.json").read_text())["datasets"][0]
    first = record_text(model_dir, entry, 1)
    cached = model_dir / "mlp_neurons/0/1.json"
    assert cached.read_text() == first
    cached.write_text(first[: len(first) // 2])  # a torn write from some other tool
    assert loads_checked(record_text(model_dir, entry, 1), "x").neuron_id.neuron_index == 1
    assert cached.read_text() == first and len(mirror.requests) == 2


def test_token_pair_latents_seed_pt_then_tdb_json(mirror):
    from saescope.sources import loads_checked, open_root, record_text

    root = open_root("gpt2-small:ae-resid-delta-attn-v4-by-token-pair")
    model_dir = root / "gpt2-small"
    entry = next(d for d in json.loads((model_dir / "manifest.json").read_text())["datasets"] if d["layer"] == 0)
    assert entry["path"] == "sae_latents/ae-resid-delta-attn-v4-by-token-pair/0" and entry["by_token_pair"]
    rec0 = loads_checked(record_text(model_dir, entry, 0), "0")  # .pt missing → TDB's .json path
    assert mirror.requests[-2:] == [
        "/gpt2-small/autoencoder_latent/resid_delta_attn_v4/collated-activations-by-token-pair/0/0.pt",
        "/gpt2_small/autoencoder_latent/resid_delta_attn_v4/collated-activations-by-token-pair/0/0.json"]
    assert len(rec0.most_positive_activation_records[0].activations) == 10
    rec1 = loads_checked(record_text(model_dir, entry, 1), "1")  # a .pt of plain data
    assert rec1.neuron_id.neuron_index == 1 and rec1.max_activation == pytest.approx(6.0)
    with pytest.raises(SaescopeError, match=r"2\.pt: a \.pt file that is not plain data"):
        record_text(model_dir, entry, 2)


def test_explain_and_score_a_registry_dataset(mirror):
    from saescope.interp.config import InterpConfig
    from saescope.interp.pipeline import run_interp

    s = run_interp(InterpConfig(root="gpt2-small:mlp_neurons", dataset="mlp_neurons/0", indices="0,1,3"))
    assert s["units"] == 3 and s["failures"] == 0
    from saescope.interp.outputs import simulation_results

    out = Path(s["out"])
    assert not list(out.glob("*.jsonl"))  # the baseline writes no simulation files: they are rebuilt when asked
    ds = "mlp_neurons/0"
    manifest_dir = out.parents[len(Path(ds).parts)]  # <model dir>/explanations/<ds>
    for i in (0, 1, 3):
        line = json.loads(simulation_results(manifest_dir, ds, i))
        assert line["neuron_id"]["neuron_index"] == i and line["scored_explanations"][0]["explanation"]
    assert simulation_results(manifest_dir, ds, 2) is None  # not scored


def test_local_tdb_folder_view_and_summarize(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from saescope.cli import main
    from saescope.viewer.server import create_app

    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "heads"
    for layer in (3, 5):
        for i in range(2):
            write(folder / f"{layer}/{i}.json", dumps(record(layer, i, pair=True, scale=layer * (i + 1))))
    from saescope.sources import open_root

    root = open_root(str(folder))
    model = next(root.glob("*/manifest.json")).parent.name
    client = TestClient(create_app(root))
    ds = client.get("/api/datasets").json()
    assert [(d["path"], d["units"], d["by_token_pair"]) for d in ds] == [
        ("attention_heads/3", 2, True), ("attention_heads/5", 2, True)]
    rows = client.get(f"/api/units/{model}/attention_heads/5?sort=max_activation&desc=true").json()["units"]
    assert [r["index"] for r in rows] == [1, 0] and rows[0]["max_activation"] == pytest.approx(5 * 2 * 3 * 2)
    assert main(["summarize", str(folder), "--dataset", "attention_heads/3"]) == 0
    summary = json.loads((root / model / "attention_heads/3/summary.json").read_text())
    assert [u["index"] for u in summary["units"]] == [0, 1] and not (folder / "3/summary.json").exists()
    write(folder / "5/1.json", "{not json")
    assert "not valid JSON" in client.get(f"/api/record/{model}/attention_heads/5/1").json()["detail"]


def test_bad_specs_say_what_to_do(tmp_path, monkeypatch):
    from saescope.sources import open_root

    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SaescopeError, match="gpt2-small:nope: not a registry name; `saescope datasets`"):
        open_root("gpt2-small:nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaescopeError, match="not a TDB-layout dataset"):
        open_root(str(tmp_path / "empty"))
    with pytest.raises(SaescopeError, match="no such folder, URL or registry name"):
        open_root(str(tmp_path / "missing"))
