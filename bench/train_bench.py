"""SAE training: speed and true-feature recovery, saescope vs sparsify (its default sign-SGD + schedule-free, and
Adam) vs SAELens, on one synthetic data stream with known features.

Every trainer runs in its own subprocess (clean peak RSS) on the same stream, TopK with the same k, width and batch
size, each with its own default recipe (LR, optimiser, b_dec init); all are scored by the same code on the same
held-out rows: FVU, dead latents (never active on the held-out rows), MMCS against the generator's true features
and the fraction of true features found (some latent at cos > 0.9 / > 0.7). Then the "same wall-clock" row:
saescope trained for as long as the peer that found the most features took, on the same stream (continuing past
the peers' tokens). Roofline: tokens/s × 2·d·F (the encoder matmul, the one dense product of a TopK step) over the
fp32 and bf16 `torch.mm` GFLOP/s of that shape, measured in the same run. Peers are skipped (and say so) when not
installed: `pip install eai-sparsify schedulefree sae-lens` into the environment that runs this.

    python bench/train_bench.py [--widths 4096,16384] [--tokens 262144] [--store runs/default/store]
    python bench/train_bench.py --online [--tokens 32768] [--widths 4096]    (online training: bench/benchlib/online.py)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib.common import proc_status_mb
from benchlib.peers import sparsify_pieces

TRAINERS = ["saescope", "saescope_old", "sparsify_signum", "sparsify", "sae_lens", "naive"]
PEERS = ("sparsify_signum", "sparsify", "sae_lens")
OLD_RECIPE = dict(k_anneal_frac=0.0, resample_tokens=0)  # the recipe before issue 13 (with its LR below)


def make_data(args: argparse.Namespace, root: Path) -> None:
    """root/train.npy: the stream (tokens × --stream rows); root/heldout.npy; root/features.npy (synthetic)."""
    n = args.tokens * args.stream
    if args.store:
        from saescope.store import ActivationStore

        store = ActivationStore(args.store)
        x = store.load_all(args.hookpoint or next(iter(store.hookpoints))).float()
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]
        if x.shape[0] < args.tokens + args.heldout:
            sys.exit(f"store has {x.shape[0]} rows, need {args.tokens + args.heldout}")
        np.save(root / "heldout.npy", x[: args.heldout].numpy())
        np.save(root / "train.npy", x[args.heldout: args.heldout + n].numpy())
        return
    from saescope.train.synthetic import realistic_toy

    toy = realistic_toy(d=args.d, n_features=args.features)
    np.save(root / "features.npy", toy.features.numpy())
    np.save(root / "probs.npy", toy.probs.numpy())
    g = torch.Generator().manual_seed(1)
    out = np.lib.format.open_memmap(root / "train.npy", mode="w+", dtype=np.float32, shape=(n, args.d))
    for s in range(0, n, 8192):
        out[s:s + 8192] = toy.sample(min(8192, n - s), g).numpy()
    out.flush()
    np.save(root / "heldout.npy", toy.sample(args.heldout, torch.Generator().manual_seed(2)).numpy())


def batches(x: np.ndarray, bs: int, steps: int):
    for s in range(steps):
        yield torch.from_numpy(np.ascontiguousarray(x[s * bs:(s + 1) * bs]))


def train(name: str, width: int, args: argparse.Namespace, x: np.ndarray, steps: int):
    """Train one trainer with its own defaults; returns (encode, decode, W_dec, seconds)."""
    dim, bs, k = x.shape[1], args.batch_size, args.k
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if name.startswith("saescope"):
        from saescope.train.config import TrainerConfig
        from saescope.train.trainer import Trainer

        extra = OLD_RECIPE | {"lr": 2e-4 * math.sqrt(2**14 / width)} if name == "saescope_old" else {}
        tr = Trainer(TrainerConfig(arch="topk", k=k, width=width, batch_size=bs, checkpoint_every=0, **extra),
                     dim, steps)
        tr.fit(batches(x, bs, steps), progress=False)
        sae = tr.finalize()
        return sae.encode, sae.decode, sae.W_dec, time.perf_counter() - t0
    if name.startswith("sparsify"):
        SparseCoder, SparseCoderConfig, SignSGD = sparsify_pieces()
        sae = SparseCoder(dim, SparseCoderConfig(num_latents=width, k=k), device="cpu")
        scale = (width / 2**14) ** 0.5  # sparsify's LR ∝ 1/√F
        if name == "sparsify_signum":  # sparsify's default optimiser: SignSGD in a ScheduleFreeWrapper
            from schedulefree import ScheduleFreeWrapper

            opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / scale)]), momentum=0.95)
            opt.train()
        else:  # its Adam LR, without the 1000-step warm-up (longer than these runs)
            opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / scale)
        for i, xb in enumerate(batches(x, bs, steps)):  # its Trainer's step for the FVU loss (auxk_alpha = 0)
            if i == 0:
                sae.b_dec.data = xb.mean(0).clone()
            sae.set_decoder_norm_to_unit_norm()
            sae(xb).fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
        if name == "sparsify_signum":
            opt.eval()  # the averaged weights, as sparsify saves them
        sae.set_decoder_norm_to_unit_norm()
        el = time.perf_counter() - t0

        def enc(v: torch.Tensor) -> torch.Tensor:
            e = sae.encode(v)
            return torch.zeros(v.shape[0], width).scatter_(1, e.top_indices, e.top_acts)
        return enc, lambda f: f @ sae.W_dec + sae.b_dec, sae.W_dec, el
    if name == "sae_lens":
        import contextlib
        import io

        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=dim, d_sae=width, k=k))
        cfg = SAETrainerConfig(total_training_samples=steps * bs, train_batch_size_samples=bs, device="cpu")
        cfg.logger.log_to_wandb = False
        with contextlib.redirect_stderr(io.StringIO()):
            sae = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(x, bs, steps)).fit()
        return sae.encode, sae.decode, sae.W_dec, time.perf_counter() - t0
    if name == "naive":  # plain dense TopK: dense decoder, autograd through everything, Adam
        W = torch.randn(width, dim)
        W /= W.norm(dim=1, keepdim=True)
        W_enc, W_dec = torch.nn.Parameter(W.T.clone()), torch.nn.Parameter(W)
        b_enc, b_dec = torch.nn.Parameter(torch.zeros(width)), torch.nn.Parameter(torch.zeros(dim))
        opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=2e-4 * math.sqrt(2**14 / width))

        def enc(v: torch.Tensor) -> torch.Tensor:
            pre = (v - b_dec) @ W_enc + b_enc
            val, idx = pre.topk(k, dim=1)
            return torch.zeros_like(pre).scatter(1, idx, val.relu())
        for i, xb in enumerate(batches(x, bs, steps)):
            if i == 0:
                b_dec.data = xb.mean(0)
            loss = (enc(xb) @ W_dec + b_dec - xb).pow(2).sum() / (xb - xb.mean(0)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
        return enc, lambda f: f @ W_dec + b_dec, W_dec, time.perf_counter() - t0
    raise ValueError(name)


def run_one(name: str, width: int, args: argparse.Namespace, root: Path, steps: int) -> dict:
    x = np.load(root / "train.npy", mmap_mode="r")
    steps = min(steps, x.shape[0] // args.batch_size)
    enc, dec, W_dec, elapsed = train(name, width, args, x, steps)
    held = torch.from_numpy(np.load(root / "heldout.npy"))
    fired, se = torch.zeros(width, dtype=torch.bool), 0.0
    with torch.no_grad():
        for h in held.split(4096):
            f = enc(h)
            se += float((h - dec(f)).pow(2).sum())
            fired |= (f != 0).any(0)
    res = {"trainer": name, "width": width, "tokens": steps * args.batch_size, "seconds": elapsed,
           "tokens_per_s": steps * args.batch_size / elapsed, "fvu": se / float((held - held.mean(0)).pow(2).sum()),
           "dead": float((~fired).float().mean()), "peak_rss_mb": proc_status_mb("VmHWM")}
    if (root / "features.npy").exists():
        from saescope.train.synthetic import recovery

        r = recovery(torch.from_numpy(np.load(root / "features.npy")), W_dec.detach().float(),
                     torch.from_numpy(np.load(root / "probs.npy")))
        res.update(r)
    return res


def mm_gflops(bs: int, d: int, F: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(bs, d, dtype=dtype), torch.randn(d, F, dtype=dtype)
    for _ in range(3):
        a @ b
    t, n = time.perf_counter(), 10
    for _ in range(n):
        a @ b
    return 2 * bs * d * F * n / (time.perf_counter() - t) / 1e9


def launch(name: str, width: int, args: argparse.Namespace, root: Path, steps: int) -> dict | None:
    cmd = [sys.executable, __file__, "--one", name, str(width), str(root), str(steps), "--batch-size",
           str(args.batch_size), "--k", str(args.k)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {name} F={width}: not run ({last[:160]})", file=sys.stderr)
        return None
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("  row " + json.dumps(res), file=sys.stderr)  # partial results survive an interrupted run
    print(f"  done {name} F={width}: {res['tokens']:,} tokens, {res['tokens_per_s']:,.0f} tok/s, "
          f"found {res.get('found_90', float('nan')):.1%}", file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="4096,16384")
    ap.add_argument("--tokens", type=int, default=262144, help="training tokens of every trainer but the same-wall-clock row")
    ap.add_argument("--stream", type=int, default=4, help="stream length as a multiple of --tokens")
    ap.add_argument("--heldout", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--store", default="")
    ap.add_argument("--hookpoint", default="")
    ap.add_argument("--trainers", default="saescope,saescope_old,sparsify_signum,sparsify,sae_lens")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # internal: trainer width datadir steps
    ap.add_argument("--online-one", nargs=4, help=argparse.SUPPRESS)  # internal: kind hookpoints tokens width
    ap.add_argument("--online", action="store_true", help="online training (no store) of 1, 4 and 18 layers of the "
                    "default model vs the bare forward (benchlib/online.py); --tokens per SAE, first of --widths")
    args = ap.parse_args()
    if args.online_one:  # one row of --online, in its own process (clean peak RSS)
        from benchlib.online import child

        k, hps, tokens, width = args.online_one
        print(json.dumps(child(k, hps, int(tokens), int(width))))
        return
    if args.online:
        from benchlib.online import main_online

        main_online(args.tokens if args.tokens != 262144 else 32768, int(args.widths.split(",")[0]))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args, Path(args.one[2]), int(args.one[3]))))
        return
    results, steps = [], args.tokens // args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(args, root)
        dim = np.load(root / "heldout.npy", mmap_mode="r").shape[1]
        for width in [int(w) for w in args.widths.split(",")]:
            peak = {dt: mm_gflops(args.batch_size, dim, width, getattr(torch, dt)) for dt in ("float32", "bfloat16")}
            rows = [r for n in args.trainers.split(",") if (r := launch(n, width, args, root, steps))]
            peers = [r for r in rows if r["trainer"] in PEERS]
            if peers and any(r["trainer"] == "saescope" for r in rows):
                best = max(peers, key=lambda r: (r.get("found_90", 0.0), -r["fvu"]))
                own = next(r for r in rows if r["trainer"] == "saescope")
                n = int(best["seconds"] * own["tokens_per_s"] / args.batch_size)
                if (r := launch("saescope", width, args, root, n)):
                    r["trainer"] = f"saescope @ {best['trainer']} wall-clock"
                    rows.append(r)
            for r in rows:
                r.update(peak_fp32=peak["float32"], peak_bf16=peak["bfloat16"])
            results += rows
    report(args, dim, results)


def report(args: argparse.Namespace, dim: int, results: list[dict]) -> None:
    src = (f"store {args.store}" if args.store else
           f"synthetic `realistic_toy` ({args.features} true features in d={dim}, Zipf–Mandelbrot 0.24…1e-4)")
    print(f"\n{src}; TopK k={args.k}, batch {args.batch_size}, {args.tokens:,} training tokens (same-wall-clock row: "
          f"more), held-out {args.heldout:,}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| trainer | F | tokens | seconds | tokens/s | vs fastest peer | held-out FVU | dead | MMCS | found cos>0.9 | "
          "found cos>0.7 | roofline fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for width in sorted({r["width"] for r in results}):
        rows = [r for r in results if r["width"] == width]
        peers = [r["tokens_per_s"] for r in rows if r["trainer"] in PEERS]
        best = max(peers) if peers else None
        for r in rows:
            vs = f"{r['tokens_per_s'] / best:.2f}x" if best else "-"
            pct = lambda key: f"{r[key]:.1%}" if key in r else "-"  # noqa: E731
            mm = f"{r['mmcs']:.3f}" if "mmcs" in r else "-"
            flops = r["tokens_per_s"] * 2 * dim * width / 1e9
            roof = f"{flops / r['peak_fp32']:.0%} / {flops / r['peak_bf16']:.0%}"
            print(f"| {r['trainer']} | {width} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | {vs} | "
                  f"{r['fvu']:.3f} | {r['dead']:.1%} | {mm} | {pct('found_90')} | {pct('found_70')} | {roof} |")
    for width in sorted({r["width"] for r in results}):
        r0 = next(r for r in results if r["width"] == width)
        print(f"\nF={width}: matmul roofline [{args.batch_size}×{dim}]·[{dim}×{width}] measured in this run: "
              f"fp32 {r0['peak_fp32']:.0f} GFLOP/s, bf16 {r0['peak_bf16']:.0f} GFLOP/s")
    print("\nDiagnostics (synthetic): split / merged / absorbed and found per frequency band")
    for r in results:
        if "split" in r:
            bands = ", ".join(f"{k[9:]} {v:.0%}" for k, v in r.items() if k.startswith("found_90 "))
            print(f"- {r['trainer']} F={r['width']}: split {r['split']:.1%}, merged {r['merged']:.1%}, "
                  f"absorbed {r['absorbed']:.1%}; found>0.9 by firing frequency: {bands}")


if __name__ == "__main__":
    main()
