"""SynthSAEBench-16k: every saescope recipe, SAELens' own runner and sparsify on the field's ground-truth benchmark.

The world is SynthSAEBench-16k built from its published config by SAELens' own generator (`sae_lens.synthetic`),
cached with a sample stream under $SAESCOPE_CACHE/synthsaebench/<config hash>/ (see benchlib/synthworld.py); every trainer
(benchlib/synthtrainers.py) reads the same cached samples, and every SAE is scored by SAELens' `eval_sae_on_synthetic_data`
on a held-out stream. Two comparisons: equal samples (each trainer gets --samples), and equal wall-clock (each gets
as many samples as it processes, at its equal-samples throughput, in the time the reference trainer, SAELens'
runner with BatchTopK, needed). Throughput is taken at the median step (data included), which a shared host's stalls
do not inflate; the JumpReLU L0 calibration runs are not counted.

Bench-only dependencies (sae-lens, eai-sparsify) live in their own venv; from a fresh clone, one command:

    bash bench/synthsaebench_setup.sh            # venv + deps, then the full bench (flags are passed through)
    bash bench/synthsaebench_setup.sh --tiny     # a 512-feature world: the whole pipeline in about a minute
    python bench/synthsaebench.py [--samples N] [--widths 4096] [--l0s 25,20] [--trainers ...] [--cache-dir DIR]

Defaults: 2^20 training samples and 65,536 held-out ones on CPU (the world takes ≈ 27 min to build on two cores and
the stream is drawn at ≈ 950 samples/s, so ≈ 20 min of sampling; the README's table used these); on a GPU the
benchmark's 200M and 500k.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# SAELens docs/synth_sae_bench.md: width 4096, 200M samples, batch 1024, LR 3e-4 (mean over seeds).
PUBLISHED = {  # (arch, L0): (F1, MCC, uniqueness, VE)
    ("BatchTopK", 25): (0.7316, 0.7574, 0.9837, 0.7923), ("Matryoshka", 25): (0.8793, 0.7927, 0.9987, 0.7792),
    ("JumpReLU", 25): (0.7317, 0.7527, 0.9885, 0.7951), ("MatchPursuit", 25): (0.4464, 0.6930, 0.8281, 0.8351),
    ("Standard L1", 25): (0.5562, 0.6039, 0.8976, 0.7654),
    ("BatchTopK", 20): (0.8183, 0.7526, 0.9760, 0.7889), ("Matryoshka", 20): (0.8601, 0.7455, 0.9874, 0.7699),
    ("JumpReLU", 20): (0.8241, 0.7434, 0.9781, 0.7906), ("MatchPursuit", 20): (0.4439, 0.6748, 0.7552, 0.8267),
    ("Standard L1", 20): (0.5777, 0.5834, 0.8528, 0.7501),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchlib.synthtrainers import EXTRA, TRAINERS, known

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="small world (512 features, d=128), width 128, L0 6, 65,536 samples: a ~1 min smoke test")
    ap.add_argument("--world", choices=("v2", "v1"), default="v2",
                    help="v2 (scale_children_by_parent, SAELens' recommendation) or v1 (the world the published "
                         "LISTA-Matryoshka F1 0.97 was measured on); each is cached under its own config hash")
    ap.add_argument("--features", type=int, default=0, help="ground-truth features (default 16384; tiny 512)")
    ap.add_argument("--hidden-dim", type=int, default=0, help="d (default 768; tiny 128)")
    ap.add_argument("--samples", type=int, default=0, help="training samples per SAE (default 2^20 CPU, 200M GPU)")
    ap.add_argument("--eval-samples", type=int, default=0, help="held-out samples scored (default 500k; CPU 65,536)")
    ap.add_argument("--widths", default="", help="SAE widths (default 4096; tiny 128)")
    ap.add_argument("--l0s", default="", help="target L0s (default 25,20; tiny 6)")
    ap.add_argument("--trainers", default=",".join(TRAINERS),
                    help=f"comma-separated, from {', '.join(TRAINERS + EXTRA)} (default: the first "
                         f"{len(TRAINERS)}), or saescope-ARCH+INGREDIENT[+...] (ingredients: lista, kdecay, detach, "
                         "term, freqsort)")
    ap.add_argument("--modes", default="samples,wallclock", help="samples (equal samples), wallclock (equal time)")
    ap.add_argument("--wallclock-s", type=float, default=0.0,
                    help="equal-wall-clock budget in seconds (0 = what saelens-batchtopk took for --samples)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=0, help="rows per cached shard (default 65536; tiny 8192)")
    ap.add_argument("--no-cache-samples", action="store_true",
                    help="draw the stream on the fly instead of caching it (same samples; for GPUs with small disks)")
    ap.add_argument("--calib-rounds", type=int, default=3, help="saescope JumpReLU L0-coefficient calibration runs")
    ap.add_argument("--cache-dir", default="", help="default $SAESCOPE_CACHE or ~/.cache/saescope, + /synthsaebench")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recompute", action="store_true", help="ignore cached results (world and samples are kept)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: print the cached results of the --trainers rows (all modes) for this world")
    a = ap.parse_args(argv)
    a.device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    gpu = a.device.startswith("cuda")
    a.features = a.features or (512 if a.tiny else 16_384)
    a.hidden_dim = a.hidden_dim or (128 if a.tiny else 768)
    a.samples = a.samples or (65_536 if a.tiny else 200_000_000 if gpu else 2**20)
    a.eval_samples = a.eval_samples or (16_384 if a.tiny else 500_000 if gpu else 65_536)
    a.widths = [int(w) for w in (a.widths or ("128" if a.tiny else "4096")).split(",")]
    a.l0s = [int(k) for k in (a.l0s or ("6" if a.tiny else "25,20")).split(",")]
    a.trainers = [t for t in a.trainers.split(",") if t]
    a.modes = [m for m in a.modes.split(",") if m]
    a.shard_size = a.shard_size or (8192 if a.tiny else 65_536)
    bad = [t for t in a.trainers if not known(t)]
    bad += [m for m in a.modes if m not in ("samples", "wallclock")]
    if bad:
        ap.error(f"unknown trainer/mode {', '.join(bad)}; trainers: {', '.join(TRAINERS + EXTRA)}")
    return a


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    s = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.startswith("cuda"):
        s += f", GPU {torch.cuda.get_device_name()}"
    return s


def saescope_rev() -> str:
    """This checkout's commit (+ "-dirty" with uncommitted changes), stored with each result."""
    return subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty", "--abbrev=7"],
                          capture_output=True, text=True).stdout.strip() or "?"


