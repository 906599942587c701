"""Evaluate an SAE: reconstruction/sparsity metrics on held-out activations, and spliced into the model.

Spliced metrics replace the hookpoint's activation by the SAE reconstruction (BOS left untouched, as in
training) and compare next-token cross-entropy with the clean model: ΔCE (spliced − clean loss) and
KL(clean ‖ spliced), in nats per token, each with its standard error over contexts, lead; CE loss recovered (against
zero-ablation) is kept but flagged unreliable where zero-ablation barely changes the loss. `context_losses` takes
any model variants (a transcoder replacement model, several hookpoints at once), not only one spliced SAE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

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


LOGITS_BUDGET = 256 * 2**20
"""Bytes of float32 [V, tokens] the spliced and the replacement metrics hold per batch: the clean pass's
probabilities (the batch is sized to fit: 4 contexts of 65 tokens with gemma's 262k vocabulary); every other pass
forms its logits a vocabulary chunk at a time (`next_token`)."""

ZERO_ABLATION_MIN_NATS = 0.5
"""CE loss recovered = (CE_zero − CE_sae)/(CE_zero − CE_clean) is reported as unreliable when zero-ablating the
hookpoint raises the loss by less than this: the denominator is then small and noisy (gemma-3-270m's attn_out,
mlp_out and mlp_post_act lose 0.1 nats when zeroed, so a 0.05-nat SAE reads as 50 % recovered)."""

ZERO_ABLATION_CONTEXTS = 8
"""Contexts of the zero-ablated pass when the SAEs stop at a target standard error: CE recovered is its only
reader and zero-ablation moves the loss either by tens of nats (the residual stream: 3.4 → 22.9 on gemma-3-270m)
or by too little for CE recovered to be reliable, so 8 contexts say which; on 32 they were 40 % of the passes."""

Variant = Callable[[Tensor], AbstractContextManager]
"""ids [b, T] → a context in which `hm.model` runs modified (a dictionary spliced in, a hookpoint zeroed, every
MLP replaced...); the clean pass is the model outside any variant."""


class ContextLosses(NamedTuple):
    """Losses summed over each context's T − 1 next-token predictions (one value per context, so that standard
    errors are taken over contexts: the tokens of a context are not independent)."""

    clean: Tensor
    """[C] NLL of the clean model (C: the contexts any variant was evaluated on)."""
    nll: Tensor
    """[n, C] NLL with each variant (variant i: valid on its first contexts[i] contexts, nan beyond)."""
    kl: Tensor
    """[n, C] KL(clean ‖ variant) summed over positions (nan beyond contexts[i])."""
    contexts: list[int]
    """Contexts each variant was evaluated on (a prefix of the contexts given)."""
    tokens_per_context: int


def splice(hm: HookedModel, hookpoint: str, fn: Callable[[Tensor], Tensor]) -> Variant:
    """The variant that replaces the hookpoint's activation x by fn(x) everywhere but at BOS (left untouched, as
    in training: BOS activations are outliers no dictionary is trained on). Its `first_block` attribute (the
    hookpoint's layer) lets `context_losses` start its passes there."""
    from saescope.models import parse_hookpoint

    kind, layer = parse_hookpoint(hookpoint)
    if kind not in SPLICEABLE:
        raise ValueError(f"cannot splice at {hookpoint}")

    def variant(ids: Tensor) -> AbstractContextManager:
        keep = (ids == hm.tokenizer.bos_token_id)[..., None]  # [b, T, 1]
        return hm.patch(hookpoint, lambda x: torch.where(keep, x, fn(x)))
    variant.first_block = layer  # type: ignore[attr-defined]
    return variant


SPLICEABLE = ("resid_post", "resid_pre", "mlp_in", "mlp_out", "attn_out", "mlp_post_act")


@torch.no_grad()
def context_losses(hm: HookedModel, variants: list[Variant], contexts: Tensor, batch_size: int = 0,
                   target_se: list[float] | None = None, min_contexts: int = 0,
                   max_seconds: float = 0.0, max_contexts: list[int] | None = None) -> ContextLosses:
    """Per-context NLL of the clean model and of each variant, and KL(clean ‖ variant), on contexts [C, T].

    One clean pass per batch is shared by all variants, and a variant with a `first_block` attribute L (what
    `splice` returns) starts its pass at block L from the clean pass's input there (blocks < L are the same in
    both). With target_se, variant i stops once its ΔCE's standard error is below target_se[i] (0: never; inf: at
    min_contexts) after at least min_contexts contexts, and the clean pass stops with the last variant: the forward
    passes go where the noise is. max_seconds > 0 stops every variant at the first batch boundary past that many
    seconds once min_contexts are done (the standard errors say what that cost in precision); max_contexts[i] > 0
    stops variant i at the first batch boundary at or past that many contexts. Memory is bounded
    by LOGITS_BUDGET, not by the vocabulary: each batch holds the clean probabilities [V, tokens], and every pass
    forms its logits a vocabulary chunk at a time (`next_token`).
    """
    from saescope.models.resume import record_block_inputs, start_at_block
    from saescope.train import next_token as NT

    device = next(hm.model.parameters()).device
    C, T = contexts.shape
    V = NT.vocab_size(hm.model)
    head = NT.Unembed.of(hm.model)
    batch_size = batch_size or max(1, LOGITS_BUDGET // ((T - 1) * V * 4))
    target = target_se or [0.0] * len(variants)
    starts = [getattr(v, "first_block", 0) for v in variants]
    clean_nll = torch.zeros(C, dtype=torch.float64)
    nll = torch.full((len(variants), C), float("nan"), dtype=torch.float64)
    kl = torch.full((len(variants), C), float("nan"), dtype=torch.float64)
    done: list[int | None] = [None] * len(variants)  # contexts of a variant that has stopped
    end, t0 = 0, time.perf_counter()
    for b in range(0, C, batch_size):
        if all(c is not None for c in done):
            break
        ids = contexts[b:b + batch_size].to(device)  # [b, T]
        tgt = ids[:, 1:].flatten()  # [b·(T−1)]
        end = b + len(ids)

        def per_context(x: Tensor) -> Tensor:
            return x.view(ids.shape[0], T - 1).double().sum(1).cpu()  # [b·(T−1)] → [b]

        block_in: dict[int, Tensor] = {}
        with record_block_inputs(hm, [s for s, c in zip(starts, done) if s > 0 and c is None], block_in):
            clean = NT.clean_stats(NT.run(hm.model, ids, head), V, tgt)
        clean_nll[b:end] = per_context(clean.nll)
        for i, variant in enumerate(variants):
            if done[i] is not None:
                continue
            with start_at_block(hm, starts[i], block_in.get(starts[i])), variant(ids):
                own, div, _ = NT.variant_losses(NT.run(hm.model, ids, head), V, tgt, clean)
            nll[i, b:end], kl[i, b:end] = per_context(own), per_context(div)
            if max_contexts and 0 < max_contexts[i] <= end:
                done[i] = end
            elif end >= max(min_contexts, 2) and target[i] > 0 \
                    and M.mean_and_se(nll[i, :end] - clean_nll[:end])[1] / (T - 1) < target[i]:
                done[i] = end
        del clean
        if max_seconds > 0 and end >= min_contexts and time.perf_counter() - t0 > max_seconds:
            done = [c or end for c in done]
    return ContextLosses(clean_nll[:end], nll[:, :end], kl[:, :end], [c or end for c in done], T - 1)


def loss_summary(losses: ContextLosses, i: int, zero: int | None = None) -> dict[str, Any]:
    """The reported numbers of variant i (zero: the index of the zero-ablation variant of the same hookpoint):
    ΔCE and KL first, in nats per token, each with its standard error over contexts. CE recovered is taken on the
    contexts both variants saw."""
    n, c = losses.tokens_per_context, losses.contexts[i]
    clean, own = losses.clean[:c], losses.nll[i, :c]
    d_ce, d_ce_se = M.mean_and_se((own - clean) / n)
    kl, kl_se = M.mean_and_se(losses.kl[i, :c] / n)
    out: dict[str, Any] = {"delta_ce": d_ce, "delta_ce_se": d_ce_se, "kl_div": kl, "kl_div_se": kl_se,
                           "ce_clean": float(clean.mean()) / n, "ce_with_sae": float(own.mean()) / n,
                           "spliced_contexts": c, "spliced_tokens": c * n}
    if zero is not None:
        z = min(c, losses.contexts[zero])
        base, spliced, ablated = (float(v[:z].mean()) / n for v in (losses.clean, own, losses.nll[zero]))
        out |= {"ce_zero_ablation": ablated, "ce_loss_recovered": M.ce_loss_recovered(base, spliced, ablated),
                "ce_loss_recovered_reliable": ablated - base >= ZERO_ABLATION_MIN_NATS, "ce_recovered_contexts": z}
    return out


def spliced_metrics(hm: HookedModel, sae: BaseSAE, hookpoint: str, contexts: Tensor, batch_size: int = 0,
                    target_se: float = 0.0, min_contexts: int = 0, max_seconds: float = 0.0) -> dict[str, Any]:
    """ΔCE and KL(clean ‖ spliced) with standard errors, CE loss clean / spliced / zero-ablated, CE recovered.
    contexts [C, T]; see `spliced_metrics_many` for target_se, min_contexts and max_seconds."""
    return spliced_metrics_many(hm, [(sae, hookpoint)], contexts, batch_size, target_se, min_contexts, max_seconds)[0]


def spliced_metrics_many(hm: HookedModel, saes: list[tuple[BaseSAE, str]], contexts: Tensor, batch_size: int = 0,
                         target_se: float = 0.0, min_contexts: int = 0, max_seconds: float = 0.0,
                         zero_contexts: int = ZERO_ABLATION_CONTEXTS) -> list[dict[str, Any]]:
    """`spliced_metrics` of several SAEs on the same contexts, sharing the clean pass (and the zero-ablated pass of
    a hookpoint) between them: 1 + n + (hookpoints) forward passes per batch instead of 3n.

    target_se > 0: each SAE is evaluated on as many contexts as its ΔCE needs for a standard error below target_se
    (at least min_contexts, at most all), and zero-ablation (only CE recovered reads it) on the first batches
    covering zero_contexts.
    max_seconds > 0: all of them stop at the first batch past that wall time once min_contexts are done.
    """
    device = next(hm.model.parameters()).device
    saes = [(sae.to(device).eval(), hp) for sae, hp in saes]
    variants = [splice(hm, hp, lambda a, sae=sae: sae(a.float()).to(a.dtype)) for sae, hp in saes]
    targets, caps = [target_se] * len(saes), [0] * len(saes)
    zero: dict[str, int] = {}
    for _, hp in saes:
        if hp not in zero:
            zero[hp] = len(variants)
            variants.append(splice(hm, hp, torch.zeros_like))
            targets.append(0.0)
            caps.append(zero_contexts if target_se > 0 else 0)
    losses = context_losses(hm, variants, contexts, batch_size, targets, min_contexts, max_seconds, caps)
    return [loss_summary(losses, i, zero[hp]) for i, (_, hp) in enumerate(saes)]


def headline(ev: dict[str, Any]) -> str:
    """One line for a dictionary's evaluation, in the order that matters: the loss it adds to the model (ΔCE ± its
    standard error, KL), then FVU, L0, dead %, and CE recovered (marked where zero-ablation makes it unreliable)."""
    parts = []
    if "delta_ce" in ev:
        parts += [f"ΔCE {ev['delta_ce']:.3f} ± {ev['delta_ce_se']:.3f} nats", f"KL {ev['kl_div']:.3f}"]
    parts += [f"FVU {ev['fvu']:.3f}", f"L0 {ev['l0']:.1f}"]
    if "dead_fraction_training" in ev:  # the training window's count, then what the held-out tokens left unfired
        parts.append(f"dead {100 * ev['dead_fraction_training']:.1f} % (none in the last "
                     f"{ev['dead_window_tokens']:,} training tokens; {100 * ev.get('dead_fraction', 0):.1f} % "
                     f"unfired on {ev.get('tokens', 0):,} held-out tokens)")
    elif "dead_fraction" in ev:
        parts.append(f"dead {100 * ev['dead_fraction']:.1f} %")
    if "ce_loss_recovered" in ev:
        reliable = ev.get("ce_loss_recovered_reliable", True)
        parts.append(f"CE recovered {ev['ce_loss_recovered']:.3f}{'' if reliable else ' (unreliable)'}")
    return ", ".join(parts)
