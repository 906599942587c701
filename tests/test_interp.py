"""Autointerp: prompt formats, score formulas, baselines, the OpenAI-compatible client on loopback, the pipeline."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saescope.interp import scoring
from saescope.interp.backends import BackendError, OpenAIBackend, make_backend
from saescope.interp.baseline import parse_table, simulate_lookup, token_lookup_explanation
from saescope.interp.prompts import (
    explain_messages,
    format_records,
    normalize,
    parse_explanation,
    simulation_prompt,
    splits,
)
from saescope.interp.simulate import simulate


def test_normalize_and_format_known_strings():
    assert normalize([0.0, 0.5, 1.0, -2.0, 0.99], 1.0) == [0, 5, 10, 0, 9]
    assert normalize([1.0, 2.0], 0.0) == [0, 0]
    recs = [{"tokens": ["a", " b", " c"], "activations": [0.0, 2.0, 4.0]}]
    assert format_records(recs, 4.0) == "\n<start>\na\t0\n b\t5\n c\t10\n<end>\n"
    sparse = [{"tokens": list("abcdefghij"), "activations": [0.0] * 9 + [1.0]}]
    assert format_records(sparse, 1.0).endswith(
        "Same activations, but with all zeros filtered out:\n<start>\nj\t10\n<end>\n")
    msgs = explain_messages(recs)
    assert msgs[0]["role"] == "system" and "token<tab>activation" in msgs[0]["content"]
    assert msgs[-1]["content"] == ("Neuron 3\nActivations:\n<start>\na\t0\n b\t5\n c\t10\n<end>\n"
                                   "\nExplanation of neuron 3 behavior: this neuron activates for")
    assert parse_explanation(" words about cats.\nmore") == "words about cats"
    prompt, offs = simulation_prompt("cats", [" x", " y"])
    assert [prompt[o:o + 7] for o in offs] == ["unknown", "unknown"]
    assert prompt.endswith(" x\tunknown\n y\tunknown\n<end>\n")


def test_splits_follow_the_stride_convention():
    s = splits(list(range(20)), list(range(100, 115)))
    assert s["train"] == [0, 4, 8, 12, 16]
    assert s["valid"] == [2, 6, 10, 14, 18, 101, 104, 107, 110, 113]
    assert s["valid_random"] == [101, 104, 107, 110, 113]


def test_score_formulas_known_answers():
    assert scoring.correlation([1, 2, 3], [2, 4, 6]).score == pytest.approx(1.0)
    assert scoring.correlation([1, 2, 3], [3, 2, 1]).score == pytest.approx(-1.0)
    c = scoring.correlation([1, 2, 3], [5, 5, 5])
    assert c.score == 0.0 and c.constant
    assert scoring.rsquared([1, 1], [1, 1]) == 1.0 and scoring.rsquared([0, 0], [1, 1]) is None
    assert scoring.absolute_dev_explained([2, 2], [1, 1]) == pytest.approx(0.5)
    assert scoring.balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.75)
    assert scoring.balanced_accuracy([1, 1], [1, 1]) is None


def test_token_lookup_round_trip_and_beats_null():
    recs = [{"tokens": [" the", " cat", ' "x"', " sat"], "activations": [0.0, 5.0, 2.5, 0.0]}] * 3
    expl = token_lookup_explanation(recs)
    assert expl == 'token-lookup: " cat" (10.0), " \\"x\\"" (5.0)'
    assert parse_table(expl) == {" cat": 10.0, ' "x"': 5.0}
    assert simulate_lookup(expl, [" a", " cat", ' "x"']) == [0.0, 10.0, 5.0]
    assert simulate(make_backend("baseline"), expl, [" cat"]) == ([10.0], "baseline")
    truth = [0.0, 5.0, 2.5, 0.0]
    good = scoring.correlation(truth, simulate_lookup(expl, recs[0]["tokens"])).score
    null = scoring.correlation(truth, simulate_lookup('token-lookup: " the" (3.0)', recs[0]["tokens"])).score
    assert good > 0.9 > null


class _Handler(BaseHTTPRequestHandler):
    script: list = []
    seen: list = []

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, body, self.headers.get("Authorization")))
        action = _Handler.script.pop(0) if _Handler.script else ("ok", "fine")
        kind, payload = action
        if kind == "sleep":
            time.sleep(payload)
            kind, payload = "ok", "late"
        if kind == "status":
            self.send_response(payload)
            self.end_headers()
            self.wfile.write(b'{"error": "x"}')
            return
        if kind == "garbage":
            data = b"not json"
        elif self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
            data = json.dumps(payload).encode()
        else:
            data = json.dumps({"choices": [{"message": {"content": payload}}],
                               "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Handler.script, _Handler.seen = [], []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_openai_client_protocol_retries_and_errors(server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    b = OpenAIBackend("m", server, api_key_env="TEST_KEY", timeout=0.5, retries=2, backoff=0.01)
    assert b.chat([{"role": "user", "content": "hi"}]) == "fine"
    path, body, auth = _Handler.seen[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m" and auth == "Bearer sk-test"
    _Handler.script = [("status", 500), ("status", 429), ("ok", "after retries")]
    assert b.chat([{"role": "user", "content": "hi"}]) == "after retries"
    _Handler.script = [("status", 400)]
    with pytest.raises(BackendError, match="HTTP 400"):
        b.chat([{"role": "user", "content": "hi"}])
    _Handler.script = [("status", 503)] * 3
    with pytest.raises(BackendError, match="after 3 attempts"):
        b.chat([{"role": "user", "content": "hi"}])
    _Handler.script = [("sleep", 1.0)] * 3
    with pytest.raises(BackendError, match="ReadTimeout"):
        b.chat([{"role": "user", "content": "hi"}])
    _Handler.script = [("garbage", None)]
    with pytest.raises(BackendError, match="non-JSON"):
        b.chat([{"role": "user", "content": "hi"}])
    assert b.usage["requests"] == 2 and b.usage["prompt_tokens"] == 14


def test_openai_logprob_simulation_and_line_fallback(server):
    b = OpenAIBackend("m", server, retries=0)
    prompt, offs = simulation_prompt("cats", [" a", " cat"])
    top = [{}, {"0": -0.1, "1": -3.0}, {"8": -0.05, "9": -3.0, " x": -1.0}]
    _Handler.script = [("ok", {"choices": [{"logprobs": {"text_offset": [0, offs[0], offs[1]], "top_logprobs": top}}]})]
    pred, method = simulate(b, "cats", [" a", " cat"])
    assert method == "logprobs" and pred[0] < 0.2 and 7.9 < pred[1] < 8.1
    # a server without prompt logprobs: the line format, and a misaligned answer is a failure, not zeros
    _Handler.script = [("status", 404), ("ok", " a\t0\n cat\t9")]
    assert simulate(b, "cats", [" a", " cat"]) == ([0.0, 9.0], "lines")
    _Handler.script = [("status", 404), ("ok", "I think it is about cats")]
    with pytest.raises(BackendError, match="answered 0 lines for 2 tokens"):
        simulate(b, "cats", [" a", " cat"])


def test_hf_backend_digit_distributions():
    from conftest import make_model

    from saescope.interp.backends import HFBackend

    b = HFBackend("tiny", hm=make_model("llama"))  # rotary positions: the long few-shot prompt fits
    prompt, offs = simulation_prompt("cats", [" the", " cat"])
    dists = b.digit_distributions(prompt, offs)
    assert len(dists) == 2 and all(abs(sum(d.values()) - 1) < 1e-5 for d in dists)
    assert set(dists[0]) <= set(range(11)) and len(dists[0]) >= 2


def test_pipeline_end_to_end_resumable_with_failure_accounting(tiny_gpt2, text_corpus, tmp_path, monkeypatch):
    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig
    from saescope.interp import pipeline
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.pipeline import run_interp

    collate(CollateConfig(out=str(tmp_path / "col"), data=CorpusConfig(str(text_corpus)), layers="1",
                          collate=CollateOptions(units="mlp", excerpt_len=8, max_tokens=8 * 60,
                                                 sizes=SlotSizes(top_k=20, n_random=15, pool=24))),
            tiny_gpt2)
    root = tmp_path / "col" / tiny_gpt2.name
    monkeypatch.setattr(pipeline, "VECTORISED", False)  # the per-unit path (language models take it)
    s = run_interp(InterpConfig(root=str(root), interp=InterpOptions(max_units=12)))
    assert s["units"] == 12 and s["failures"] == 0 and s["mean_score"] > s["mean_null_score"]
    from saescope.interp.outputs import simulation_results

    assert not list((root / "explanations" / "mlp_neurons" / "1").glob("*.jsonl"))  # baseline: built on demand
    res = json.loads(simulation_results(root, "mlp_neurons/1", 0))
    assert res["dataclass_name"] == "NeuronSimulationResults"
    sim = res["scored_explanations"][0]["scored_simulation"]
    assert sim["dataclass_name"] == "ScoredSimulation" and len(sim["scored_sequence_simulations"]) == 10
    assert sim["scored_sequence_simulations"][0]["simulation"]["dataclass_name"] == "SequenceSimulation"
    # resumable: a second run with more units only scores the new ones
    calls = []
    real = pipeline.score_unit
    monkeypatch.setattr(pipeline, "score_unit", lambda *a: calls.append(1) or real(*a))
    s2 = run_interp(InterpConfig(root=str(root), interp=InterpOptions(max_units=14, null_baseline=False)))
    assert s2["units"] == 14 and len(calls) == 2
    # a simulator that fails is recorded as a failure, never as a score

    def broken(*a, **k):
        raise pipeline.BackendError("simulator answered 0 lines for 8 tokens")
    monkeypatch.setattr(pipeline, "simulate", broken)
    s3 = run_interp(InterpConfig(root=str(root), interp=InterpOptions(max_units=16)))
    scores = json.loads((root / "explanations" / "mlp_neurons" / "1" / "scores.json").read_text())["units"]
    failed = [v for v in scores.values() if v["failure"]]
    assert len(failed) == 2 and all(v["score"] is None for v in failed) and s3["failures"] == 2


def test_llm_detection_and_fuzzing_parse_and_score(server):
    from saescope.interp.classify import classify_scores, examples, parse_labels

    recs = [{"tokens": [" a", " cat"], "activations": [0.0, 4.0]}, {"tokens": [" a", " dog"], "activations": [0.0, 0.0]}]
    plain, marked, labels = examples(recs, 4.0, seed=0)
    assert labels == [1, 0] and marked[0] == " a<< cat>>" and plain[1] == " a dog"
    assert parse_labels("Sure: [1, 0]", 2) == [1, 0]
    with pytest.raises(BackendError, match="2 labels for 3"):
        parse_labels("[1, 0]", 3)
    b = OpenAIBackend("m", server, retries=0)
    _Handler.script = [("ok", "[1, 0]"), ("ok", "[1, 1]")]
    s = classify_scores(b, "cats", recs, 4.0)
    assert s == {"llm_detection": 1.0, "llm_fuzzing": 0.5}
    _Handler.script = [("ok", "I don't know")]
    with pytest.raises(BackendError, match="no \\[..\\] list"):
        classify_scores(b, "cats", recs, 4.0)


def _units(path) -> dict:
    """A scores/explanations file's units without the time each was written (the only field runs may differ in)."""
    return {k: {f: x for f, x in v.items() if f != "time"} for k, v in json.loads(path.read_text())["units"].items()}


