"""The vectorised offline baseline (`interp.vectorized`, `interp.offline`) against the per-unit path it replaces:
every explanation string and every score equal, on hand-made edge cases and on tiny collations (compact and JSON
records, MLP neurons and heads by token pair); the baseline's simulation results rebuilt on demand."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from saescope.interp.backends import make_backend
from saescope.interp.baseline import parse_table, token_lookup_explanation
from saescope.interp.offline import batch_from_dicts
from saescope.interp.pipeline import score_unit
from saescope.interp.prompts import splits
from saescope.interp.vectorized import _seqsum, _square, explain, score

WEIRD = [" the", " cat", '"', "\\", '" (1.0), "x', "\n", "é", "\u2028", " (3.0)", "a", "A", " ", ""]


def _record(rng: random.Random, index: int, n_top: int, n_random: int, T: int, kind: str) -> dict:
    def acts() -> list[float]:
        if kind == "dead":
            return [0.0] * T
        if kind == "constant":
            return [1.5] * T
        if kind == "ties":  # small integers: many equal means and equal normalised values
            return [float(rng.choice([0, 0, 1, 2, 4])) for _ in range(T)]
        return [0.0 if rng.random() < 0.5 else round(rng.uniform(-0.5, 3.0), 6) for _ in range(T)]

    def rec() -> dict:
        return {"tokens": [rng.choice(WEIRD) for _ in range(T)], "activations": acts()}

    return {"neuron_id": {"neuron_index": index, "layer_index": 0},
            "most_positive_activation_records": [rec() for _ in range(n_top)],
            "random_sample": [rec() for _ in range(n_random)]}


def _cases() -> list[dict]:
    rng = random.Random(0)
    kinds = ["plain", "ties", "dead", "constant"]
    return [_record(rng, i, rng.choice([0, 1, 3, 7, 20, 24]), rng.choice([0, 2, 15, 16]), rng.choice([1, 2, 5, 9]),
                    kinds[i % 4]) for i in range(160)]


def test_explanations_equal_the_per_unit_explainer_on_edge_cases():
    recs = _cases()
    b = batch_from_dicts(list(range(len(recs))), recs)
    want = [token_lookup_explanation(splits(r["most_positive_activation_records"], r["random_sample"])["train"])
            for r in recs]
    parsed: dict = {}
    assert explain(b, parsed=parsed) == want
    assert parsed and all(parse_table(text) == tab for text, tab in parsed.items())  # read back without parsing
    assert any("no activating tokens" in w for w in want) and any(w.count(", ") == 7 for w in want)


def test_scores_equal_score_unit_on_edge_cases_with_own_and_null_explanations():
    recs = _cases()
    b = batch_from_dicts(list(range(len(recs))), recs)
    texts = explain(b)
    nulls = texts[1:] + [None]  # the next unit's; the last unit has none
    backend = make_backend("baseline")
    got = score(b, texts, nulls)
    for k, (r, text, null) in enumerate(zip(recs, texts, nulls)):
        want = score_unit(backend, r, text)[1]
        if null is not None:
            want["null"] = score_unit(backend, r, null)[1]["top_and_random"]
        assert got[k] == want, k
    seen = {(g["random_only"] is None, g["detection"] is None, g["constant_prediction"]) for g in got}
    assert len(seen) >= 4  # undefined and defined scores both covered
    assert score(b, texts, None)[0].keys() == {"top_and_random", "random_only", "detection", "fuzzing",
                                               "constant_prediction", "method"}


def test_sums_and_squares_are_pythons():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 300)) * 10.0 ** rng.integers(-8, 8, (7, 300))
    assert _seqsum(x, compensated=False).tolist() == [_naive(row) for row in x.tolist()]
    assert _seqsum(x, compensated=True).tolist() == [_neumaier(row) for row in x.tolist()]
    assert _seqsum(np.array([[1.0, 1e100, 1.0, -1e100]]), compensated=True).tolist() == [2.0]
    assert _seqsum(x).tolist() == [sum(row) for row in x.tolist()]  # this interpreter's sum, whichever it is
    assert _square(x).tolist() == [[v ** 2 for v in row] for row in x.tolist()]


def _naive(xs: list[float]) -> float:
    s = 0.0
    for v in xs:
        s += v
    return s


def _neumaier(xs: list[float]) -> float:
    """CPython 3.12's float `sum`, written out."""
    s = c = 0.0
    for v in xs:
        t = s + v
        c += (s - t) + v if abs(s) >= abs(v) else (v - t) + s
        s = t
    return s + c if c and np.isfinite(c) else s


def _collate(tmp_path, tiny_gpt2, text_corpus, records: str):
    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig

    return collate(CollateConfig(out=str(tmp_path / "a"), data=CorpusConfig(str(text_corpus)), layers="0,1",
                                 collate=CollateOptions(units="mlp,heads", excerpt_len=8, max_tokens=8 * 40,
                                                        records=records,
                                                        sizes=SlotSizes(top_k=20, n_random=15, pool=24))), tiny_gpt2)


def _units(path) -> dict:
    return {k: {f: x for f, x in v.items() if f != "time"} for k, v in json.loads(path.read_text())["units"].items()}


