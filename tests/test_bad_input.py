"""Bad input, as a careless user gives it: each case is one line on stderr, a non-zero exit (2 for usage errors), no
traceback, and every earlier output byte-identical afterwards. CLI cases run in-process through `saescope.cli.main`
(a subprocess only where the process itself is what is tested)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
from test_export import run_dir  # noqa: F401 - a run folder as `saescope run` leaves it

from saescope.cli import main

# --- helpers -----------------------------------------------------------------------------------------------------

BAR = re.compile(r"[?\d.]+\s*[A-Za-z]*/s\]\s*$")
"""A tqdm progress line (transformers' weight loading, a stage's bar): not part of what a case prints."""


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots, by path: what a bad input must leave as it was."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): p.read_bytes() for p in files})
    return out


def fails(capsys, argv: list[str], match: str, code: int = 2, keep: tuple[Path, ...] = ()) -> str:
    """`saescope *argv` exits with `code` after one stderr line containing `match`; the files under `keep` are
    unchanged. Returns the line."""
    before = snapshot(*keep)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and not BAR.search(line)]
    assert rc == code, (rc, out[-500:], err[-2000:])
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert match in lines[0], lines[0]
    assert snapshot(*keep) == before
    return lines[0]


@pytest.fixture(scope="module")
def collated(tmp_path_factory) -> Path:
    """A collated model folder (tiny GPT-2, MLP layer 1) with baseline explanations and scores of 12 units."""
    from conftest import TEXT, make_model

    from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
    from saescope.collate.run_collate import collate
    from saescope.corpus import CorpusConfig
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.pipeline import run_interp

    d = tmp_path_factory.mktemp("collated")
    (d / "corpus.txt").write_text(TEXT * 4)
    hm = make_model("gpt2")
    collate(CollateConfig(out=str(d / "col"), data=CorpusConfig(str(d / "corpus.txt")), layers="1",
                          collate=CollateOptions(units="mlp", excerpt_len=8, max_tokens=8 * 60,
                                                 sizes=SlotSizes(top_k=20, n_random=15, pool=24))), hm)
    root = d / "col" / hm.name
    run_interp(InterpConfig(root=str(root), interp=InterpOptions(max_units=12)))
    return root


@pytest.fixture
def model_root(collated, tmp_path) -> Path:
    """A private copy of `collated` that a case may change."""
    shutil.copytree(collated, tmp_path / "m")
    return tmp_path / "m"


def _units(root: Path, name: str) -> dict:
    return json.loads((root / "explanations" / "mlp_neurons" / "1" / name).read_text())["units"]


# --- results are never destroyed or relabelled ---------------------------------------------------------------------


def test_overwrite_replaces_only_the_units_it_recomputes(model_root, capsys):
    before_e, before_s = _units(model_root, "explanations.json"), _units(model_root, "scores.json")
    live = sorted(before_e, key=int)
    assert len(live) == 12
    before = snapshot(model_root)
    assert main(["explain", str(model_root), "--max_units", "12"]) == 0  # nothing to redo, and it says so
    assert "explained 0 units, kept 12 explained earlier (baseline;" in capsys.readouterr().out
    assert snapshot(model_root) == before
    assert main(["explain", str(model_root), "--indices", live[5], "--overwrite", "true"]) == 0
    after_e = _units(model_root, "explanations.json")
    assert sorted(after_e, key=int) == live  # the other 11 are still there, untouched
    assert {k: v for k, v in after_e.items() if k != live[5]} == {k: v for k, v in before_e.items() if k != live[5]}
    assert after_e[live[5]]["time"] >= before_e[live[5]]["time"]
    assert main(["score", str(model_root), "--indices", f"{live[2]},{live[3]}", "--overwrite", "true"]) == 0
    after_s = _units(model_root, "scores.json")
    assert sorted(after_s, key=int) == live
    assert {k: v for k, v in after_s.items() if k not in (live[2], live[3])} == \
        {k: v for k, v in before_s.items() if k not in (live[2], live[3])}


def test_provenance_is_per_unit_and_old_files_still_read(model_root, capsys):
    expl = _units(model_root, "explanations.json")
    assert all(v["explainer"] == "baseline" and v["model"] == "tiny-gpt2" and v["time"] for v in expl.values())
    scores = _units(model_root, "scores.json")
    assert all(v["simulator"] == "baseline" and v["explainer"] == "baseline" for v in scores.values())
    # a file written before provenance was per unit: the header's explainer is carried onto its units
    path = model_root / "explanations" / "mlp_neurons" / "1" / "explanations.json"
    old = {"explainer": "openai:old-model", "units": {k: {"explanation": v["explanation"]} for k, v in expl.items()}}
    path.write_text(json.dumps(old))
    first = sorted(expl, key=int)[0]
    assert main(["explain", str(model_root), "--indices", first, "--overwrite", "true"]) == 0
    data = json.loads(path.read_text())
    assert data["units"][first]["explainer"] == "baseline"
    assert all(v["explainer"] == "openai:old-model" for k, v in data["units"].items() if k != first)
    assert data["explainer"] == "mixed: baseline, openai:old-model"  # the header no longer claims one backend


def test_llm_explainer_without_key_fails_up_front_and_relabels_nothing(model_root, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fails(capsys, ["explain", model_root, "--explainer", "openai:gpt-4o-mini"], "OPENAI_API_KEY is not set",
          keep=(model_root,))
    fails(capsys, ["score", model_root, "--simulator", "openai:gpt-4o-mini", "--overwrite", "true"],
          "OPENAI_API_KEY is not set", keep=(model_root,))


def _silent_server() -> tuple[socket.socket, str]:
    """A loopback server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(8)], daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}/v1"


