"""Bad input, as a careless user gives it: each case is one line on stderr, a non-zero exit (2 for usage errors), no
traceback, and every earlier output byte-identical afterwards. CLI cases run in-process through `saescope.cli.main`
(a subprocess only where the process itself is what is tested)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from saescope.cli import main

# --- helpers -----------------------------------------------------------------------------------------------------


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
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (rc, out[-500:], err[-2000:])
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert match in lines[0], lines[0]
    assert snapshot(*keep) == before
    return lines[0]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars write to stderr; the cases count its lines


@pytest.fixture(scope="module")
def collated(tmp_path_factory) -> Path:
    """A collated model folder (tiny GPT-2, MLP layer 1) with baseline explanations and scores of 12 units."""
    from conftest import TEXT, make_model

    from saescope.collate.collator import SlotSizes
    from saescope.collate.run_collate import CollateConfig, CollateOptions, collate
    from saescope.corpus import CorpusConfig
    from saescope.interp.pipeline import InterpConfig, InterpOptions, run_interp

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
