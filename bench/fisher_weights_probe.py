"""A residual SAE weighted by the model's Fisher information instead of the norms' read gains (an experiment).

    python bench/fisher_weights_probe.py --store runs/default/store --out runs/resid_sweep --eps 0.01,0.1
    python bench/resid_sae_sweep.py --store runs/default/store --out runs/resid_sweep "e2=--epochs 2" \
        "fisher_eps0.01=(trained above)" "fisher_eps0.1=(trained above)"

F = E[g gᵀ], g = ∂ log p(y)/∂x at resid_post.L for labels y sampled from the model's own next-token distribution
(summed over the context's predictions, one backward per batch; per-position blocks, BOS left out), from 64
training contexts. The SAE is trained (TopK, batch 256, 2 passes, the trainer's recipe) on x·M, M = (F + ε·mean
eigenvalue·I)^½, so its squared error is the second-order KL (plus ε of plain MSE); M is folded back into the saved
weights (W_enc ← M W_enc, W_dec ← W_dec M⁻¹, b_dec ← b_dec M⁻¹), so the saved SAE takes raw x. Each variant is
saved as <out>/fisher_eps<ε>, holding out the same 3 shards as the sweep. docs/metrics.md has the result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def fisher(hm, hp: str, ctx: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """[d, d] float64 Fisher of the next-token distribution with respect to the hookpoint, per position."""
    d = hm.d_model
    F, n = torch.zeros(d, d, dtype=torch.float64), 0
    for i in range(0, len(ctx), batch):
        ids = ctx[i:i + batch]
        delta = torch.zeros(ids.shape[0], ids.shape[1], d, requires_grad=True)
        with hm.patch(hp, lambda x: x + delta):
            logits = hm.model(ids).logits.float()  # [b, T, V]
        y = torch.distributions.Categorical(logits=logits.detach()).sample()  # [b, T]
        torch.log_softmax(logits, -1).gather(-1, y[..., None]).sum().backward()
        g = delta.grad[:, 1:].reshape(-1, d).double()  # BOS is never spliced
        F += g.T @ g
        n += g.shape[0]
    return F / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs/default/store")
    ap.add_argument("--out", default="runs/resid_sweep")
    ap.add_argument("--hookpoint", default="resid_post.9")
    ap.add_argument("--eps", default="0.01,0.1")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--arch", default="topk", help="the trainer's --arch (batchtopk: the run's residual SAE)")
    ap.add_argument("--name", default="fisher_eps{eps:g}", help="each variant's folder under --out")
    a = ap.parse_args()
    from saescope.models import load_model
    from saescope.store import ActivationStore
    from saescope.train.config import TrainerConfig
    from saescope.train.on_store import contexts_from_store, split_shards
    from saescope.train.trainer import Trainer

    torch.manual_seed(0)
    st = ActivationStore(a.store)
    hm = load_model(st.manifest.get("extra", {}).get("model_spec") or st.model)
    hm.model.requires_grad_(False)
    train_ids, _ = split_shards(st, 3)
    t0 = time.perf_counter()
    F = fisher(hm, a.hookpoint, contexts_from_store(st, train_ids[:2], 64, hm.tokenizer.bos_token_id))
    lam, U = torch.linalg.eigh(F)
    lam = lam.clamp_min(0)
    print(f"Fisher in {time.perf_counter() - t0:.0f} s; eigenvalues: max {lam[-1]:.3g}, median {lam.median():.3g}")
    rows = torch.cat([st.load_shard(a.hookpoint, i) for i in train_ids]).float()  # [N, d]
    for eps in (float(e) for e in a.eps.split(",")):
        s = lam + eps * lam.mean()
        M, Minv = ((U * s.sqrt()) @ U.T).float(), ((U / s.sqrt()) @ U.T).float()
        xs = rows @ M
        steps = int(a.epochs * len(xs)) // 256
        tr = Trainer(TrainerConfig(batch_size=256, checkpoint_every=0, arch=a.arch), hm.d_model, steps,
                     metadata={"hook_name": a.hookpoint, "model_name": st.model})

        def batches(xs: torch.Tensor = xs):
            g = torch.Generator().manual_seed(0)
            while True:
                perm = torch.randperm(len(xs), generator=g)
                for j in range(0, len(xs) - 255, 256):
                    yield xs[perm[j:j + 256]]

        t0 = time.perf_counter()
        tr.fit(batches(), progress=False)
        sae = tr.finalize()
        with torch.no_grad():
            sae.W_enc.copy_(M @ sae.W_enc)
            sae.W_dec.copy_(sae.W_dec @ Minv)
            sae.b_dec.copy_(sae.b_dec @ Minv)
        name = a.name.format(eps=eps)
        sae.save(Path(a.out) / name)
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