def test_unreachable_or_silent_llm_server_fails_within_seconds(model_root, capsys):
    import time

    from conftest import free_port

    t0 = time.perf_counter()
    fails(capsys, ["explain", model_root, "--explainer", "openai:m", "--base_url",
                   f"http://127.0.0.1:{free_port()}/v1"], "cannot reach the server", keep=(model_root,))
    srv, url = _silent_server()
    try:
        fails(capsys, ["explain", model_root, "--explainer", "openai:m", "--base_url", url, "--timeout", "1"],
              "no answer within 1 s", keep=(model_root,))
    finally:
        srv.close()
    assert time.perf_counter() - t0 < 10


def test_server_that_goes_away_mid_run_stops_the_run_and_keeps_every_unit(model_root, capsys):
    """Two explanations are answered, then the server is gone: the run stops after 3 unanswered requests (not one
    timeout per remaining unit), both new explanations are saved, the 10 earlier ones are kept as they were."""
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answered = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # the up-front probe
            self.send_response(404)
            self.end_headers()

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            answered.append(1)
            body = json.dumps({"choices": [{"message": {"content": "the word cat"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
            if len(answered) == 2:
                threading.Thread(target=lambda: (srv.shutdown(), srv.server_close())).start()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    before = _units(model_root, "explanations.json")
    t0 = time.perf_counter()
    fails(capsys, ["explain", model_root, "--explainer", "openai:m", "--base_url",
                   f"http://127.0.0.1:{srv.server_address[1]}/v1", "--overwrite", "true", "--max_units", "12",
                   "--concurrency", "1", "--retries", "0", "--timeout", "2"], "requests in a row got no answer")
    assert time.perf_counter() - t0 < 15
    after = _units(model_root, "explanations.json")
    assert sorted(after) == sorted(before)
    new = [k for k, v in after.items() if v["explainer"] == "openai:m"]
    assert len(new) == 2 and all(after[k]["explanation"] == "the word cat" for k in new)
    assert all(after[k] == before[k] or "last_failure" in after[k] for k in after if k not in new)


def test_score_without_explanations_is_an_error_not_nan(model_root, capsys):
    shutil.rmtree(model_root / "explanations")
    fails(capsys, ["score", model_root], "run `saescope explain` first", keep=(model_root,))
    assert not (model_root / "explanations").exists()


@pytest.mark.parametrize("args, match", [
    (["--indices", "abc"], "--indices 'abc'"),
    (["--indices", "-3"], "--indices '-3'"),
    (["--explainer", "foo:bar"], "--explainer 'foo:bar'"),
    (["--simulator", "gpt"], "--simulator 'gpt'"),
    (["--timeout", "-1"], "--timeout -1"),
    (["--concurrency", "0"], "--concurrency 0"),
    (["--max_units", "-2"], "--max_units -2"),
    (["--prompt_style", "fancy"], "--prompt_style"),
])
def test_interp_options_are_checked_where_parsed(collated, capsys, args, match):
    fails(capsys, ["explain", collated, *args], match, keep=(collated,))


# --- every reader verifies what it reads ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tiny_dir, tmp_path_factory) -> Path:
    """A complete store of the tiny Llama: contexts of 9 tokens (collatable as excerpts of 8), resid_post.1."""
    from conftest import TEXT

    d = tmp_path_factory.mktemp("store")
    (d / "corpus.txt").write_text(TEXT * 2)
    assert main(["capture", "--model", str(tiny_dir), "--corpus", str(d / "corpus.txt"), "--out", str(d / "s"),
                 "--context_len", "9", "--hookpoints", "resid_post.1", "--device", "cpu"]) == 0
    return d / "s"


def test_collate_verifies_store_checksums(store, tiny_dir, tmp_path, capsys):
    capsys.readouterr()
    bad = tmp_path / "s"
    shutil.copytree(store, bad)
    shard = sorted((bad / "resid_post.1").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # 64 flipped bytes inside the tensor data
    shard.write_bytes(bytes(data))
    fails(capsys, ["collate", "--model", tiny_dir, "--store", bad, "--units", "mlp", "--layers", "1",
                   "--excerpt_len", "8", "--out", tmp_path / "col", "--device", "cpu"], "checksum mismatch",
          keep=(bad,))
    assert not (tmp_path / "col" / "tiny-llama").exists() or not any((tmp_path / "col").rglob("*.json"))


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"  \n\t \n", "only whitespace")])
def test_empty_or_whitespace_corpus_is_one_line_and_no_complete_store(tiny_dir, tmp_path, capsys, content, match):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    fails(capsys, ["capture", "--model", tiny_dir, "--corpus", corpus, "--out", tmp_path / "s", "--device", "cpu"],
          match)
    m = tmp_path / "s" / "manifest.json"
    assert not m.exists() or not json.loads(m.read_text())["complete"]


def test_binary_corpus_warns_and_still_captures(tiny_dir, tmp_path, capsys, caplog):
    import os

    corpus = tmp_path / "c.txt"
    corpus.write_bytes(os.urandom(3000))
    assert main(["capture", "--model", str(tiny_dir), "--corpus", str(corpus), "--out", str(tmp_path / "s"),
                 "--context_len", "9", "--device", "cpu"]) == 0
    assert any("not UTF-8 text (a binary file?)" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_zero_row_store_is_never_complete_or_ok(store, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    m = json.loads((store / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps({**m, "shards": [], "complete": True}))
    fails(capsys, ["store-info", empty], "holds 0 rows", keep=(empty,))
    from saescope.store import StoreWriter
    from saescope.store.store import StoreMeta

    w = StoreWriter(empty, StoreMeta(model="m", hookpoints={"resid_post.0": 4}, source={"kind": "t"}))
    assert not w.complete  # an old 0-row "complete" store is started over, not reused
    from saescope.errors import SaescopeError

    with pytest.raises(SaescopeError, match="no rows were stored"):
        w.finish()


def test_view_and_summarize_check_what_they_read(collated, tmp_path, capsys, monkeypatch):
    fails(capsys, ["view", collated.parent, "--unit_type", "foo"], "--unit_type 'foo'", keep=(collated,))
    fails(capsys, ["summarize", collated.parent, "--unit_type", "foo"], "--unit_type 'foo'", keep=(collated,))
    fails(capsys, ["view", collated.parent, "--port", "99999"], "--port 99999", keep=(collated,))
    broken = tmp_path / "col"
    shutil.copytree(collated, broken / "tiny-gpt2")
    (broken / "tiny-gpt2" / "manifest.json").write_text('{"format": "saescope-collated", "datasets": [')
    fails(capsys, ["view", broken], "is not valid JSON", keep=(broken,))
    (broken / "tiny-gpt2" / "manifest.json").write_text('{"format": "saescope-collated", "model": "x", "datasets": 3}')
    fails(capsys, ["view", broken], "not a saescope-collated manifest", keep=(broken,))
    shutil.copy(collated / "manifest.json", broken / "tiny-gpt2" / "manifest.json")
    shutil.rmtree(broken / "tiny-gpt2" / "mlp_neurons")
    fails(capsys, ["view", broken], "lists dataset mlp_neurons/1 but", keep=(broken,))
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAESCOPE_CACHE", str(cache))
    monkeypatch.setenv("SAESCOPE_PUBLIC_MIRROR", str(tmp_path / "no-such-mirror"))
    fails(capsys, ["summarize", "gpt2-small:mlp_neurons", "--dataset", "mlp_neurons/0"], "SAESCOPE_PUBLIC_MIRROR")
    assert not list(cache.rglob("summary.json"))  # no all-missing summary in the cache
    broken_tdb = tmp_path / "tdb"
    (broken_tdb / "0").mkdir(parents=True)
    (broken_tdb / "0" / "0.json").write_text("not json")
    fails(capsys, ["summarize", broken_tdb], "0.json: not valid JSON")
    assert not list(cache.rglob("summary.json"))


# --- every option is checked where it is parsed, before any model loads or work starts -----------------------------
# {tmp} is an empty folder, {file} a file in it; {nomodel}/{nostore} do not exist, so a check that came after loading
# the model or opening the store would report those instead of the option.

M = ["--model", "{nomodel}"]
S = ["--store", "{nostore}"]
DBG = ["debug", *M, "--prompt", "The cat", "--target", " sat"]
OPTION_CASES = [
    (["train", *S, "--tokens", "-5"], "--tokens -5"),
    (["train", *S, "--lr", "-1"], "--lr -1"),
    (["train", *S, "--batch_size", "0"], "--batch_size must be positive"),
    (["train", *S, "--holdout_shards", "-1"], "--holdout_shards -1"),
    (["train", *S, "--warmup_frac", "1.5"], "--warmup_frac 1.5"),
    (["train", *S, "--matryoshka_widths", "a,b"], "--matryoshka_widths 'a,b': expected comma-separated integers"),
    (["train", *S, "--arch", "foo"], "invalid choice: 'foo'"),
    (["train", *S, "--tokens", "abc"], "invalid int value: 'abc'"),
    (["train", *S, "--no_such_option", "1"], "unrecognized arguments"),
    (["train", *S, "--out", "{file}"], "--out {file}: is a file"),
    (["train", *M, "--corpus", "{file}", "--out", "{file}"], "--out {file}: is a file"),  # online
    (["eval", *S, "--contexts", "-5"], "--contexts -5"),
    (["eval", *S, "--holdout_shards", "-2"], "--holdout_shards -2"),
    (["capture", *M, "--batch_size", "0"], "--batch_size and --shard_contexts must be positive"),
    (["capture", *M, "--corpus", "{tmp}/empty.txt"], "the file is empty"),
    (["capture", *M, "--corpus", "{tmp}/paper.pdf"], "unsupported file type '.pdf'"),
    (["capture", *M, "--device", "gpu"], "--device 'gpu'"),
    (["capture", *M, "--shuffle_docs", "-1"], "--shuffle_docs -1"),
    (["collate", *M, "--out", "{file}"], "--out {file}: is a file"),
    (["collate", *M, "--store", "{nostore}"], "--store {nostore}: does not exist"),
    (["collate", *M, "--store", "{file}"], "--store {file}: is a file"),
    (["collate", *M, "--layers", "a"], "--layers 'a'"),
    (["collate", *M, "--units", "foo"], "--units foo"),
    (["collate", *M, "--batch_size", "0"], "--batch_size 0"),
    ([*DBG, "--ablate", "mlp.9.1234@5"], "--ablate 'mlp.9.1234@5'"),
    ([*DBG, "--ablate", "garbage"], "--ablate 'garbage'"),
    ([*DBG, "--ablate", "mlp.1.3@2=zero,garbage=zero"], "--ablate 'garbage'"),
    ([*DBG, "--ablate", "mlp.1.3@2=huge"], "--ablate 'mlp.1.3@2=huge'"),
    ([*DBG, "--ablate", "mlp.1.3=zero"], "--ablate 'mlp.1.3'"),
    ([*DBG, "--trace", "head.1.2@3:x"], "--trace 'head.1.2@3:x'"),
    ([*DBG, "--trace", "neuron 5"], "--trace 'neuron 5'"),
    ([*DBG, "--top", "-1"], "--top -1"),
    ([*DBG, "--collated", "{tmp}/nocol"], "--collated {tmp}/nocol: does not exist"),
    ([*DBG, "--distractor", " sat"], "is the target itself"),
    (["run", *M, "--explainer", "foo:bar"], "--explainer 'foo:bar'"),
    (["run", *M, "--out", "{file}"], "--out {file}: is a file"),
    (["run", *M, "--port", "99999"], "--port 99999"),
    (["run", *M, "--lr", "-1"], "--lr -1"),
    (["run", *M, "--layer", "-3"], "--layer -3"),
    (["run", *M, "--explainer", "openai:gpt-4o-mini"], "OPENAI_API_KEY is not set"),
    (["export", "neuronpedia", "{tmp}/norun"], "RUN_DIR (--run) {tmp}/norun: does not exist"),
    (["export", "neuronpedia", "{tmp}", "--batch_size", "0"], "--batch_size 0"),
    (["export", "neuronpedia", "{tmp}", "--neighbours", "-1"], "--neighbours -1"),
    (["export", "neuronpedia", "{tmp}", "{file}"], "OUT (--out) {file}: is a file"),
    (["export", "saelens", "{tmp}/norun"], "{tmp}/norun: does not exist"),
    (["search", "hello", "--root", "{tmp}/nocol"], "--root {tmp}/nocol: does not exist"),
    (["search", "hello", "--root", "{tmp}", "--per_token", "0"], "--per_token 0"),
    (["view", "{tmp}/nocol"], "no such folder, URL or registry name"),
    (["view", "{tmp}"], "not a TDB-layout dataset"),
    (["store-info", "{nostore}"], "store manifest"),
    (["import-seed", "{tmp}/noseed"], "--seed {tmp}/noseed: does not exist"),
    (["import-seed", "{tmp}", "--out", "{file}"], "--out {file}: is a file"),
    (["export-seed", "--store", "{nostore}", "--out", "{file}"], "--out {file}: is a file"),
]


@pytest.mark.parametrize("argv, match", OPTION_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OPTION_CASES])
def test_bad_option_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    tmp = tmp_path / "t"
    tmp.mkdir()
    (tmp / "f.txt").write_text("some earlier output")
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "paper.pdf").write_bytes(b"%PDF-1.4")
    subs = {"{tmp}": str(tmp), "{file}": str(tmp / "f.txt"), "{nomodel}": str(tmp_path / "no-model"),
            "{nostore}": str(tmp_path / "no-store")}

    def fill(s: str) -> str:
        for k, v in subs.items():
            s = s.replace(k, v)
        return s
    fails(capsys, [fill(a) for a in argv], fill(match), keep=(tmp,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # nothing created beside it either


def test_holdout_of_every_shard_is_refused_not_reported_as_held_out(store, tmp_path, capsys):
    n = len(json.loads((store / "manifest.json").read_text())["shards"])
    fails(capsys, ["train", "--store", store, "--holdout_shards", n, "--out", tmp_path / "o", "--width", "64",
                   "--k", "4", "--device", "cpu"], f"has only {n} shard(s)", keep=(store,))
    assert not (tmp_path / "o").exists()


# --- bad files: one line, and the file (and everything else) left as it was ---------------------------------------


def test_corrupted_interp_files_are_reported_and_kept(model_root, capsys):
    ds = model_root / "explanations" / "mlp_neurons" / "1"
    (ds / "explanations.json").write_text('{"explainer": "baseline", "units": {"3": ')  # a killed editor, say
    fails(capsys, ["explain", model_root, "--overwrite", "true"], "is not valid JSON", keep=(model_root,))
    (ds / "explanations.json").write_text('{"explainer": "baseline", "units": [1, 2]}')
    fails(capsys, ["score", model_root], "has no 'units' object", keep=(model_root,))
    (ds / "explanations.json").unlink()
    records = model_root / "mlp_neurons" / "1" / "records.safetensors"
    good = records.read_bytes()
    records.write_text("{not a record")
    fails(capsys, ["explain", model_root, "--indices", "0"], "records.safetensors: not a readable records file",
          keep=(model_root,))
    records.write_bytes(good[: len(good) // 2])  # truncated inside the activations
    fails(capsys, ["explain", model_root, "--indices", "0"], "records.safetensors", keep=(model_root,))
    records.write_bytes(good)


def test_corrupted_store_and_sae_files_are_one_line(store, tmp_path, capsys):
    s = tmp_path / "s"
    shutil.copytree(store, s)
    shard = sorted((s / "resid_post.1").glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    fails(capsys, ["store-info", s], "checksum mismatch", keep=(s,))
    fails(capsys, ["train", "--store", s, "--out", tmp_path / "o", "--width", "64", "--k", "4", "--device", "cpu",
                   "--holdout_shards", "0"], "checksum mismatch", keep=(s,))
    (s / "manifest.json").write_text("{")
    fails(capsys, ["train", "--store", s, "--out", tmp_path / "o"], "is not valid JSON", keep=(s,))
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text("[]")
    fails(capsys, ["eval", "--sae", sae, "--store", store], str(sae), keep=(sae, store))


def test_export_that_fails_midway_leaves_the_previous_export(run_dir, capsys):
    out = run_dir / "np"
    assert main(["export", "neuronpedia", str(run_dir), str(out), "--logits", "false", "--batch_size", "2"]) == 0
    capsys.readouterr()
    assert len(list(out.rglob("batch-*.jsonl.gz"))) > 3
    rec = next(run_dir.glob("collated/*/sae_latents/resid_post/1/7.json"))
    good = rec.read_bytes()
    rec.write_text('{"neuron_id": ')  # a record broken after the first export: the second fails at latent 7
    fails(capsys, ["export", "neuronpedia", run_dir, out, "--logits", "false", "--batch_size", "2"], "7",
          keep=(out,))
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary folder left behind
    rec.write_bytes(good)
    assert main(["export", "neuronpedia", str(run_dir), "--logits", "false"]) == 0  # OUT defaults to RUN/neuronpedia
    assert "neuronpedia" in capsys.readouterr().out and not Path("neuronpedia").exists()


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from saescope.io import atomic_dir

    target = tmp_path / "ds"
    with atomic_dir(target) as d:
        (d / "0.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "0.json").write_text("new")
            raise RuntimeError("killed while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and (target / "0.json").read_text() == "old"
    with atomic_dir(target) as d:
        (d / "1.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["1.json"] and [p.name for p in tmp_path.iterdir()] == ["ds"]
