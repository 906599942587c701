"""The replacement model: every MLP replaced at once by its transcoder, with and without error terms.

    replaced        mlp_out.L := T_L(mlp_in.L) for every layer at once (inputs are the replacement model's own)
    with errors     mlp_out.L := T_L(mlp_in.L) + e_L,  e_L = clean mlp_out.L − T_L(clean mlp_in.L)
                    (reproduces the model exactly: layer 0 sees the clean input, so by induction every layer does)
    zero-ablated    mlp_out.L := 0 for every layer (the baseline of CE loss recovered)

BOS positions keep their MLP outputs in every variant (constants the transcoders were not trained on; the graph's
BOS has no features either, reference/circuit_tracing.md). Metrics over next-token predictions: CE loss of each,
ΔCE = replaced − clean, CE loss recovered = (zero − replaced) / (zero − clean), KL(clean ‖ replaced), top-1
agreement with the model (every position, and the last position of each context: Anthropic's per-prompt figure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.sae.transcoder import TranscoderSet
from saescope.train import metrics as M

log = logging.getLogger(__name__)


VARIANTS = ("clean", "replaced", "with_errors", "zero")


@torch.no_grad()
def replacement_passes(hm: Any, ts: TranscoderSet, ids: Tensor, run: Callable[[], Any],
                       sums: dict[int, M.ReconstructionSums] | None = None,
                       variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """{clean, replaced, with_errors, zero} (those of `variants`; clean always): what run() returns inside each
    variant (module docstring), the clean pass first. `sums` (layer → running sums) accumulates each transcoder's
    reconstruction of the clean MLP output, BOS left out."""
    keep = ids == hm.tokenizer.bos_token_id  # [B, T]
    seen: dict[int, tuple[Tensor, Tensor]] = {}

    def record(layer: int, x_in: Tensor, out: Tensor) -> Tensor:
        seen[layer] = (x_in.float(), out.float())
        return out

    with hm.replace_mlps(record, ts.layers):
        clean = run()
    pred = ts.reconstruct({l: seen[l][0] for l in ts.layers})
    errors = {l: seen[l][1] - pred[l] for l in ts.layers}
    if sums is not None:
        rows = ~keep  # [B, T]: the positions the transcoders replace
        for l in ts.layers:
            x_in, out = seen[l][0][rows], seen[l][1][rows]  # [N, d_in], [N, d_out]
            sums.setdefault(l, M.ReconstructionSums()).add(out, pred[l][rows], ts.encode_layer(l, x_in))
    res = {"clean": clean}
    if "replaced" in variants:
        with ts.replacement(hm, keep=keep):
            res["replaced"] = run()
    if "with_errors" in variants:
        with ts.replacement(hm, errors=errors, keep=keep):
            res["with_errors"] = run()
    if "zero" in variants:
        with hm.replace_mlps(lambda l, x, out: torch.where(keep[..., None], out, torch.zeros_like(out)), ts.layers):
            res["zero"] = run()
    return res


def _batch_losses(hm: Any, ts: TranscoderSet, ids: Tensor, sums: dict[int, M.ReconstructionSums],
                  variants: tuple[str, ...] = VARIANTS) -> dict[str, Tensor]:
    """Per context [b] of one batch: NLL and KL(clean ‖ variant) summed over the T − 1 predictions, top-1
    agreement with the clean pass (count over the predictions, and 0/1 at the last position)."""
    from saescope.train import next_token as NT

    b, T = ids.shape
    V, head = NT.vocab_size(hm.model), NT.Unembed.of(hm.model)
    tgt = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1).flatten()  # [b·T]: the last has no target
    clean: list[NT.Clean] = []

    def run() -> Any:
        logits = NT.run(hm.model, ids, head, last=True)
        if not clean:
            clean.append(NT.clean_stats(logits, V, tgt))
            return clean[0]
        return NT.variant_losses(logits, V, tgt, clean[0])

    res = replacement_passes(hm, ts, ids, run, sums, variants)
    out: dict[str, Tensor] = {}
    for k, r in res.items():
        out[f"nll_{k}"] = r.nll.view(b, T)[:, :-1].double().sum(1).cpu()
        if k != "clean":
            same = (r.top1 == res["clean"].top1).view(b, T)
            out[f"kl_{k}"] = r.kl.view(b, T)[:, :-1].double().sum(1).cpu()
            out[f"top1_{k}"], out[f"top1_last_{k}"] = same[:, :-1].sum(1).cpu(), same[:, -1].cpu()
    return out


CHECK_CONTEXTS = 8
"""Contexts of the with-errors and zero-ablated passes: the first reproduces the model by construction (a check:
ΔCE and KL 0 to float error), the second is read by CE recovered only, like the SAEs' zero-ablation
(evaluate.ZERO_ABLATION_CONTEXTS); on all 32 they were half of the replacement evaluation's passes."""


