"""Evaluate an SAE: reconstruction/sparsity metrics on held-out activations, and spliced into the model.

Spliced metrics replace the hookpoint's activation by the SAE reconstruction (BOS left untouched, as in
training) and compare next-token cross-entropy with the clean model and with zero-ablation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from saescope.models import HookedModel
from saescope.sae import BaseSAE
from saescope.train import metrics as M

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_batches(sae: BaseSAE, batches: Iterable[Tensor], device: str = "cpu") -> dict[str, Any]:
    """Metrics over all rows of `batches` (exact float64 sums, `metrics.ReconstructionSums`)."""
    sae.eval()
    sums = M.ReconstructionSums()
    for x in batches:
        x = x.to(device, torch.float32)
        f = sae.encode(x)
        sums.add(x, sae.decode(f), f)
    if sums.n == 0:
        from saescope.errors import SaescopeError

        raise SaescopeError("no evaluation rows (the held-out shards are empty)")
    assert sums.fire_counts is not None
    dens = M.density(sums.fire_counts, sums.n)
    return {**sums.result(), "dead_fraction": M.dead_fraction(dens), "dense_fraction": M.dense_fraction(dens),
            "density_histogram": M.log_density_histogram(dens), "_density": dens}


LOGITS_BUDGET = 128 * 2**20
"""Bytes of float32 logits the spliced metrics hold per forward pass (the batch is sized to fit)."""


@torch.no_grad()
def spliced_metrics(hm: HookedModel, sae: BaseSAE, hookpoint: str, contexts: Tensor,
                    batch_size: int = 0) -> dict[str, float]:
    """CE loss clean / with the SAE spliced in / zero-ablated, CE recovered and KL(clean ‖ spliced). contexts [B, T].

    Memory is bounded by LOGITS_BUDGET, not by the vocabulary: each batch holds the clean log-probabilities and one
    other pass's logits at a time (gemma's 262k-token vocabulary makes one [8, 128, V] float32 logits tensor 1 GiB).
    """
    from saescope.models import parse_hookpoint

    kind, _ = parse_hookpoint(hookpoint)
    if kind not in ("resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_post_act"):
        raise ValueError(f"cannot splice at {hookpoint}")
    device = next(hm.model.parameters()).device
    sae = sae.to(device).eval()
    B, T = contexts.shape
    V = hm.model.get_output_embeddings().weight.shape[0]
    batch_size = batch_size or max(1, LOGITS_BUDGET // (T * V * 4))
    tot = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    for b in range(0, B, batch_size):
        ids = contexts[b:b + batch_size].to(device)  # [b, T]
        keep = ids == hm.tokenizer.bos_token_id  # [b, T] positions left untouched
        tgt = ids[:, 1:].flatten()

        def next_logp(patch: Callable[[Tensor], Tensor] | None) -> Tensor:
            """[b·(T−1), V] next-token log-probabilities with the hookpoint patched (or clean)."""
            if patch is None:
                logits = hm.model(input_ids=ids, use_cache=False).logits
            else:
                with hm.patch(hookpoint, lambda x: torch.where(keep[..., None], x, patch(x))):
                    logits = hm.model(input_ids=ids, use_cache=False).logits
            return logits[:, :-1].flatten(0, 1).float().log_softmax(-1)

        clean = next_logp(None)
        tot["clean"] += float(torch.nn.functional.nll_loss(clean, tgt, reduction="sum"))
        spliced = next_logp(lambda a: sae(a.float()).to(a.dtype))
        tot["sae"] += float(torch.nn.functional.nll_loss(spliced, tgt, reduction="sum"))
        tot["kl"] += float(M.kl_from_logprobs(clean, spliced).sum())
        del spliced
        tot["zero"] += float(torch.nn.functional.nll_loss(next_logp(torch.zeros_like), tgt, reduction="sum"))
        count += tgt.numel()
    ce = {k: v / count for k, v in tot.items()}
    return {"ce_clean": ce["clean"], "ce_with_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
            "ce_loss_recovered": M.ce_loss_recovered(ce["clean"], ce["sae"], ce["zero"]), "kl_div": ce["kl"]}
