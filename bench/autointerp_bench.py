"""Autointerp on the default pipeline's SAE latents: token-lookup baseline vs the null explanation, and the
throughput of the in-process hf backend's all-at-once logprob simulator (no API needed).

    python bench/autointerp_bench.py [--root runs/default/collated/gemma-3-270m] [--units 200] [--hf-units 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="runs/default/collated/gemma-3-270m")
    ap.add_argument("--dataset", default="")
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--hf-units", type=int, default=5)
    ap.add_argument("--hf", default="hf:default")
    args = ap.parse_args()

    from saescope.interp.backends import make_backend
    from saescope.interp.baseline import token_lookup_explanation
    from saescope.interp.config import InterpConfig, InterpOptions
    from saescope.interp.pipeline import _read, resolve, run_interp, score_unit
    from saescope.interp.prompts import explain_messages, splits

    cfg = InterpConfig(root=args.root, dataset=args.dataset, interp=InterpOptions(max_units=args.units), overwrite=True)
    t = time.perf_counter()
    s = run_interp(cfg)
    base_s = time.perf_counter() - t
    manifest_dir, ds, _ = resolve(cfg)
    hf = make_backend(args.hf)
    import json

    scores = json.loads((manifest_dir / "explanations" / ds / "scores.json").read_text())["units"]
    live = [int(i) for i, v in scores.items() if v.get("score") is not None][: args.hf_units]
    n_sims, t, hf_scores, hf_null, prompt_tokens = 0, time.perf_counter(), [], [], []
    for pos, i in enumerate(live):
        rec = _read(Path(manifest_dir), ds, i)
        expl = token_lookup_explanation(splits(rec["most_positive_activation_records"], rec["random_sample"])["train"])
        _, sc = score_unit(hf, rec, expl)
        hf_scores.append(sc["top_and_random"])
        n_sims += 10
        msgs = explain_messages(splits(rec["most_positive_activation_records"], rec["random_sample"])["train"])
        prompt_tokens.append(len(hf.hm.tokenizer.apply_chat_template(msgs, tokenize=True))
                             if getattr(hf.hm.tokenizer, "chat_template", None) else
                             len(hf.hm.tokenizer("\n\n".join(m["content"] for m in msgs))["input_ids"]))
    hf_s = time.perf_counter() - t
    print(f"\n{ds} in {manifest_dir}; {s['units']} live units scored on top-and-random (5 top + 5 random)\n")
    print("| explanation | simulator | mean EV correlation | fraction ≥ 0.8 | units | time |")
    print("|---|---|---|---|---|---|")
    print(f"| token-lookup baseline | token lookup | {s['mean_score']:.3f} | {s['fraction_ge_0.8']:.3f} | {s['units']} | "
          f"{base_s:.1f} s |")
    print(f"| null (another unit's explanation) | token lookup | {s['mean_null_score']:.3f} | - | {s['units']} | - |")
    if hf_scores:
        print(f"| token-lookup baseline | {args.hf} all-at-once logprobs | {statistics.mean(hf_scores):.3f} | - | "
              f"{len(hf_scores)} | {hf_s:.1f} s |")
        print(f"\n{args.hf} simulation throughput: {n_sims / hf_s * 60:.0f} sequence simulations/min; "
              f"explainer prompt: {statistics.mean(prompt_tokens):.0f} tokens per explanation (TDB format, 5 records)")


if __name__ == "__main__":
    main()
