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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saescope.sae.transcoder import TranscoderSet
from saescope.train import metrics as M

log = logging.getLogger(__name__)


def _logits(hm: Any, ids: Tensor) -> Tensor:
    return hm.model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def replacement_logits(hm: Any, ts: TranscoderSet, ids: Tensor,
                       sums: dict[int, M.ReconstructionSums] | None = None) -> dict[str, Tensor]:
    """{clean, replaced, with_errors, zero}: logits [B, T, V] of the four variants (module docstring). `sums`
    (layer → running sums) accumulates each transcoder's reconstruction of the clean MLP output, BOS left out."""
    device = next(hm.model.parameters()).device
    ids = ids.to(device)
    keep = ids == hm.tokenizer.bos_token_id  # [B, T]
    seen: dict[int, tuple[Tensor, Tensor]] = {}

    def record(layer: int, x_in: Tensor, out: Tensor) -> Tensor:
        seen[layer] = (x_in.float(), out.float())
        return out

    with hm.replace_mlps(record, ts.layers):
        clean = _logits(hm, ids)
    pred = ts.reconstruct({l: seen[l][0] for l in ts.layers})
    errors = {l: seen[l][1] - pred[l] for l in ts.layers}
    if sums is not None:
        rows = ~keep  # [B, T]: the positions the transcoders replace
        for l in ts.layers:
            x_in, out = seen[l][0][rows], seen[l][1][rows]  # [N, d_in], [N, d_out]
            sums.setdefault(l, M.ReconstructionSums()).add(out, pred[l][rows], ts.encode_layer(l, x_in))
    with ts.replacement(hm, keep=keep):
        replaced = _logits(hm, ids)
    with ts.replacement(hm, errors=errors, keep=keep):
        with_errors = _logits(hm, ids)
    with hm.replace_mlps(lambda l, x, out: torch.where(keep[..., None], out, torch.zeros_like(out)), ts.layers):
        zero = _logits(hm, ids)
    return {"clean": clean, "replaced": replaced, "with_errors": with_errors, "zero": zero}


@dataclass
class _Sums:
    nll: dict[str, float]
    kl: dict[str, float]
    top1: dict[str, float]
    top1_last: dict[str, float]
    n: int = 0
    n_last: int = 0


@torch.no_grad()
def replacement_metrics(hm: Any, ts: TranscoderSet, contexts: Tensor, batch_size: int = 0) -> dict[str, Any]:
    """CE loss (clean / replaced / with errors / zero-ablated), ΔCE, CE loss recovered, KL(clean ‖ variant) and
    top-1 agreement with the model, over contexts [B, T] (module docstring); per layer (`per_layer`) and their
    mean, the FVU and L0 of each transcoder on the clean MLP input and output. Memory: one batch's four logits
    tensors, sized by evaluate.LOGITS_BUDGET."""
    from saescope.train.evaluate import LOGITS_BUDGET

    B, T = contexts.shape
    V = hm.model.get_output_embeddings().weight.shape[0]
    batch_size = batch_size or max(1, LOGITS_BUDGET // (4 * T * V * 4))
    names = ("replaced", "with_errors", "zero")
    s = _Sums({k: 0.0 for k in ("clean", *names)}, {k: 0.0 for k in names}, {k: 0.0 for k in names},
              {k: 0.0 for k in names})
    layer_sums: dict[int, M.ReconstructionSums] = {}
    for b in range(0, B, batch_size):
        ids = contexts[b:b + batch_size]
        logits = replacement_logits(hm, ts, ids, layer_sums)
        tgt = ids[:, 1:].to(logits["clean"].device).flatten()
        lp = {k: v[:, :-1].flatten(0, 1).log_softmax(-1) for k, v in logits.items()}  # [b·(T−1), V]
        top = {k: v.argmax(-1) for k, v in logits.items()}  # [b, T]
        for k in ("clean", *names):
            s.nll[k] += float(F.nll_loss(lp[k], tgt, reduction="sum"))
        for k in names:
            s.kl[k] += float(M.kl_from_logprobs(lp["clean"], lp[k]).sum())
            s.top1[k] += float((top[k][:, :-1] == top["clean"][:, :-1]).sum())
            s.top1_last[k] += float((top[k][:, -1] == top["clean"][:, -1]).sum())
        s.n += tgt.numel()
        s.n_last += ids.shape[0]
    ce = {k: v / s.n for k, v in s.nll.items()}
    out = {"ce_clean": ce["clean"], "ce_replaced": ce["replaced"], "ce_with_errors": ce["with_errors"],
           "ce_zero_ablation": ce["zero"], "delta_ce": ce["replaced"] - ce["clean"],
           "ce_loss_recovered": M.ce_loss_recovered(ce["clean"], ce["replaced"], ce["zero"])}
    for k in names:
        out[f"kl_{k}"] = s.kl[k] / s.n
        out[f"top1_agreement_{k}"] = s.top1[k] / s.n
        out[f"top1_agreement_last_{k}"] = s.top1_last[k] / s.n_last
    per_layer = {l: layer_sums[l].result() for l in ts.layers}
    out["fvu"] = sum(r["fvu"] for r in per_layer.values()) / len(per_layer)  # mean over layers
    out["l0"] = sum(r["l0"] for r in per_layer.values()) / len(per_layer)
    out.update(tokens=s.n, contexts=s.n_last)
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
