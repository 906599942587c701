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


def spliced_metrics(hm: HookedModel, sae: BaseSAE, hookpoint: str, contexts: Tensor,
                    batch_size: int = 0) -> dict[str, float]:
    """CE loss clean / with the SAE spliced in / zero-ablated, CE recovered and KL(clean ‖ spliced). contexts [B, T]."""
    return spliced_metrics_many(hm, [(sae, hookpoint)], contexts, batch_size)[0]


@torch.no_grad()
def spliced_metrics_many(hm: HookedModel, saes: list[tuple[BaseSAE, str]], contexts: Tensor,
                         batch_size: int = 0) -> list[dict[str, float]]:
    """`spliced_metrics` of several SAEs on the same contexts, sharing the clean pass (and the zero-ablated pass of
    a hookpoint) between them: 1 + n + (hookpoints) forward passes per batch instead of 3n.

    Memory is bounded by LOGITS_BUDGET, not by the vocabulary: each batch holds the clean log-probabilities and one
    other pass's logits at a time (gemma's 262k-token vocabulary makes one [8, 128, V] float32 logits tensor 1 GiB).
    """
    from saescope.models import parse_hookpoint

    for _, hookpoint in saes:
        if parse_hookpoint(hookpoint)[0] not in ("resid_post", "resid_pre", "mlp_in", "mlp_out", "attn_out", "mlp_post_act"):
            raise ValueError(f"cannot splice at {hookpoint}")
    device = next(hm.model.parameters()).device
    saes = [(sae.to(device).eval(), hp) for sae, hp in saes]
    B, T = contexts.shape
    V = hm.model.get_output_embeddings().weight.shape[0]
    batch_size = batch_size or max(1, LOGITS_BUDGET // (T * V * 4))
    tot = [{"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0} for _ in saes]
    count = 0
    for b in range(0, B, batch_size):
        ids = contexts[b:b + batch_size].to(device)  # [b, T]
        keep = ids == hm.tokenizer.bos_token_id  # [b, T] positions left untouched
        tgt = ids[:, 1:].flatten()

        def next_logp(hookpoint: str, patch: Callable[[Tensor], Tensor] | None) -> Tensor:
            """[b·(T−1), V] next-token log-probabilities with the hookpoint patched (or clean)."""
            if patch is None:
                logits = hm.model(input_ids=ids, use_cache=False).logits
            else:
                with hm.patch(hookpoint, lambda x: torch.where(keep[..., None], x, patch(x))):
                    logits = hm.model(input_ids=ids, use_cache=False).logits
            return logits[:, :-1].flatten(0, 1).float().log_softmax(-1)

        clean = next_logp("", None)
        clean_nll = float(torch.nn.functional.nll_loss(clean, tgt, reduction="sum"))
        zero: dict[str, float] = {}
        for (sae, hookpoint), t in zip(saes, tot):
            t["clean"] += clean_nll
            spliced = next_logp(hookpoint, lambda a, sae=sae: sae(a.float()).to(a.dtype))
            t["sae"] += float(torch.nn.functional.nll_loss(spliced, tgt, reduction="sum"))
            t["kl"] += float(M.kl_from_logprobs(clean, spliced).sum())
            del spliced
            if hookpoint not in zero:
                zero[hookpoint] = float(torch.nn.functional.nll_loss(next_logp(hookpoint, torch.zeros_like), tgt,
                                                                     reduction="sum"))
            t["zero"] += zero[hookpoint]
        count += tgt.numel()
    out = []
    for t in tot:
        ce = {k: v / count for k, v in t.items()}
        out.append({"ce_clean": ce["clean"], "ce_with_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
                    "ce_loss_recovered": M.ce_loss_recovered(ce["clean"], ce["sae"], ce["zero"]), "kl_div": ce["kl"]})
    return out
