"""Capture throughput: saescope (hooks + early stop + sharded store) vs a naive loop, same contexts, same run.

The naive loop is what people write first: `model(ids, output_hidden_states=True)` over the whole model, then
pick the layer. Also reports peak RSS sampled over the capture, to show memory stays flat as tokens grow.

    python bench/capture_bench.py [--model default] [--hookpoint resid_post.5] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib.common import RssSampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--hookpoint", default="resid_post.5")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens for the saescope capture (RSS check)")
    ap.add_argument("--naive-tokens", type=int, default=30_000, help="tokens for the speed comparison")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="the bundled corpus is ~640k tokens: repeat it for >= 1M")
    args = ap.parse_args()

    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
    from saescope.models import load_model, parse_hookpoint

    torch.set_grad_enabled(False)
    hm = load_model(args.model)
    layer = parse_hookpoint(args.hookpoint)[1]
    ctx_len = 128
    n_ctx = args.naive_tokens // (ctx_len - 1)
    contexts = list(itertools.islice(iter_contexts(hm.tokenizer, iter_texts("wiki"), ctx_len), n_ctx))

    def naive() -> float:
        t = time.perf_counter()
        for b in range(0, len(contexts), args.batch_size):
            ids = torch.tensor(contexts[b:b + args.batch_size])
            hs = hm.model(ids, output_hidden_states=True).hidden_states[layer + 1]
            _ = hs[:, 1:].reshape(-1, hs.shape[-1]).clone()
        return len(contexts) * (ctx_len - 1) / (time.perf_counter() - t)

    def hooked() -> float:
        t = time.perf_counter()
        for b in range(0, len(contexts), args.batch_size):
            ids = torch.tensor(contexts[b:b + args.batch_size])
            hs = hm.run_with_cache(ids, None, [args.hookpoint])[args.hookpoint]
            _ = hs[:, 1:].reshape(-1, hs.shape[-1]).clone()
        return len(contexts) * (ctx_len - 1) / (time.perf_counter() - t)

    naive(), hooked()  # warm up
    naive_tps, hooked_tps = naive(), hooked()

    with tempfile.TemporaryDirectory() as tmp:
        import json

        corpus = Path(tmp) / "wiki_repeated.jsonl"
        with corpus.open("w") as f:
            for _ in range(args.repeat):
                for doc in iter_texts("wiki"):
                    f.write(json.dumps({"text": doc}) + "\n")
        t0 = time.perf_counter()
        cfg = CaptureConfig(out=str(Path(tmp) / "store"), hookpoints=args.hookpoint, data=CorpusConfig(str(corpus)),
                            capture=CaptureOptions(max_tokens=args.tokens, batch_size=args.batch_size))
        with RssSampler(0.2) as sampler:
            store = capture_corpus(cfg, hm)
        elapsed = time.perf_counter() - t0
        rows = store.rows
    early, late = sampler.phase_max(0, 0.1), sampler.phase_max(0.5, 1.0)

    rows_out = [
        ("naive loop (output_hidden_states, full model)", f"{naive_tps:,.0f}", "1.00x"),
        (f"saescope hooks + early stop at {args.hookpoint}", f"{hooked_tps:,.0f}", f"{hooked_tps / naive_tps:.2f}x"),
        (f"saescope capture to store ({rows:,} tokens, end to end)", f"{rows / elapsed:,.0f}",
         f"{rows / elapsed / naive_tps:.2f}x"),
    ]
    print(f"\nmodel {hm.name}, {hm.n_layers} layers, context {ctx_len}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(f"| {'method':<58} | {'tokens/s':>9} | {'vs naive':>8} |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 10}|")
    for r in rows_out:
        print(f"| {r[0]:<58} | {r[1]:>9} | {r[2]:>8} |")
    print(f"\npeak RSS: first 10% of capture {early:,.0f} MiB, second half {late:,.0f} MiB "
          f"(growth {late - early:+,.0f} MiB over {rows:,} tokens)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