def test_interp_of_several_datasets_in_processes_equals_one_process(tiny_gpt2, text_corpus, tmp_path):
    import shutil

    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.pipeline import run_interp_many

    m = collate(CollateConfig(out=str(tmp_path / "a"), data=CorpusConfig(str(text_corpus)), layers="0,1",
                              collate=CollateOptions(units="mlp,heads", excerpt_len=8, max_tokens=8 * 40,
                                                     sizes=SlotSizes(top_k=20, n_random=15, pool=24))), tiny_gpt2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    results = {}
    for name, workers in (("a", 1), ("b", 2)):
        root = tmp_path / name / tiny_gpt2.name
        cfgs = [InterpConfig(root=str(root), dataset=d["path"], interp=InterpOptions(max_units=6))
                for d in m["datasets"]]
        results[name] = run_interp_many(cfgs, workers=workers)
        assert [s["dataset"] for s in results[name]] == [d["path"] for d in m["datasets"]]  # in order
    for a, b in zip(results["a"], results["b"]):
        assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}
        pa = tmp_path / "a" / tiny_gpt2.name / "explanations" / a["dataset"] / "scores.json"
        pb = tmp_path / "b" / tiny_gpt2.name / "explanations" / b["dataset"] / "scores.json"
        assert _units(pa) == _units(pb)