@torch.no_grad()
def replacement_metrics(hm: Any, ts: TranscoderSet, contexts: Tensor, batch_size: int = 0,
                        check_contexts: int = CHECK_CONTEXTS) -> dict[str, Any]:
    """CE loss (clean / replaced / with errors / zero-ablated), ΔCE and KL(clean ‖ variant) with their standard
    errors over contexts, CE loss recovered and top-1 agreement with the model over contexts [B, T] (module
    docstring); per layer (`per_layer`) and their mean, the FVU and L0 of each transcoder on the clean MLP input
    and output. The with-errors and zero-ablated passes run on the first batches covering `check_contexts`
    (0: all; `contexts_checked`), and CE recovered is taken on those contexts. Memory: the clean pass's
    probabilities [V, tokens] of one batch, sized by evaluate.LOGITS_BUDGET; every pass forms its logits a
    vocabulary chunk at a time (`next_token`)."""
    from saescope.train.evaluate import LOGITS_BUDGET
    from saescope.train.next_token import vocab_size

    B, T = contexts.shape
    batch_size = batch_size or max(1, LOGITS_BUDGET // (T * vocab_size(hm.model) * 4))
    device = next(hm.model.parameters()).device
    per: dict[str, list[Tensor]] = {}
    layer_sums: dict[int, M.ReconstructionSums] = {}
    for b in range(0, B, batch_size):
        variants = VARIANTS if not check_contexts or b < check_contexts else VARIANTS[:2]
        for k, v in _batch_losses(hm, ts, contexts[b:b + batch_size].to(device), layer_sums, variants).items():
            per.setdefault(k, []).append(v)
    c = {k: torch.cat(v).double() for k, v in per.items()}  # [B] per context ([checked] for with_errors, zero)
    n, checked = T - 1, len(c["nll_zero"])
    ce = {k: float(c[f"nll_{k}"].mean()) / n for k in VARIANTS}
    d_ce, d_ce_se = M.mean_and_se((c["nll_replaced"] - c["nll_clean"]) / n)
    out: dict[str, Any] = {"delta_ce": d_ce, "delta_ce_se": d_ce_se}
    out["delta_ce_with_errors"], out["delta_ce_with_errors_se"] = M.mean_and_se(
        (c["nll_with_errors"] - c["nll_clean"][:checked]) / n)  # paired on the checked contexts
    for k in VARIANTS[1:]:
        out[f"kl_{k}"], out[f"kl_{k}_se"] = M.mean_and_se(c[f"kl_{k}"] / n)
    first = {k: float(c[f"nll_{k}"][:checked].mean()) / n for k in ("clean", "replaced", "zero")}
    out |= {"ce_clean": ce["clean"], "ce_replaced": ce["replaced"], "ce_with_errors": ce["with_errors"],
            "ce_zero_ablation": ce["zero"],
            "ce_loss_recovered": M.ce_loss_recovered(first["clean"], first["replaced"], first["zero"])}
    for k in VARIANTS[1:]:
        out[f"top1_agreement_{k}"] = float(c[f"top1_{k}"].sum()) / (len(c[f"top1_{k}"]) * n)
        out[f"top1_agreement_last_{k}"] = float(c[f"top1_last_{k}"].mean())
    per_layer = {l: layer_sums[l].result() for l in ts.layers}
    out["fvu"] = sum(r["fvu"] for r in per_layer.values()) / len(per_layer)  # mean over layers
    out["l0"] = sum(r["l0"] for r in per_layer.values()) / len(per_layer)
    out.update(tokens=B * n, contexts=B, contexts_checked=checked)
    out["per_layer"] = {str(l): {"fvu": r["fvu"], "l0": r["l0"]} for l, r in per_layer.items()}  # type: ignore[assignment]
    return out


@dataclass
class ReplacementConfig:
    """Replace every MLP by its transcoder at once: CE loss, ΔCE, KL and top-1 agreement with the model, with and
    without error terms, on held-out contexts of a store."""

    transcoders: str = "runs/default/transcoders"
    """Transcoder set: saescope layout (layer_L/ or a CLT), circuit-tracer's config.yaml, or Gemma Scope 2."""
    store: str = "runs/default/store"
    """Activation store whose held-out contexts are replayed (its token ids)."""
    holdout_shards: int = 1
    """Contexts from the last N shards (0 = all)."""
    contexts: int = 32
    """Number of contexts."""
    model: str = ""
    """Model spec (default: the store's model)."""


def evaluate_replacement(cfg: ReplacementConfig, hm: Any = None) -> dict[str, Any]:
    from saescope.errors import SaescopeError
    from saescope.models import load_model
    from saescope.sae.transcoder_io import load_transcoders
    from saescope.store import ActivationStore
    from saescope.train.on_store import contexts_from_store, split_shards

    ts = load_transcoders(cfg.transcoders)
    store = ActivationStore(cfg.store)
    hm = hm or load_model(cfg.model or store.manifest.get("extra", {}).get("model_spec") or store.model)
    if max(ts.layers) >= hm.n_layers:
        raise SaescopeError(f"{cfg.transcoders}: transcoders for layers up to {max(ts.layers)}, but {hm.name} has "
                            f"{hm.n_layers} layers")
    ids = list(range(len(store.shards))) if cfg.holdout_shards == 0 else split_shards(store, cfg.holdout_shards)[1]
    ctx = contexts_from_store(store, ids, cfg.contexts, hm.tokenizer.bos_token_id)
    ts = ts.to(next(hm.model.parameters()).device).eval()
    log.info("replacement model: %d layers of %s transcoders on %d contexts of %d tokens", len(ts.layers),
             "cross-layer" if ts.is_clt else "per-layer", *ctx.shape)
    return replacement_metrics(hm, ts, ctx)
