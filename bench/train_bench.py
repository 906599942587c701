"""SAE training speed and quality: saescope vs SAELens vs sparsify vs a plain dense PyTorch loop, same data.

Every trainer runs in its own subprocess (clean peak RSS) on the same activations for the same token budget,
TopK with the same k, width, batch size and learning rate; all are evaluated by the same code on the same
held-out rows. Peers are skipped (and say so) when not installed: `pip install sae-lens eai-sparsify`.

    python bench/train_bench.py [--widths 8192,16384] [--tokens 131072] [--store runs/default/store]
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

import torch
from _common import proc_status_mb

TRAINERS = ["naive", "saescope", "sae_lens", "sparsify"]


def make_data(args: argparse.Namespace, path: Path) -> None:
    from safetensors.torch import save_file

    n = args.tokens + args.heldout
    if args.store:
        from saescope.store import ActivationStore

        store = ActivationStore(args.store)
        hp = args.hookpoint or next(iter(store.hookpoints))
        x = store.load_all(hp).float()
        if x.shape[0] < n:
            sys.exit(f"store has {x.shape[0]} rows, need {n}")
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n]]
    else:
        from saescope.train.synthetic import make_toy

        toy = make_toy(d=args.d, n_features=4096, active=20, alpha=0.5, seed=0, mean_scale=2.0, noise=0.05)
        x = toy.sample(n, torch.Generator().manual_seed(1))
        save_file({"features": toy.features.contiguous()}, str(path.with_suffix(".features.safetensors")))
    save_file({"train": x[: args.tokens].contiguous(), "heldout": x[args.tokens:].contiguous()}, str(path))


def batches(x: torch.Tensor, bs: int):
    for s in range(0, x.shape[0] - bs + 1, bs):
        yield x[s:s + bs]


def run_one(name: str, width: int, args: argparse.Namespace, data: Path) -> dict:
    from safetensors.torch import load_file

    d = load_file(str(data))
    x, held = d["train"], d["heldout"]
    dim, bs, k, lr = x.shape[1], args.batch_size, args.k, args.lr
    steps = x.shape[0] // bs
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if name == "saescope":
        from saescope.train.trainer import Trainer, TrainerConfig

        # constant LR like the peers' loops here (saescope's default adds a final 20 % linear decay)
        tr = Trainer(TrainerConfig(arch="topk", k=k, width=width, batch_size=bs, lr=lr, decay_frac=0.0,
                                   checkpoint_every=0), dim, steps)
        tr.fit(batches(x, bs), progress=False)
        sae = tr.finalize()
        fwd = sae
    elif name == "naive":
        # Plain dense TopK: dense decoder matmul, autograd through everything, Adam; same init and recipe basics.
        W_dec = torch.randn(width, dim)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc = torch.nn.Parameter(W_dec.T.clone())
        W_dec = torch.nn.Parameter(W_dec)
        b_enc, b_dec = torch.nn.Parameter(torch.zeros(width)), torch.nn.Parameter(x[:bs].mean(0).clone())
        opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)

        def fwd(v: torch.Tensor) -> torch.Tensor:
            pre = (v - b_dec) @ W_enc + b_enc
            val, idx = pre.topk(k, dim=1)
            f = torch.zeros_like(pre).scatter(1, idx, val.relu())
            return f @ W_dec + b_dec
        for xb in batches(x, bs):
            loss = (fwd(xb) - xb).pow(2).sum() / (xb - xb.mean(0)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
    elif name == "sae_lens":
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=dim, d_sae=width, k=k))
        cfg = SAETrainerConfig(total_training_samples=steps * bs, train_batch_size_samples=bs, lr=lr, lr_end=lr,
                               device="cpu")
        cfg.logger.log_to_wandb = False
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches(x, bs)))
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):
            sae = trainer.fit()
        fwd = sae
    elif name == "sparsify":
        from sparsify import SparseCoder, SparseCoderConfig

        sae = SparseCoder(dim, SparseCoderConfig(num_latents=width, k=k), device="cpu")
        sae.b_dec.data = x[:bs].mean(0).clone()  # sparsify's Trainer initialises b_dec to the first batch's mean
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        for xb in batches(x, bs):
            out = sae(xb)
            loss = out.fvu + out.auxk_loss / 32
            opt.zero_grad()
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sae.set_decoder_norm_to_unit_norm()

        def fwd(v: torch.Tensor) -> torch.Tensor:
            return sae(v).sae_out
    else:
        raise ValueError(name)
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        rec = torch.cat([fwd(h) for h in batches(held, 1024)])
        held = held[: rec.shape[0]]
        fvu = float((held - rec).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    fpath = data.with_suffix(".features.safetensors")
    mmcs = float("nan")
    dec = (lambda: W_dec) if name == "naive" else (lambda: sae.W_dec)
    if fpath.exists():
        from saescope.train.synthetic import mmcs as _mmcs

        mmcs = _mmcs(load_file(str(fpath))["features"], dec().detach())
    # dead: latents never active on the held-out rows
    dead = float("nan")
    if name in ("saescope", "sae_lens", "sparsify"):
        fired = torch.zeros(width, dtype=torch.bool)
        with torch.no_grad():
            for h in batches(held, 1024):
                if name == "sparsify":
                    fired[sae.encode(h).top_indices.flatten()] = True
                else:
                    fired |= (sae.encode(h) != 0).any(0)
        dead = float((~fired).float().mean())
    return {"trainer": name, "width": width, "tokens_per_s": steps * bs / elapsed, "fvu": fvu, "dead": dead,
            "mmcs": mmcs, "peak_rss_mb": proc_status_mb("VmHWM")}


def mm_gflops(bs: int, d: int, F: int) -> float:
    a, b = torch.randn(bs, d), torch.randn(d, F)
    for _ in range(3):
        a @ b
    t, n = time.perf_counter(), 10
    for _ in range(n):
        a @ b
    return 2 * bs * d * F * n / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="8192,16384")
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--store", default="")
    ap.add_argument("--hookpoint", default="")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: trainer width datafile
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args, Path(args.one[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "acts.safetensors"
        make_data(args, data)
        from safetensors.torch import load_file

        dim = load_file(str(data))["train"].shape[1]
        results = []
        for width in [int(w) for w in args.widths.split(",")]:
            peak = mm_gflops(args.batch_size, dim, width)
            for name in args.trainers.split(","):
                cmd = [sys.executable, __file__, "--one", name, str(width), str(data), "--batch-size",
                       str(args.batch_size), "--k", str(args.k), "--lr", str(args.lr)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"  {name} F={width}: not run ({last[:120]})", file=sys.stderr)
                    continue
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res["roofline"] = res["tokens_per_s"] * 2 * dim * width / (peak * 1e9)
                res["mm_gflops"] = peak
                results.append(res)
                print(f"  done {name} F={width}: {res['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    src = f"store {args.store}" if args.store else f"synthetic (4096 true features in d={dim}, ~20 active)"
    print(f"\n{src}; TopK k={args.k}, batch {args.batch_size}, lr {args.lr}, {args.tokens:,} training tokens, "
          f"held-out {args.heldout:,}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| trainer | F | tokens/s | vs fastest peer | held-out FVU | dead | MMCS | peak RSS MiB | encoder-matmul roofline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in sorted({r["width"] for r in results}):
        rows = [r for r in results if r["width"] == width]
        peers = [r["tokens_per_s"] for r in rows if r["trainer"] in ("sae_lens", "sparsify")]
        best = max(peers) if peers else None
        for r in rows:
            vs = f"{r['tokens_per_s'] / best:.2f}x" if best else "-"
            mm = "-" if math.isnan(r["mmcs"]) else f"{r['mmcs']:.3f}"
            dead = "-" if math.isnan(r["dead"]) else f"{r['dead']:.1%}"
            print(f"| {r['trainer']} | {width} | {r['tokens_per_s']:,.0f} | {vs} | {r['fvu']:.3f} | {dead} | {mm} | "
                  f"{r['peak_rss_mb']:,.0f} | {r['roofline']:.0%} of {r['mm_gflops']:.0f} GFLOP/s |")


if __name__ == "__main__":
    main()
