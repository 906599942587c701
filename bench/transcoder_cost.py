"""What training a transcoder on every layer costs next to the model forward that feeds it (gemma-3-270m, CPU).

One process, interleaved: per round, one full-model forward over 16 contexts of BOS + 64 tokens (every layer's
mlp_in/mlp_out kept), then one training step of every layer's transcoder per configuration on those 1,024 tokens.
Both rows of a comparison come from the same rounds, so machine load shifts them alike; the ratio is what counts.

    python bench/transcoder_cost.py [--rounds 4] [--widths 512,1024,2048] [--kinds skip_transcoder,transcoder]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--widths", default="512,1024,2048")
    ap.add_argument("--kinds", default="skip_transcoder,transcoder")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=256)
    args = ap.parse_args()
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig, iter_contexts
    from saescope.train.config import TrainerConfig
    from saescope.train.online import activation_chunks
    from saescope.train.trainer import Trainer

    hm = ModelConfig().load()
    L = hm.n_layers
    hps = [f"{k}.{l}" for l in range(L) for k in ("mlp_in", "mlp_out")]
    contexts = iter_contexts(hm.tokenizer, CorpusConfig(shuffle_docs=4096).texts(), 65)
    chunks = activation_chunks(hm, contexts, hps, 16, [0])
    configs = [(kind, int(w)) for kind in args.kinds.split(",") for w in args.widths.split(",")]
    trainers = {c: [Trainer(TrainerConfig(kind=c[0], width=c[1], k=args.k, batch_size=args.batch_size,
                                          tokens=10**6, checkpoint_every=0), hm.d_model, 1000, d_out=hm.d_model)
                    for _ in range(L)] for c in configs}
    fwd, train, tokens = 0.0, dict.fromkeys(configs, 0.0), 0
    for r in range(args.rounds + 1):  # round 0 warms up (initialisation, allocator) and is not counted
        t0 = time.perf_counter()
        chunk = next(chunks)
        dt_f = time.perf_counter() - t0
        n = chunk[hps[0]].shape[0]
        dts = {}
        for c, trs in trainers.items():
            t0 = time.perf_counter()
            for l, tr in enumerate(trs):
                for b in range(0, n - args.batch_size + 1, args.batch_size):
                    x, y = chunk[f"mlp_in.{l}"][b:b + args.batch_size], chunk[f"mlp_out.{l}"][b:b + args.batch_size]
                    if not tr.initialised:
                        tr._initialise(x, y)
                    tr.train_step(x, y)
            dts[c] = time.perf_counter() - t0
        if r:
            fwd, tokens = fwd + dt_f, tokens + n
            for c in configs:
                train[c] += dts[c]
    print(f"threads {torch.get_num_threads()}, {tokens} tokens over {args.rounds} rounds, batch {args.batch_size}, "
          f"k {args.k}")
    print(f"{'what':<34} {'tok/s':>8} {'x forward':>10}")
    print(f"{'model forward (18 layers)':<34} {tokens / fwd:>8.0f} {1.0:>10.2f}")
    for c in configs:
        print(f"{f'{c[0]} F={c[1]} x {L} layers':<34} {tokens / train[c]:>8.0f} {train[c] / fwd:>10.2f}")


if __name__ == "__main__":
    main()
