"""Throughput of the offline baseline (explain + score every live unit): unit by unit vs vectorised.

    python bench/interp_offline_bench.py pack SRC DST          # a JSON-layout collated model folder → compact copy
    python bench/interp_offline_bench.py synth DST --units 81920 --datasets 20   # random compact datasets
    python bench/interp_offline_bench.py time ROOT [--per-unit] [--workers 2] [--max-units N]

`time` runs `run_interp_many` over every dataset of ROOT (explanations/ removed first) and prints units/s;
`--per-unit` turns the vectorised path off (the reference path, as language models take it). `pack` stores every
listed excerpt as its own row (no sharing between lists), activations in CSR, with token ids standing in for the
unknown ones: enough for the interp stage, which reads strings and activations only.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def pack(src: Path, dst: Path) -> None:
    from saescope.compact_records import EXCERPTS_FILE, ExcerptTable, write_pack
    from saescope.io import read_json, write_json
    from saescope.records import read_record

    manifest = read_json(src / "manifest.json")
    dst.mkdir(parents=True, exist_ok=True)
    table, ids = ExcerptTable.empty(), {}
    for d in manifest["datasets"]:
        folder = dst / d["path"]
        folder.mkdir(parents=True, exist_ok=True)
        rows, row_off, counts, refs, stats, bounds = [], [0], {"top": [], "random": [], "quantile": []}, \
            {"top": [], "random": [], "quantile": []}, [], []
        excerpts, acts = [], []
        for i in range(d["units"]):
            r = read_record(src / d["path"] / f"{i}.json")
            lists = {"top": [r.most_positive_activation_records], "random": [r.random_sample],
                     "quantile": r.random_sample_by_quantile or [[]] * 5}
            for name, groups in lists.items():
                for g in groups:
                    counts[name].append(len(g))
                    for a in g:
                        refs[name].append(len(acts))
                        v = np.asarray(a.activations, np.float32)
                        nz = np.flatnonzero(v)
                        acts.append((len(v), nz.astype(np.int32), v[nz]))
                        excerpts.append(([ids.setdefault(t, len(ids)) for t in a.tokens], a.tokens))
            row_off.append(len(acts))
            stats.append([r.mean, r.variance, r.skewness, r.kurtosis])
            bounds.append(r.quantile_boundaries or [float("nan")] * 4)
            rows.append(i)
        row_excerpt = np.asarray(table.extend(excerpts), np.int32)
        L = acts[0][0]
        t = {"row_offsets": np.asarray(row_off, np.int64), "row_excerpt": row_excerpt,
             "acts_ptr": np.concatenate([[0], np.cumsum([len(a[1]) for a in acts])]).astype(np.int64),
             "acts_pos": np.concatenate([a[1] for a in acts]), "acts_val": np.concatenate([a[2] for a in acts]),
             "top_count": np.asarray(counts["top"], np.int32), "random_count": np.asarray(counts["random"], np.int32),
             "quantile_count": np.asarray(counts["quantile"], np.int32).reshape(-1, 5),
             "stats": np.asarray(stats, np.float64), "quantile_boundaries": np.asarray(bounds, np.float64)}
        t.update({f"{k}_ref": np.asarray(v, np.int32) for k, v in refs.items()})
        write_pack(folder, t, d["layer"], L, dst / EXCERPTS_FILE)
        shutil.copyfile(src / d["path"] / "summary.json", folder / "summary.json")
        print(f"packed {d['path']}: {d['units']} units, {len(acts)} rows", flush=True)
    table.save(dst / EXCERPTS_FILE)
    write_json(dst / "manifest.json", manifest)


def synth(dst: Path, n_units: int, n_datasets: int, T: int = 64, top: int = 24, n_random: int = 16,
          vocab: int = 20000, seed: int = 0) -> None:
    """Random datasets shaped like the default run's (64-token excerpts, 24 top + 16 random rows a unit; a third of
    them dense like MLP neurons, the rest sparse like dictionary latents)."""
    from saescope.compact_records import EXCERPTS_FILE, ExcerptTable, write_pack
    from saescope.io import write_json

    rng = np.random.default_rng(seed)
    n_exc = 4096
    toks = rng.integers(0, vocab, (n_exc, T))
    table = ExcerptTable.empty()
    table.extend([(row.tolist(), [f" w{t}" for t in row.tolist()]) for row in toks])
    table.save(dst / EXCERPTS_FILE)
    per = n_units // n_datasets
    datasets = []
    for k in range(n_datasets):
        path = f"sae_latents/synth/{k}"
        folder = dst / path
        folder.mkdir(parents=True, exist_ok=True)
        R = per * (top + n_random)
        acts = rng.exponential(1.0, (R, T)).astype(np.float32)
        if k % 3:
            acts[rng.random((R, T)) < 0.9] = 0.0
        u_rows = np.arange(per)[:, None] * (top + n_random)
        t = {"row_offsets": np.arange(per + 1, dtype=np.int64) * (top + n_random),
             "row_excerpt": rng.integers(0, n_exc, R).astype(np.int32), "acts": acts,
             "top_count": np.full(per, top, np.int32), "top_ref": (u_rows + np.arange(top)).ravel().astype(np.int32),
             "random_count": np.full(per, n_random, np.int32),
             "random_ref": (u_rows + top + np.arange(n_random)).ravel().astype(np.int32),
             "quantile_count": np.zeros((per, 5), np.int32), "quantile_ref": np.zeros(0, np.int32),
             "stats": np.zeros((per, 4)), "quantile_boundaries": np.zeros((per, 4))}
        write_pack(folder, t, k, T, dst / EXCERPTS_FILE)
        write_json(folder / "summary.json", {"units": [{"index": i, "max_activation": 1.0} for i in range(per)]})
        datasets.append({"unit_type": "sae_latents", "name": "synth", "layer": k, "path": path, "units": per,
                         "by_token_pair": False})
    write_json(dst / "manifest.json", {"format": "saescope-collated", "version": 1, "model": "synth",
                                       "datasets": datasets})
    print(f"{n_datasets} datasets × {per} units in {dst}")


def timed(root: Path, per_unit: bool, workers: int, max_units: int) -> None:
    from saescope.interp import pipeline
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.io import read_json

    pipeline.VECTORISED = not per_unit
    shutil.rmtree(root / "explanations", ignore_errors=True)
    manifest = read_json(root / "manifest.json")
    cfgs = [InterpConfig(root=str(root), dataset=d["path"], interp=InterpOptions(max_units=max_units))
            for d in manifest["datasets"]]
    t = time.perf_counter()
    out = pipeline.run_interp_many(cfgs, workers=workers)
    dt = time.perf_counter() - t
    n = sum(s["units"] for s in out)
    size = sum(p.stat().st_size for p in (root / "explanations").rglob("*") if p.is_file())
    print(f"{'per-unit' if per_unit else 'vectorised'} workers={workers}: {n} units in {dt:.1f} s = "
          f"{n / dt:.0f} units/s; explanations folder {size / 1e6:.1f} MB; mean score "
          f"{np.mean([s['mean_score'] for s in out]):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["pack", "synth", "time"])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--units", type=int, default=81920)
    ap.add_argument("--datasets", type=int, default=20)
    ap.add_argument("--per-unit", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--max-units", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(Path(a.paths[0]), Path(a.paths[1]))
    elif a.cmd == "synth":
        synth(Path(a.paths[0]), a.units, a.datasets)
    else:
        timed(Path(a.paths[0]), a.per_unit, a.workers, a.max_units)


if __name__ == "__main__":
    main()