def test_record_dict_fast_path_equals_the_full_reader(tmp_path):
    """Canonical files are read with plain json (and a numpy collapse of token pairs); the result equals the
    dataclass reader's, and older files still go through it."""
    import json

    from saescope.records import (
        ActivationRecord,
        NeuronId,
        NeuronRecord,
        read_record,
        read_record_dict,
        record_dict,
        write_record,
    )

    toks = ["a", "b", "c", "d"]
    pair = [float(v) for v in range(10)]  # T = 4: 10 pairs, row maxima 0, 2, 5, 9
    rec = NeuronRecord(NeuronId(3, 2), [ActivationRecord([0.0] * 10, toks)], [[ActivationRecord(pair, toks)]] * 5,
                       [1.0, 2.0, 3.0, 4.0], 0.5, float("nan"), 0.0, 1.0, [ActivationRecord(pair[::-1], toks)])
    path = write_record(tmp_path, rec)
    fast, full = read_record_dict(path), record_dict(read_record(path))
    assert fast["most_positive_activation_records"][0]["activations"] == [9.0, 8.0, 6.0, 3.0]
    assert fast["random_sample_by_quantile"][0][0]["activations"] == [0.0, 2.0, 5.0, 9.0]
    norm = lambda d: json.dumps({k: v for k, v in d.items() if k != "dataclass_name"}, sort_keys=True, default=str)  # noqa: E731
    assert norm(fast) == norm({**full, "variance": None})  # the file holds null where the reader has NaN
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"neuron_id": {"idx": 1, "layer": "2"}, "random_sample": [],
                                  "most_positive_activation_records": [{"tokens": ["x"], "activations": [1.0]}]}))
    assert read_record_dict(legacy)["neuron_id"]["layer_index"] == 2


