"""Evaluate an SAE: reconstruction/sparsity metrics on held-out activations, and spliced into the model.

Spliced metrics replace the hookpoint's activation by the SAE reconstruction (BOS left untouched, as in
training) and compare next-token cross-entropy with the clean model and with zero-ablation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from saescope.sae import BaseSAE
from saescope.train import metrics as M

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_batches(sae: BaseSAE, batches: Iterable[Tensor], device: str = "cpu") -> dict[str, Any]:
    """Metrics over all rows of `batches` (numerator/denominator sums accumulated exactly, in float64)."""
    sae.eval()
    n = 0
    sq_err = sum_x = sum_x2 = l0 = l1 = cos = shrink = dot = xhat2 = 0.0
    fire_counts: Tensor | None = None
    sum_vec: Tensor | None = None
    for x in batches:
        x = x.to(device, torch.float32)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        xd, hd = x.double(), x_hat.double()
        n += x.shape[0]
        sq_err += float((xd - hd).pow(2).sum())
        sum_vec = xd.sum(0) if sum_vec is None else sum_vec + xd.sum(0)
        sum_x2 += float(xd.pow(2).sum())
        l0 += float((f != 0).sum())
        l1 += float(f.abs().sum())
        cos += float(torch.nn.functional.cosine_similarity(xd, hd, dim=1).sum())
        shrink += float((hd.norm(dim=1) / xd.norm(dim=1).clamp_min(1e-30)).sum())
        dot += float((xd * hd).sum())
        xhat2 += float(hd.pow(2).sum())
        fc = (f != 0).sum(0)
        fire_counts = fc if fire_counts is None else fire_counts + fc
    if n == 0:
        from saescope.errors import SaescopeError

        raise SaescopeError("no evaluation rows (the held-out shards are empty)")
    assert sum_vec is not None and fire_counts is not None
    var = sum_x2 / n - float((sum_vec / n).pow(2).sum())  # E‖x‖² − ‖E x‖²: variance about the mean
    dens = M.density(fire_counts, n)
    return {
        "tokens": n, "fvu": (sq_err / n) / max(var, 1e-30), "explained_variance": 1 - (sq_err / n) / max(var, 1e-30),
        "mse": sq_err / n, "cosine": cos / n, "shrinkage": shrink / n, "relative_reconstruction_bias": xhat2 / dot,
        "l0": l0 / n, "l1": l1 / n, "dead_fraction": M.dead_fraction(dens), "dense_fraction": M.dense_fraction(dens),
        "density_histogram": M.log_density_histogram(dens), "_density": dens,
    }


@torch.no_grad()
def spliced_metrics(hm: Any, sae: BaseSAE, hookpoint: str, contexts: Tensor, batch_size: int = 8) -> dict[str, float]:
    """CE loss clean / with the SAE spliced in / zero-ablated, CE recovered and KL(clean ‖ spliced). contexts [B, T]."""
    from saescope.models import parse_hookpoint

    kind, layer = parse_hookpoint(hookpoint)
    if kind not in ("resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_post_act"):
        raise ValueError(f"cannot splice at {hookpoint}")
    device = next(hm.model.parameters()).device
    sae = sae.to(device).eval()
    tot = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    for b in range(0, contexts.shape[0], batch_size):
        ids = contexts[b:b + batch_size].to(device)
        keep = ids == hm.tokenizer.bos_token_id  # [B, T] positions left untouched

        def replace(x: Tensor, fn) -> Tensor:  # noqa: ANN001
            return torch.where(keep[..., None], x, fn(x))

        clean = hm.model(input_ids=ids, use_cache=False).logits
        with hm.patch(hookpoint, lambda x: replace(x, lambda a: sae(a.float()).to(a.dtype))):
            spliced = hm.model(input_ids=ids, use_cache=False).logits
        with hm.patch(hookpoint, lambda x: replace(x, torch.zeros_like)):
            zero = hm.model(input_ids=ids, use_cache=False).logits
        tgt = ids[:, 1:]
        for name, logits in (("clean", clean), ("sae", spliced), ("zero", zero)):
            tot[name] += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), tgt.flatten(), reduction="sum"))
        tot["kl"] += float(M.kl_divergence(clean[:, :-1].float(), spliced[:, :-1].float()).sum())
        count += tgt.numel()
    ce = {k: v / count for k, v in tot.items()}
    return {"ce_clean": ce["clean"], "ce_with_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
            "ce_loss_recovered": M.ce_loss_recovered(ce["clean"], ce["sae"], ce["zero"]), "kl_div": ce["kl"]}