@pytest.mark.parametrize("records", ["compact", "json"])
def test_vectorised_run_equals_the_per_unit_run(tiny_gpt2, text_corpus, tmp_path, monkeypatch, records):
    """Every live unit of MLP and head datasets: the same explanations.json and scores.json (and summary), through
    the compact tensors or the JSON records; a second run with --overwrite on some units agrees too."""
    from saescope.interp import offline, pipeline
    from saescope.interp.config import InterpConfig, InterpOptions

    m = _collate(tmp_path, tiny_gpt2, text_corpus, records)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    monkeypatch.setattr(offline, "CHUNK", 5)  # nulls and carried units cross chunk boundaries
    if records == "compact":  # straight from the tensors, heads' token pairs included: no record is built
        monkeypatch.setattr(offline, "batch_from_dicts", None)
    for d in m["datasets"]:
        out = {}
        for name, vec in (("a", False), ("b", True)):
            monkeypatch.setattr(pipeline, "VECTORISED", vec)
            root = tmp_path / name / tiny_gpt2.name
            out[name] = pipeline.run_interp(InterpConfig(root=str(root), dataset=d["path"]))
            pipeline.run_interp(InterpConfig(root=str(root), dataset=d["path"], indices="0,2,3", overwrite=True,
                                             interp=InterpOptions(null_baseline=False)))
        ea, eb = (tmp_path / n / tiny_gpt2.name / "explanations" / d["path"] for n in "ab")
        assert {k: v for k, v in out["a"].items() if k != "out"} == {k: v for k, v in out["b"].items() if k != "out"}
        assert _units(ea / "explanations.json") == _units(eb / "explanations.json")
        assert _units(ea / "scores.json") == _units(eb / "scores.json")
        assert out["a"]["units"] == d["live_units"] and not list(ea.glob("*.jsonl")) and not list(eb.glob("*.jsonl"))


def test_baseline_simulation_results_built_on_demand_equal_the_files_once_written(tiny_gpt2, text_corpus, tmp_path,
                                                                                  monkeypatch):
    """The per-unit path, made to write `<i>.jsonl` for the baseline as it did before, and a vectorised rescoring
    that removes those files: `simulation_results` rebuilds each file's text exactly (MLP and heads)."""
    from saescope.interp import pipeline
    from saescope.interp.baseline import BaselineBackend
    from saescope.interp.config import InterpConfig
    from saescope.interp.outputs import simulation_results

    m = _collate(tmp_path, tiny_gpt2, text_corpus, "compact")
    root = tmp_path / "a" / tiny_gpt2.name
    for d in m["datasets"][:2]:
        out = root / "explanations" / d["path"]
        monkeypatch.setattr(pipeline, "VECTORISED", False)
        monkeypatch.setattr(BaselineBackend, "is_llm", True)  # taken for a language model: it writes the files
        pipeline.run_interp(InterpConfig(root=str(root), dataset=d["path"]))
        files = {int(p.stem): p.read_text() for p in out.glob("*.jsonl")}
        assert len(files) == d["live_units"]
        monkeypatch.setattr(BaselineBackend, "is_llm", False)
        monkeypatch.setattr(pipeline, "VECTORISED", True)
        pipeline.run_interp(InterpConfig(root=str(root), dataset=d["path"], overwrite=True))
        assert not list(out.glob("*.jsonl"))  # replaced by the baseline's scores: nothing stale left
        assert {i: simulation_results(root, d["path"], i) + "\n" for i in files} == files
    assert simulation_results(root, "mlp_neurons/0", 10**6) is None


def test_tdb_export_and_viewer_serve_the_rebuilt_simulations(tiny_gpt2, text_corpus, tmp_path):
    """`export tdb` writes TDB's explanations layout (one `<index>.jsonl` per scored unit) and the viewer's
    /api/simulation serves the same text, though the run kept no such file."""
    from fastapi.testclient import TestClient

    from saescope.export.tdb import export_tdb
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.outputs import Simulations
    from saescope.interp.pipeline import run_interp
    from saescope.viewer.server import create_app

    m = _collate(tmp_path, tiny_gpt2, text_corpus, "compact")
    root = tmp_path / "a" / tiny_gpt2.name
    ds = m["datasets"][0]["path"]
    run_interp(InterpConfig(root=str(root), dataset=ds, interp=InterpOptions(max_units=6)))
    export_tdb(tmp_path / "a", tmp_path / "tdb")
    got = tmp_path / "tdb" / tiny_gpt2.name / "explanations" / ds
    scored = json.loads((root / "explanations" / ds / "scores.json").read_text())["units"]
    assert sorted(int(p.stem) for p in got.glob("*.jsonl")) == sorted(int(i) for i in scored) and len(scored) == 6
    sims = Simulations(root, ds)
    client = TestClient(create_app(tmp_path / "a"))
    for p in got.glob("*.jsonl"):
        line = p.read_text()
        assert line == sims.text(int(p.stem)) + "\n" and line.count("\n") == 1
        res = json.loads(line)
        assert res["dataclass_name"] == "NeuronSimulationResults"
        assert res["scored_explanations"][0]["explanation"] == scored[p.stem]["explanation"]
        assert client.get(f"/api/simulation/{tiny_gpt2.name}/{ds}/{p.stem}").json() == res
    assert client.get(f"/api/simulation/{tiny_gpt2.name}/{ds}/{m['datasets'][0]['units'] - 1}").status_code == 404
    assert (got / "scores.json").read_text() == (root / "explanations" / ds / "scores.json").read_text()
