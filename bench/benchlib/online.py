"""Helper of `python bench/train_bench.py --online`: online training (no store) of 1, 4 and all layers' SAEs of the default
model from one forward per batch, against the bare forward to the same deepest layer, in one run.

Each row runs in its own subprocess (clean peak RSS). "vs forward" = online training wall time / the bare forward's
over the same contexts: 1.0 would mean the SAEs cost nothing beside the shared forward.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

TRAIN_BENCH = str(Path(__file__).resolve().parents[1] / "train_bench.py")


def child(kind: str, hookpoints: str, tokens: int, width: int) -> dict:
    import torch

    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig, iter_contexts
    from saescope.train.config import OnlineConfig, TrainerConfig
    from saescope.train.online import train_online
    from benchlib.common import proc_status_mb

    torch.manual_seed(0)
    hm = ModelConfig().load()
    data = CorpusConfig("wiki", shuffle_docs=4096)
    hps = hm.select(hookpoints)
    if kind == "forward":
        import itertools

        ctx = list(itertools.islice(iter_contexts(hm.tokenizer, data.texts(), 128), -(-tokens // 127)))
        t0 = time.perf_counter()
        for b in range(0, len(ctx), 16):
            hm.run_with_cache(torch.tensor(ctx[b:b + 16]), None, hps)
        el = time.perf_counter() - t0
        return {"seconds": el, "tokens": len(ctx) * 127, "peak_mb": proc_status_mb("VmHWM")}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = train_online(OnlineConfig(data=data, hookpoints=hookpoints, out=tmp, context_len=128, forward_contexts=16,
                                        trainer=TrainerConfig(width=width, k=32, tokens=tokens, batch_size=1024,
                                                              buffer_rows=16384, checkpoint_every=0)),
                           hm=hm, progress=False)
        el = time.perf_counter() - t0
    r = next(iter(rep.values()))
    return {"seconds": el, "tokens": r["contexts"] * 127, "trained": r["tokens"], "peak_mb": proc_status_mb("VmHWM"),
            "anon_mb_end": proc_status_mb("RssAnon"), "file_mb_end": proc_status_mb("RssFile"),
            "fvu": {h: v["fvu"] for h, v in rep.items()}}


def main_online(tokens: int, width: int) -> None:
    cases = [("1 layer", "resid_post.9"), ("4 layers", "resid_post.3,resid_post.6,resid_post.9,resid_post.12"),
             ("all 18 layers", "resid_post.*")]
    print(f"online training, gemma-3-270m, bundled wiki, context 128, 16 contexts per forward, TopK F={width} k=32, "
          f"batch 1024, buffer 16,384 rows, {tokens:,} training tokens per SAE\n")
    print("| SAEs | hookpoints | forward tokens/s | online tokens/s (per SAE) | online / forward time | peak RSS MiB "
          "(online) | peak RSS MiB (forward) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, hps in cases:
        res = {}
        for kind in ("forward", "online"):
            out = subprocess.run([sys.executable, TRAIN_BENCH, "--online-one", kind, hps, str(tokens), str(width)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            res[kind] = json.loads(out)
        f, o = res["forward"], res["online"]
        f_tps = f["tokens"] / f["seconds"]
        o_tps = o["trained"] / o["seconds"]
        # the same contexts: compare the time per context consumed
        ratio = (o["seconds"] / o["tokens"]) / (f["seconds"] / f["tokens"])
        print(f"| {name} | `{hps}` | {f_tps:,.0f} | {o_tps:,.0f} | {ratio:.2f}x | {o['peak_mb']:,.0f} | "
              f"{f['peak_mb']:,.0f} |", flush=True)

