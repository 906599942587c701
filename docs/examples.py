"""Produce the CLI outputs the documentation shows, by running the commands (never typed by hand).

    python docs/examples.py                 # gemma-3-270m (the default model), small sizes: ~10 min on 2 CPU cores
    python docs/examples.py --model tiny    # the tests' tiny random Llama instead: seconds, outputs are gibberish

Every command runs through the installed CLI (`python -m saescope.cli ...`) into one run folder (default
runs/docs-examples/, git-ignored); its stdout goes to docs/examples/<name>.txt with a first line naming this script,
the model, the date and the commit, and the command itself. The pages include those files (pymdownx.snippets), so
a snippet on a page is exactly what the command printed in that run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "examples"


def tiny_model(run: Path) -> str:
    """The tests' tiny random Llama (tests/conftest.py), saved as a HF folder with a corpus of its training text."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TEXT, make_model

    d = run / "tiny-llama"
    if not (d / "config.json").exists():
        hm = make_model("llama")
        hm.model.save_pretrained(d)
        hm.tokenizer.save_pretrained(d)
    (run / "corpus.txt").write_text(TEXT * 40)
    return str(d)


def source_version() -> str:
    """The commit of src/, marked when src/ has uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "src"]).returncode != 0
    return head + ("+uncommitted src" if dirty else "")


def commands(run: str, model: str, corpus: str, layer: int, tokens: int) -> list[tuple[str, str]]:
    """(snippet name, command line) in the order they must run: each reads what the one before wrote."""
    m = ["--model", model] if model != "default" else []
    c = ["--corpus", corpus] if corpus != "wiki" else []
    hp = f"resid_post.{layer}"
    coll = f"{run}/collated"
    q = shlex.join
    return [
        ("capture", q(["saescope", "capture", *m, *c, "--hookpoints", f"{hp},mlp_post_act.{layer}", "--context_len",
                       "65", "--max_tokens", str(tokens), "--out", f"{run}/store"])),
        ("store_info", q(["saescope", "store", "info", f"{run}/store"])),
        ("train", q(["saescope", "train", "--store", f"{run}/store", "--hookpoint", hp, "--width", "1024", "--k", "16",
                     "--batch_size", "256", "--out", f"{run}/sae"])),
        ("eval", q(["saescope", "eval", "--sae", f"{run}/sae", "--store", f"{run}/store", "--contexts", "32"])),
        ("collate", q(["saescope", "collate", *m, *c, "--store", f"{run}/store", "--layers", str(layer), "--units",
                       "mlp", "--sae", f"{run}/sae", "--out", coll])),
        ("explain", q(["saescope", "explain", f"{coll}/{Path(model).name if model != 'default' else 'gemma-3-270m'}",
                       "--dataset", f"sae_latents/sae/{layer}", "--indices", "0,1,2,3"])),
        ("score", q(["saescope", "score", f"{coll}/{Path(model).name if model != 'default' else 'gemma-3-270m'}",
                     "--dataset", f"sae_latents/sae/{layer}", "--indices", "0,1,2,3"])),
        ("search", q(["saescope", "search", "--root", coll, "--text", "The capital of France is Paris."])),
        ("debug", q(["saescope", "debug", *m, "--prompt", "The capital of France is", "--target", " Paris",
                     "--distractor", " London", "--sae", f"{run}/sae", "--top", "8"])),
        ("datasets", q(["saescope", "datasets"])),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="default (gemma-3-270m) or tiny (the tests' random Llama)")
    ap.add_argument("--run", default="runs/docs-examples", help="run folder (relative to the repository root)")
    ap.add_argument("--tokens", type=int, default=16_384, help="tokens captured and collated")
    ap.add_argument("--only", default="", help="comma-separated snippet names to (re)make (default: all)")
    a = ap.parse_args()
    os.chdir(ROOT)
    run = Path(a.run)
    run.mkdir(parents=True, exist_ok=True)
    model, corpus, layer = ("default", "wiki", 9) if a.model == "default" else (tiny_model(run), f"{run}/corpus.txt", 1)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    shown_model = "gemma-3-270m" if model == "default" else "the tests' tiny random Llama (gibberish by design)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    only = set(a.only.split(",")) - {""}
    OUT.mkdir(exist_ok=True)
    for name, line in commands(str(run), model, corpus, layer, a.tokens):
        if only and name not in only:
            continue
        commit = source_version()  # per command: the code this command ran
        if name == "collate":  # a fresh folder, so that explain and score start from nothing
            shutil.rmtree(run / "collated", ignore_errors=True)
        argv = [sys.executable, "-m", "saescope.cli", *shlex.split(line)[1:]]
        print(f"[{name}] {line}", flush=True)
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            sys.exit(f"{name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        header = (f"# from `python docs/examples.py` ({shown_model}; {date}, saescope {commit}, "
                  f"{platform.machine()} {os.cpu_count()} cores)\n")
        (OUT / f"{name}.txt").write_text(header + f"$ {line}\n" + p.stdout.rstrip() + "\n")


if __name__ == "__main__":
    main()
