"""What one context costs the spliced evaluation: the clean pass and a spliced pass that starts at the hookpoint's
block (what `context_losses` runs), each with the whole [tokens, V] logits and the loss arithmetic on them (the
previous path) against the unembedding a vocabulary chunk at a time (`train/next_token.py`), in one process, with
the machine's fp32 matmul roofline measured in the same run.

    python bench/spliced_cost.py [--model default] [--hookpoint resid_post.9] [--contexts 4] [--T 65] [--sd 0.17]

Prints the table of docs/metrics.md ("What SE < 0.01 costs") and the contexts an SE of 0.01 nats needs at a given
per-context SD of ΔCE (--sd, nats), with what they cost for one SAE (clean + spliced pass per context).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def _whole_logits_losses(logits: torch.Tensor, tgt: torch.Tensor, clean: tuple | None):
    """The previous arithmetic on [N, V] logits: clean → (p, Σ p z, lse, nll); variant → (nll, kl)."""
    lse = logits.logsumexp(-1)
    nll = lse - logits.gather(1, tgt[:, None])[:, 0]
    if clean is None:
        p = (logits - lse[:, None]).exp_()
        return p, torch.linalg.vecdot(p, logits), lse, nll
    p, pz, clse, _ = clean
    return nll, (pz - torch.linalg.vecdot(p, logits)) + (lse - clse)


def roofline(n: int = 2048) -> float:
    a = torch.randn(n, n)
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    from saescope.models import load_model, parse_hookpoint
    from saescope.models.resume import record_block_inputs, start_at_block
    from saescope.train import evaluate as E
    from saescope.train import next_token as NT

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--hookpoint", default="resid_post.9")
    ap.add_argument("--contexts", type=int, default=4)
    ap.add_argument("--T", type=int, default=65)
    ap.add_argument("--sd", type=float, default=0.17, help="per-context SD of ΔCE, nats (default run: 0.030·√32)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    hm = load_model(args.model)
    layer = parse_hookpoint(args.hookpoint)[1]
    ids = torch.randint(100, 20000, (args.contexts, args.T), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = hm.tokenizer.bos_token_id
    tgt = ids[:, 1:].flatten()
    noise = E.splice(hm, args.hookpoint, lambda x: x * 0.9)
    head, V = NT.Unembed.of(hm.model), NT.vocab_size(hm.model)
    times: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.reps):
            out = fn()
        times[name] = (time.perf_counter() - t0) / args.reps / args.contexts
        return out

    def whole() -> torch.Tensor:
        return hm.model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1).float()

    with torch.no_grad():
        seen: dict[int, torch.Tensor] = {}
        with record_block_inputs(hm, [layer], seen):
            whole()
        old_c = timed("clean pass, whole logits (before)", lambda: _whole_logits_losses(whole(), tgt, None))
        with start_at_block(hm, layer, seen[layer]), noise(ids):
            old = timed(f"spliced pass from block {layer}, whole logits (before)",
                        lambda: _whole_logits_losses(whole(), tgt, old_c))
        new_c = timed("clean pass, vocabulary chunks (now)", lambda: NT.clean_stats(NT.run(hm.model, ids, head), V, tgt))
        with start_at_block(hm, layer, seen[layer]), noise(ids):
            new = timed(f"spliced pass from block {layer}, vocabulary chunks (now)",
                        lambda: NT.variant_losses(NT.run(hm.model, ids, head), V, tgt, new_c))
        diff = max(float((a - b).abs().max()) for a, b in zip(old, new))
    peak = roofline()
    print(f"{hm.name}, {args.hookpoint}, {args.contexts} contexts of {args.T} tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; fp32 matmul roofline "
          f"{peak:.0f} GFLOP/s (2048³, same run); max |Δ| of NLL/KL between the paths {diff:.1e}\n")
    print("| step | seconds per context |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.3f} |")
    before = times["clean pass, whole logits (before)"] + times[f"spliced pass from block {layer}, whole logits (before)"]
    now = times["clean pass, vocabulary chunks (now)"] + times[f"spliced pass from block {layer}, vocabulary chunks (now)"]
    n = int((args.sd / 0.01) ** 2)
    print(f"\nclean + spliced pass: {now:.3f} s per context now, {before:.3f} s before ({before / now:.2f}x)")
    print(f"SE 0.01 at SD {args.sd}: {n} contexts; one SAE: {n * now:.0f} s now, {n * before:.0f} s before")


if __name__ == "__main__":
    main()
