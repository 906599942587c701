"""What one context costs the spliced evaluation: seconds per context for the clean pass, for a spliced pass that
starts at the hookpoint's block (what `context_losses` runs), for one that runs every block, and for the old loss
arithmetic (a log-softmax per pass) against the new one (logsumexp + one dot product), all in one process.

    python bench/spliced_cost.py [--model default] [--hookpoint resid_post.9] [--contexts 4] [--T 65]

Prints the table of docs/metrics.md ("What SE < 0.01 costs"), with the contexts an SE of 0.01 nats needs at a given
per-context SD of ΔCE (--sd, nats).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from saescope.models import load_model, parse_hookpoint
    from saescope.models.resume import record_block_inputs, start_at_block
    from saescope.train import evaluate as E
    from saescope.train import metrics as M

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--hookpoint", default="resid_post.9")
    ap.add_argument("--contexts", type=int, default=4)
    ap.add_argument("--T", type=int, default=65)
    ap.add_argument("--sd", type=float, default=0.39, help="per-context SD of ΔCE, nats (base run: 0.054·√53)")
    args = ap.parse_args()
    hm = load_model(args.model)
    layer = parse_hookpoint(args.hookpoint)[1]
    ids = torch.randint(100, 20000, (args.contexts, args.T), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = hm.tokenizer.bos_token_id
    tgt = ids[:, 1:].flatten()
    noise = E.splice(hm, args.hookpoint, lambda x: x * 0.9)
    times: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn()
        times[name] = (time.perf_counter() - t0) / args.contexts
        return out

    def logits() -> torch.Tensor:
        return hm.model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1).float()

    with torch.no_grad():
        logits()  # warm-up
        seen: dict[int, torch.Tensor] = {}
        with record_block_inputs(hm, [layer], seen):
            clean = timed("clean forward", logits)
        with noise(ids):
            full = timed("spliced forward, every block", logits)
        with start_at_block(hm, layer, seen[layer]), noise(ids):
            timed(f"spliced forward from block {layer}", logits)
        c = timed("clean loss terms (once per batch)", lambda: E._clean_stats(clean, tgt))
        timed("loss terms per pass: logsumexp + dot", lambda: E._variant_losses(full, tgt, c))
        lp = clean.log_softmax(-1)  # the clean pass's, once per batch before too

        def before() -> torch.Tensor:
            lq = full.log_softmax(-1)
            return M.kl_from_logprobs(lp, lq) + torch.nn.functional.nll_loss(lq, tgt, reduction="none")
        timed("loss terms per pass: log-softmax (before)", before)
    print(f"{hm.name}, {args.hookpoint}, {args.contexts} contexts of {args.T} tokens, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| step | seconds per context |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.3f} |")
    per = times[f"spliced forward from block {layer}"] + times["loss terms per pass: logsumexp + dot"]
    before = times["spliced forward, every block"] + times["loss terms per pass: log-softmax (before)"]
    n = int((args.sd / 0.01) ** 2)
    print(f"\nspliced pass: {per:.3f} s per context now, {before:.3f} s before ({before / per:.2f}x)")
    print(f"SE 0.01 at SD {args.sd}: {n} contexts; one SAE: {n * (per + times['clean forward']):.0f} s "
          f"(clean + spliced)")


if __name__ == "__main__":
    main()
