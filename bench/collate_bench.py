"""Collation throughput and memory: saescope's streaming pass vs the bare capture forward vs delphi-style caching.

- forward only: the hooked forward pass that collation needs (same hookpoints, early stop), no per-unit state;
- saescope collate: the same forward + streaming top-k / reservoirs / moments for every unit;
- store-then-sort (delphi's approach): keep every non-zero SAE latent activation, sort per latent at the end.
Peak RSS is measured in a fresh subprocess per configuration, at two corpus sizes, to show what grows.

    python bench/collate_bench.py [--sae DIR,DIR,...] [--tokens 20000,100000] [--layer 9] [--store DIR]

Default SAEs: the four of `saescope run` (runs/default/saes/{resid_post,mlp_post_act,mlp_out,attn_out}), so
`collate` writes all five dataset kinds; `collate_by_token` leaves out the attention latents by token pair.
`collate_from_store` is what `saescope run` does: the MLP neurons and the four SAEs' latents read from the run's
store (all of its contexts), heads and token pairs with a model pass over the first `tokens`; its cost is given
against a bare forward over the store's tokens (what a model-fed collation of the same records would run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time

import torch
from benchlib.common import RssSampler, proc_status_mb


def corpus_for(tokens: int) -> str:
    """The bundled corpus (~640k tokens), repeated into a jsonl when more tokens are asked for."""
    if tokens <= 600_000:
        return "wiki"
    import json
    from pathlib import Path

    from saescope.corpus import iter_texts

    path = Path(tempfile.gettempdir()) / f"saescope_wiki_x{tokens // 600_000 + 1}.jsonl"
    if not path.exists():
        with path.open("w") as f:
            for _ in range(tokens // 600_000 + 1):
                for doc in iter_texts("wiki"):
                    f.write(json.dumps({"text": doc}) + "\n")
    return str(path)


def run_one(mode: str, tokens: int, args: argparse.Namespace) -> dict:
    from saescope.collate.config import CollateConfig, CollateOptions
    from saescope.collate.run_collate import collate, make_groups
    from saescope.corpus import CorpusConfig, iter_contexts
    from saescope.models import load_model

    torch.set_grad_enabled(False)
    hm = load_model(args.model)
    cfg = CollateConfig(layers=str(args.layer), sae=args.sae, data=CorpusConfig(corpus_for(tokens)),
                        collate=CollateOptions(units="mlp,heads", max_tokens=tokens, excerpt_len=64, batch_size=16,
                                               token_pairs=mode != "collate_by_token"),
                        store=args.store if mode == "collate_from_store" else "")
    rss0 = proc_status_mb("VmHWM")
    t0 = time.perf_counter()
    if mode in ("collate", "collate_by_token", "collate_from_store"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg.out = tmp
            t_pass = time.perf_counter()
            with RssSampler() as rss:
                m = collate(cfg, hm)
            total = time.perf_counter() - t_pass
            n = m["tokens"]
            tps = n / total  # the whole command: streaming pass and record writing
            model_tokens = min(d["tokens"] for d in m["datasets"])
        return {"mode": mode, "tokens": tokens, "unit_tokens": n, "model_tokens": model_tokens, "tokens_per_s": tps,
                "total_s": total, "pass_tokens_per_s": m["tokens_per_second"],
                "peak_rss_mb": proc_status_mb("VmHWM"), "rss_after_load_mb": rss0,
                "rss_first_10pct_mb": rss.phase_max(0, 0.1), "rss_second_half_mb": rss.phase_max(0.5, 1.0),
                "anon_first_10pct_mb": rss.phase_max(0, 0.1, anon=True),
                "anon_second_half_mb": rss.phase_max(0.5, 1.0, anon=True)}
    groups = make_groups(cfg, hm)
    hps = sorted({h for g in groups for h in g.hookpoints})
    ctxs = itertools.islice(iter_contexts(hm.tokenizer, cfg.data.texts(), 65), -(-tokens // 64))
    sae_group = next(g for g in groups if g.unit_type == "sae_latents")
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    n = 0
    while batch := list(itertools.islice(ctxs, 16)):
        ids = torch.tensor(batch)
        cache = hm.run_with_cache(ids, None, hps)
        if mode == "store_then_sort":
            f = sae_group.extract(cache)  # [F, B, T]
            nz = f.nonzero()
            kept.append((nz.to(torch.int32), f[nz[:, 0], nz[:, 1], nz[:, 2]].half()))
        n += ids.shape[0] * 64
    if mode == "store_then_sort":
        idx = torch.cat([k[0] for k in kept])
        val = torch.cat([k[1] for k in kept]).float()
        order = torch.argsort(idx[:, 0].long() * 1e9 - val.double(), stable=True)  # per latent, descending value
        del order
    el = time.perf_counter() - t0
    return {"mode": mode, "tokens": tokens, "unit_tokens": n, "tokens_per_s": n / el, "total_s": el,
            "peak_rss_mb": proc_status_mb("VmHWM"),
            "rss_after_load_mb": rss0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default=",".join(f"runs/default/saes/{k}" for k in
                                              ("resid_post", "mlp_post_act", "mlp_out", "attn_out")))
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--tokens", default="20000,100000")
    ap.add_argument("--store", default="runs/default/store", help="for collate_from_store (65-token contexts)")
    ap.add_argument("--modes", default="forward_only,collate_by_token,collate,collate_from_store,store_then_sort")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--one", mode, str(tokens), "--model", args.model, "--sae", args.sae,
                   "--layer", str(args.layer), "--store", args.store]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-1500:], file=sys.stderr)
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  done {mode} {tokens}", file=sys.stderr)
    print(f"\n{args.model} layer {args.layer}: MLP neurons + heads + SAE latents ({args.sae}); excerpts of 64 tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| mode | tokens (model pass) | tokens per unit | seconds (pass + records) | vs a bare forward over the "
          "units' tokens | peak RSS MiB | RSS above model load | anonymous RSS first 10 % / second half |")
    print("|---|---|---|---|---|---|---|---|")
    for tokens in sorted({r["tokens"] for r in rows}):
        fwd = next((r["tokens_per_s"] for r in rows if r["tokens"] == tokens and r["mode"] == "forward_only"), None)
        for r in [r for r in rows if r["tokens"] == tokens]:
            unit_tokens = r.get("unit_tokens", r["tokens"])
            vs = f"{r['total_s'] / (unit_tokens / fwd):.2f}x" if fwd else "-"
            anon = "-"
            if "anon_first_10pct_mb" in r:
                anon = f"{r['anon_first_10pct_mb']:,.0f} / {r['anon_second_half_mb']:,.0f}"
            per_unit = f"{unit_tokens:,}" if unit_tokens == r.get("model_tokens", unit_tokens) else \
                f"{unit_tokens:,} (heads, pairs: {r['model_tokens']:,})"
            print(f"| {r['mode']} | {r['tokens']:,} | {per_unit} | {r['total_s']:.1f} | {vs} | "
                  f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] - r['rss_after_load_mb']:,.0f} | {anon} |")


if __name__ == "__main__":
    main()