def versions() -> str:
    import sae_lens

    out = [f"sae_lens {sae_lens.__version__}"]
    try:
        from importlib.metadata import version

        out.append(f"eai-sparsify {version('eai-sparsify')}")
    except Exception:  # noqa: BLE001
        out.append("eai-sparsify not installed")
    return ", ".join(out + [f"saescope {saescope_rev()}"])


def run_one(a: argparse.Namespace, ctx: dict[str, Any], name: str, width: int, l0: int, n: int) -> dict[str, Any]:
    """Train and score one SAE, or reuse its cached result (same world, trainer, width, L0, samples, eval)."""
    from benchlib.synthdiag import diagnose
    from benchlib.synthtrainers import train
    from benchlib.synthworld import score

    key = f"{name}-F{width}-L0{l0}-n{n}-b{a.batch_size}-e{a.eval_samples}-s{a.seed}-{a.device.split(':')[0]}"
    path = ctx["results"] / f"{key}.json"
    if path.is_file() and not a.recompute:
        return json.loads(path.read_text())
    print(f"  {name} width {width} L0 {l0}: {n:,} samples", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sae, info = train(name, width, l0, ctx["world"], ctx["world_dir"], ctx["train"], n, a.batch_size,
                              a.device, Path(tmp), a.seed, a.calib_rounds)
        except ImportError as e:
            print(f"  {name}: not run ({e})", file=sys.stderr)
            return {}
        t0 = time.perf_counter()
        s = score(sae, ctx["world"], ctx["eval"], a.eval_samples, a.batch_size, a.device)
        eval_s = time.perf_counter() - t0
        d = diagnose(sae, ctx["world"], ctx["eval"], a.eval_samples, a.batch_size)
        d.pop("per_latent")
        keep = ctx["results"] / key  # the SAE itself, for bench/synthsaebench_diag.py (SAELens layout)
        shutil.rmtree(keep, ignore_errors=True)
        (getattr(sae, "save_inference_model", None) or sae.save_model)(str(keep))
        if getattr(sae, "saescope", None) is not None:  # a LISTA encoder: SAELens' copy lacks its step
            sae.saescope.cpu().save(keep / "saescope")
    step_s = info.get("step_s", float("nan"))
    sps = a.batch_size / step_s if step_s == step_s and step_s > 0 else info["samples"] / max(info["wall_s"], 1e-9)
    rec = {"trainer": name, "width": width, "l0_target": l0, **info, **s, "eval_s": eval_s, "diagnosis": d,
           "samples_per_s": sps, "saescope_rev": saescope_rev()}
    from saescope.io import write_json

    write_json(path, rec)
    return rec


def warm_up(a: argparse.Namespace, ctx: dict[str, Any]) -> None:
    """Two untimed steps of every trainer first, so no timed run pays one-off costs (kernel and allocator set-up,
    lazy imports) that the others skip."""
    from benchlib.synthtrainers import train

    for name in a.trainers:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(name, a.widths[0], a.l0s[0], ctx["world"], ctx["world_dir"], ctx["train"], 2 * a.batch_size,
                      a.batch_size, a.device, Path(tmp), a.seed, calib_rounds=0)
            except ImportError:
                pass


def table(rows: list[dict[str, Any]], cache_samples: int) -> str:
    head = ("| mode | width | L0 target | trainer | samples | passes | train s | samples/s (median step) | F1 | MCC "
            "| uniqueness | VE | L0 | dead | shrinkage |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['width']} | {r['l0_target']} | {r['trainer']} | {r['samples']:,} | "
            f"{r['samples'] / cache_samples:.2f} | {r['wall_s']:,.1f} | {r['samples_per_s']:,.0f} | {r['f1']:.3f} | "
            f"{r['mcc']:.3f} | {r['uniqueness']:.3f} | {r['ve']:.3f} | {r['l0']:.1f} | {r['dead']} | "
            f"{r['shrinkage']:.3f} |")
    return "\n".join(lines)


def why_table(rows: list[dict[str, Any]]) -> str:
    """Each SAE's latents by mechanism (benchlib/synthdiag.py) and its true features found (a latent at F1 >= 0.5)
    by firing band, on the held-out samples."""
    head = ("| mode | trainer | samples | fine | dead | duplicate | absorbed | merged with siblings | merged, other "
            "| found p >= 1e-2 | 1e-3 <= p < 1e-2 | p < 1e-3 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d = r.get("diagnosis")
        if not d:
            continue
        b = list(d["found_by_band"].values())
        lines.append(f"| {r['mode']} | {r['trainer']} | {r['samples']:,} | {d['fine']} | {d['dead']} | "
                     f"{d['duplicate']} | {d['absorbed']} | {d['merged_siblings']} | {d['merged_other']} | "
                     f"{b[0]} | {b[1]} | {b[2]} |")
    return "\n".join(lines)


def report(a: argparse.Namespace, results: Path) -> None:
    """The cached rows of `a.trainers` at this width/L0/batch/eval/seed: equal samples (--samples) first, then every
    other budget of each trainer (the equal-wall-clock runs), as the bench prints them."""
    recs = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
    pick = [r for r in recs if r.get("width") in a.widths and r.get("l0_target") in a.l0s
            and r.get("eval_samples") in (a.eval_samples, a.eval_samples - a.eval_samples % a.batch_size)]
    rows = [{**r, "mode": "samples"} for t in a.trainers for r in pick if r["trainer"] == t and r["samples"] == a.samples]
    rows += [{**r, "mode": f"wall-clock {a.wallclock_s:,.0f} s" if a.wallclock_s else "other budget"}
             for t in a.trainers for r in pick if r["trainer"] == t and r["samples"] != a.samples]
    if not rows:
        sys.exit(f"no cached results for those rows under {results}")
    print(table(rows, a.samples) + "\n\n" + why_table(rows))
    revs = sorted({r.get("saescope_rev", "?") for r in rows})
    print(f"\nsaescope revisions of these rows: {', '.join(revs)}; machine of this report: {machine(a.device)}")


def main(argv: list[str] | None = None) -> None:
    try:
        import sae_lens.synthetic  # noqa: F401
    except ImportError:
        sys.exit("synthsaebench needs sae-lens (a bench-only dependency): run bash bench/synthsaebench_setup.sh")
    from benchlib.synthworld import bench_streams, cache_root, config_hash, load_or_build_world, world_config

    a = parse_args(argv)
    t_start = time.perf_counter()
    cfg = world_config(tiny=a.tiny, features=a.features, hidden_dim=a.hidden_dim, version=a.world)
    root = cache_root(a.cache_dir or None)
    if a.report:
        return report(a, root / config_hash(cfg) / "results")
    world, world_dir = load_or_build_world(cfg, root, a.device)
    base = world_dir.parent
    train_stream, eval_stream = bench_streams(world, world_dir, a.device, a.seed, a.shard_size, a.samples,
                                              a.eval_samples)
    need, free = (a.samples + a.eval_samples) * 250, shutil.disk_usage(base).free  # ≈ 35 nonzeros × 6 B + indptr
    if not a.no_cache_samples and need > 0.8 * free:
        print(f"the sample cache needs ≈ {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free: drawing the stream on "
              "the fly instead (same samples; sampling time then counts in every trainer's time)", file=sys.stderr)
        a.no_cache_samples = True
    if not a.no_cache_samples:
        train_stream.ensure()
        eval_stream.ensure()
    ctx = {"world": world, "world_dir": world_dir, "train": train_stream, "eval": eval_stream,
           "results": base / "results"}
    cache_samples = train_stream.n_shards * a.shard_size
    rows: list[dict[str, Any]] = []
    warm_up(a, ctx)
    for width in a.widths:
        for l0 in a.l0s:
            eq = {t: run_one(a, ctx, t, width, l0, a.samples) for t in a.trainers}
            eq = {t: r for t, r in eq.items() if r}
            rows += [{**r, "mode": "samples"} for r in eq.values()] if "samples" in a.modes else []
            if "wallclock" in a.modes and eq:
                ref = eq.get("saelens-batchtopk") or next(iter(eq.values()))
                budget = a.wallclock_s or ref["samples"] / ref["samples_per_s"]  # its time at its median step
                for t, r in eq.items():
                    n = max(1, round(budget * r["samples_per_s"] / a.batch_size)) * a.batch_size
                    rr = r if n == r["samples"] else run_one(a, ctx, t, width, l0, n)
                    if rr:
                        rows.append({**rr, "mode": f"wallclock {budget:,.0f}s"})
    build = json.loads((world_dir / "build.json").read_text()) if (world_dir / "build.json").is_file() else {}
    print(f"\nSynthSAEBench world: {cfg.num_features:,} ground-truth features in d = {cfg.hidden_dim} "
          f"({'tiny smoke-test world' if a.tiny else 'SynthSAEBench-16k config'}, {a.world}; cache {base}, built in "
          f"{build.get('seconds', float('nan')):,.0f} s on {build.get('device', '?')}); true L0 "
          f"{rows[0]['true_l0']:.1f}" if rows else "no results")
    n_eval = rows[0]["eval_samples"] if rows else 0
    print(f"Budget: {a.samples:,} training samples per SAE at equal samples (batch {a.batch_size}; stream cache "
          f"{cache_samples:,} samples, so passes > 1 re-reads it), scored on {n_eval:,} held-out samples by "
          f"sae_lens.synthetic.eval_sae_on_synthetic_data. Machine: {machine(a.device)}. {versions()}. "
          f"Bench wall time {time.perf_counter() - t_start:,.0f} s.\n")
    md = table(rows, cache_samples) + "\n\nWhy they miss (latents with F1 < 0.5 by mechanism, benchlib/synthdiag.py; " \
        "true features with a latent at F1 >= 0.5, by firing probability p):\n\n" + why_table(rows)
    print(md)
    stale = sorted({f"{r['trainer']} ({r.get('saescope_rev', '?')})" for r in rows
                    if r.get("saescope_rev") != saescope_rev()})
    if stale:
        print(f"\nReused results from other saescope revisions (--recompute to redo): {', '.join(stale)}")
    if not a.tiny and a.widths == [4096]:
        print("\nPublished (SAELens docs/synth_sae_bench.md, 200M samples): " + "; ".join(
            f"{arch} L0 {k}: F1 {v[0]:.3f} MCC {v[1]:.3f} uniq {v[2]:.3f} VE {v[3]:.3f}"
            for (arch, k), v in PUBLISHED.items() if k in a.l0s))
    (base / "results").mkdir(parents=True, exist_ok=True)
    (base / "results" / "table.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
