"""Why SynthSAEBench SAEs miss: every latent with F1 < 0.5 put down to one mechanism (dead, duplicate, absorbed,
merged with siblings, merged other) and the true features found per firing-frequency band, one table row per SAE.
Runs in the bench venv (sae_lens); the logic and its definitions live in benchlib/synthdiag.py.

    .venv-synthsaebench/bin/python bench/synthsaebench_diag.py ~/.cache/saescope/synthsaebench/*/results/<run>/*
"""

from __future__ import annotations

import argparse
from pathlib import Path


def load(path: Path):
    """The kept SAE as SAELens sees it; one with a LISTA encoder from the saescope copy kept beside it (SAELens has
    no LISTA step, so its copy alone is only the linear part)."""
    from sae_lens import SAE

    if (path / "saescope").is_dir():
        import tempfile

        from benchlib.synthworld import to_saelens

        from saescope.sae.loading import load_sae

        return to_saelens(load_sae(path / "saescope"), Path(tempfile.mkdtemp()) / "sae")
    return SAE.load_from_disk(str(path), device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("saes", nargs="+", help="SAE folders in the SAELens layout (synthsaebench.py keeps them)")
    ap.add_argument("--eval-samples", type=int, default=65_536)
    ap.add_argument("--shard-size", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=0, help="the bench's --seed (picks its held-out stream)")
    ap.add_argument("--world", choices=("v2", "v1"), default="v2", help="the bench's --world")
    a = ap.parse_args()
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        raise SystemExit("synthsaebench_diag needs sae-lens (bench-only): run it with .venv-synthsaebench/bin/python, "
                         "made by bash bench/synthsaebench_setup.sh --install-only") from None

    from benchlib.synthdiag import diagnose
    from benchlib.synthworld import bench_streams, cache_root, load_or_build_world, world_config

    cfg = world_config(version=a.world)
    world, world_dir = load_or_build_world(cfg, cache_root())
    _, stream = bench_streams(world, world_dir, "cpu", a.seed, a.shard_size, 0, a.eval_samples)
    head = "| SAE | fine (F1 >= 0.5) | dead | duplicate | absorbed | merged with siblings | merged, other | " \
           "features found p >= 1e-2 | 1e-3..1e-2 | < 1e-3 |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for path in a.saes:
        d = diagnose(load(Path(path)), world, stream, a.eval_samples)
        b = list(d["found_by_band"].values())
        print(f"| {Path(path).name} | {d['fine']} | {d['dead']} | {d['duplicate']} | {d['absorbed']} | "
              f"{d['merged_siblings']} | {d['merged_other']} | {b[0]} | {b[1]} | {b[2]} |", flush=True)


if __name__ == "__main__":
    main()
