"""The run's transcoder stage under other recipes: train the 18 skip transcoders online as `saescope run` does,
then score the replacement model on the held-out contexts of a run's store (docs/transcoders.md, "The
least-squares start").

    python bench/transcoder_recipe.py --store runs/default/store --out runs/tc_recipe/lstsq --tokens 16384
    python bench/transcoder_recipe.py ... --skip_init zeros --lr 0 --restarts      # the previous recipe

Prints the training and evaluation seconds, the replacement metrics and each layer's held-out FVU.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs/default/store", help="a run's store (its last shard: the held-out contexts)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--skip_init", default="lstsq", choices=("lstsq", "zeros"))
    ap.add_argument("--lr", type=float, default=1e-3, help="0 = the trainer's default (4e-3 at F = 1,024)")
    ap.add_argument("--restarts", action="store_true", help="restart dead latents (the SAE recipe)")
    a = ap.parse_args()
    from saescope.config import ModelConfig
    from saescope.corpus import CorpusConfig
    from saescope.models import load_model
    from saescope.sae.transcoder_io import load_transcoders
    from saescope.store import ActivationStore
    from saescope.train.config import OnlineConfig, TranscoderRunOptions
    from saescope.train.on_store import contexts_from_store, split_shards
    from saescope.train.replacement import replacement_metrics
    from saescope.train.run_train import run as train

    hm = load_model("default")
    tc = TranscoderRunOptions(transcoder_tokens=a.tokens, transcoder_lr=a.lr).trainer(0)
    tc.skip_init = a.skip_init
    if a.restarts:
        tc.resample_tokens = -1
    t0 = time.perf_counter()
    train(OnlineConfig(model=ModelConfig(), data=CorpusConfig(shuffle_docs=4096), trainer=tc,
                       hookpoints=",".join(f"mlp_in.{l}" for l in range(hm.n_layers)), out=a.out, context_len=65,
                       forward_contexts=16, resume=False), hm=hm)
    t1 = time.perf_counter()
    st = ActivationStore(a.store, verify=False)
    ctx = contexts_from_store(st, split_shards(st, 1)[1], 32, hm.tokenizer.bos_token_id)
    ev = replacement_metrics(hm, load_transcoders(a.out).eval(), ctx)
    print(f"training {t1 - t0:.0f} s, evaluation {time.perf_counter() - t1:.0f} s")
    print(json.dumps({k: round(v, 4) for k, v in ev.items() if isinstance(v, float)}))
    print("per-layer FVU:", [round(v["fvu"], 3) for _, v in sorted(ev["per_layer"].items(), key=lambda kv: int(kv[0]))])


if __name__ == "__main__":
    main()