@pytest.mark.parametrize("chunk", [50, 4])
def test_one_pass_explain_and_score_equals_explaining_everything_first(tiny_gpt2, text_corpus, tmp_path, chunk,
                                                                      monkeypatch):
    """A fresh run reads each record once (unit p scored once unit p+1's explanation, its null, is known):
    the same explanations, scores, nulls and JSONL files as `explain` of every unit, then `score` of every unit."""
    import shutil

    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.pipeline import run_interp

    m = collate(CollateConfig(out=str(tmp_path / "a"), data=CorpusConfig(str(text_corpus)), layers="1",
                              collate=CollateOptions(units="mlp", excerpt_len=8, max_tokens=8 * 40,
                                                     sizes=SlotSizes(top_k=20, n_random=15, pool=24))), tiny_gpt2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ds = m["datasets"][0]["path"]
    cfg = lambda name: InterpConfig(root=str(tmp_path / name / tiny_gpt2.name), dataset=ds,  # noqa: E731
                                    interp=InterpOptions(max_units=9))
    from saescope.interp import pipeline

    monkeypatch.setattr(pipeline, "CHUNK_UNITS", chunk)  # 4: the nulls cross chunk boundaries
    monkeypatch.setattr(pipeline, "VECTORISED", False)  # the per-unit path's chunking (language models take it)
    one = run_interp(cfg("a"))  # fresh: one pass
    run_interp(cfg("b"), do_score=False)  # two phases
    two = run_interp(cfg("b"), do_explain=False)
    assert {k: v for k, v in one.items() if k != "out"} == {k: v for k, v in two.items() if k != "out"}
    ea, eb = (tmp_path / n / tiny_gpt2.name / "explanations" / ds for n in "ab")
    assert _units(ea / "scores.json") == _units(eb / "scores.json")
    assert all(s["scores"]["null"] is not None for s in json.loads((ea / "scores.json").read_text())["units"].values())
    from saescope.interp.outputs import simulation_results

    for i in json.loads((ea / "scores.json").read_text())["units"]:
        a, b = (simulation_results(tmp_path / n / tiny_gpt2.name, ds, int(i)) for n in "ab")
        assert a is not None and a == b


def test_random_only_correlation_is_undefined_when_the_unit_never_fires_on_random_excerpts():
    """Correlation with an all-zero truth is undefined: the score is None (the viewer shows "—"), not 0.000."""
    from saescope.interp.pipeline import score_unit

    backend = make_backend("baseline")
    top = [{"tokens": [" cat", " sat", " on"], "activations": [float(i + 1), 0.0, 0.5]} for i in range(20)]
    silent = [{"tokens": [" the", " mat", " dog"], "activations": [0.0, 0.0, 0.0]} for _ in range(15)]
    rec = {"neuron_id": {"neuron_index": 0, "layer_index": 0}, "most_positive_activation_records": top,
           "random_sample": silent}
    explanation = backend.explain(top[:5], "default")
    _, scores = score_unit(backend, rec, explanation)
    assert scores["random_only"] is None and scores["top_and_random"] is not None
    firing = [{**r, "activations": [0.0, float(i % 3), 0.0]} for i, r in enumerate(silent)]
    _, scores = score_unit(backend, {**rec, "random_sample": firing}, explanation)
    assert isinstance(scores["random_only"], float)
