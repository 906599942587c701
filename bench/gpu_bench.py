"""The GPU figures of issue 19 in one table: TopK training and capture throughput against the matmul roofline
measured in the same run, peak GPU memory, host syncs, and sparsify's default trainer on the same device and data.

    python bench/gpu_bench.py [--device cuda] [--quick]     (bench/gpu_check.sh runs it after the cuda tests)

Rows:
- train: tokens/s of saescope's TopK step (k = 32, batch 4,096) at F = 16,384 and 65,536 for d = 640 (gemma-3-270m)
  and d = 2,304 (synthetic), after warm-up; "% bf16 roofline" = 6·N·d·F flop/s (encoder matmul forward, the
  gradients of W_enc, and of x through it: the dense work of a step) over the bf16 `torch.mm` rate of the same
  [4096 × d]·[d × F] shape; with and without the progress bar's per-step metrics (host syncs).
- sparsify: its SparseCoder + SignSGD default step on the same data, if it imports.
- capture: tokens/s of a gemma-3-270m-shaped model (random weights: throughput does not depend on them) in bf16,
  run_with_cache at the middle layer's four hookpoints, against its forward roofline 2·params·tokens / bf16 rate.
--quick shrinks every size so that the script itself can be checked on a CPU.
"""

from __future__ import annotations

import argparse
import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def roofline(n: int, d: int, f: int, dtype: torch.dtype, device: str, reps: int) -> float:
    a, b = torch.randn(n, d, device=device, dtype=dtype), torch.randn(d, f, device=device, dtype=dtype)
    return 2 * n * d * f / timed(lambda: a @ b, device, reps)


def peak_mb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")


def bench_train(d: int, F: int, device: str, steps: int, bs: int, metrics: bool) -> dict:
    from saescope.train.config import TrainerConfig
    from saescope.train.trainer import Trainer

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(bs, d, device=device, generator=g) for _ in range(4)]
    tr = Trainer(TrainerConfig(arch="topk", k=32, width=F, batch_size=bs, checkpoint_every=0, resample_tokens=0),
                 d, steps + 3, device=device)
    for x in xs[:3]:  # warm-up (initialisation, kernels, allocator)
        tr.train_step(x)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        st = tr.train_step(xs[i % 4])
        if metrics:  # what the progress bar reads every step
            float(st["loss"]), float(st["l0"])
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {"tok_s": bs / dt, "flops": 6 * bs * d * F / dt, "peak_mb": peak_mb(device)}


def bench_sparsify(d: int, F: int, device: str, steps: int, bs: int) -> dict | None:
    try:
        from schedulefree import ScheduleFreeWrapper
        from benchlib.peers import sparsify_pieces  # loads sparsify's pieces even where its `datasets` dependency is absent

        SparseCoder, SparseCoderConfig, SignSGD = sparsify_pieces()
    except ImportError:
        return None
    sae = SparseCoder(d, SparseCoderConfig(num_latents=F, k=32), device=device)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (F / 2**14) ** 0.5)]), momentum=0.95)
    opt.train()
    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(bs, d, device=device, generator=g) for _ in range(4)]

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        sae(x).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    for x in xs[:3]:
        step(x)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(xs[i % 4])
    sync(device)
    return {"tok_s": bs * steps / (time.perf_counter() - t0)}


def bench_capture(device: str, quick: bool, batch: int, reps: int) -> dict:
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig  # noqa: F401

    from saescope.models import HookedModel

    size = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, vocab_size=1000) if quick else \
        dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
             num_key_value_heads=1, head_dim=256, vocab_size=262144)  # gemma-3-270m's shapes
    cfg = Gemma3TextConfig(**size, max_position_embeddings=2048, sliding_window=512)
    model = Gemma3ForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()

    class Tok:  # the few tokenizer fields HookedModel reads
        bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

        def __len__(self) -> int:
            return size["vocab_size"]

    hm = HookedModel(model, Tok(), name="gemma-3-270m-shape")
    T = 128
    ids = torch.randint(3, size["vocab_size"], (batch, T), device=device)
    layer = size["num_hidden_layers"] // 2
    hps = [f"resid_post.{layer}", f"mlp_post_act.{layer}", f"mlp_out.{layer}", f"attn_out.{layer}"]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        dt = timed(lambda: hm.run_with_cache(ids, None, hps, stop_early=True), device, reps)
        dt_full = timed(lambda: model(input_ids=ids, use_cache=False), device, reps)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)  # + the lm head below
    layers_frac = (layer + 1) / size["num_hidden_layers"]
    body = n_params * layers_frac  # capture stops after the deepest hookpoint's block
    head = size["hidden_size"] * size["vocab_size"]
    return {"tok_s": batch * T / dt, "flops": 2 * body * batch * T / dt, "full_tok_s": batch * T / dt_full,
            "full_flops": 2 * (n_params + head) * batch * T / dt_full, "peak_mb": peak_mb(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script itself (on a CPU)")
    a = ap.parse_args()
    dev = a.device
    bs, steps, reps = (256, 3, 2) if a.quick else (4096, 50, 20)
    widths = [256, 1024] if a.quick else [16_384, 65_536]
    dims = [64, 96] if a.quick else [640, 2304]
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    print(f"# gpu_bench on {name}, torch {torch.__version__}{' (quick)' if a.quick else ''}\n")
    print("| what | d | F | tokens/s | TFLOP/s | % of bf16 roofline | fp32 roofline TFLOP/s | bf16 roofline TFLOP/s | "
          "peak GPU MiB | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for d in dims:
        for F in widths:
            r16 = roofline(bs, d, F, torch.bfloat16, dev, reps)
            r32 = roofline(bs, d, F, torch.float32, dev, reps)
            for metrics in (False, True):
                r = bench_train(d, F, dev, steps, bs, metrics)
                print(f"| train saescope{' + bar metrics' if metrics else ''} | {d} | {F} | {r['tok_s']:,.0f} | "
                      f"{r['flops'] / 1e12:.1f} | {100 * r['flops'] / r16:.0f} % | {r32 / 1e12:.1f} | "
                      f"{r16 / 1e12:.1f} | {r['peak_mb']:,.0f} | k=32, batch {bs}, bf16 encoder |", flush=True)
            sp = bench_sparsify(d, F, dev, steps, bs)
            print(f"| train sparsify (SignSGD default) | {d} | {F} | "
                  + (f"{sp['tok_s']:,.0f} | | | | | | |" if sp else "– | | | | | | not installed |"), flush=True)
    batch = 2 if a.quick else 64
    hidden = 64 if a.quick else 640
    rb = roofline(batch * 128, hidden, hidden * 4, torch.bfloat16, dev, reps)
    c = bench_capture(dev, a.quick, batch, max(2, reps // 4))
    print(f"| capture (4 hookpoints, stops at the middle layer) | {hidden} | – | {c['tok_s']:,.0f} | "
          f"{c['flops'] / 1e12:.1f} | {100 * c['flops'] / rb:.0f} % | | {rb / 1e12:.1f} | {c['peak_mb']:,.0f} | "
          f"bf16, batch {batch}×128 |")
    print(f"| full forward (all layers + lm head) | {hidden} | – | {c['full_tok_s']:,.0f} | "
          f"{c['full_flops'] / 1e12:.1f} | {100 * c['full_flops'] / rb:.0f} % | | {rb / 1e12:.1f} | | bf16 |")


if __name__ == "__main__":
    main()
