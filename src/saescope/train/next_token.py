"""Next-token NLL and KL(clean ‖ variant) of model variants against one clean pass, a vocabulary chunk at a time.

A spliced evaluation runs the model clean once and once per variant; with gemma's 262,144-token vocabulary the
unembedding is most of each pass (640 × 262k MACs per token against ~100M in blocks 9-17), and materialising a
[tokens, V] logits tensor per pass made it memory-bound on small batches (96 GFLOP/s on 64 tokens against 166 for
[2,048 × 640] @ [640 × 256] chunks on the same CPU; `bench/spliced_cost.py`). Here the final hidden states h [N, d]
are taken from the model's base and the logits of vocabulary rows i:j are formed as W[i:j] @ hᵀ [j − i, N], the
chunk reduced while it is in cache. The clean pass keeps its probabilities p [V, N] (one per batch, shared by every
variant); a variant keeps nothing of size V:

    NLL = lse_q − z_q[y],    KL = Σ_v p_v (z_p,v − z_q,v) + lse_q − lse_p

with lse a running logsumexp. Heads that are not a plain linear map of the final hidden state (gemma 2's logit
softcapping is handled; anything else) fall back to the model's own logits, sliced the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

CHUNK = 2048
"""Vocabulary rows per chunk: a [2,048, 256] float32 chunk (2 MB) stays in cache between its matmul and its
reductions, and 2,048 × 640 @ 640 × 256 runs at the fp32 roofline on a 2-core EPYC (bench/spliced_cost.py)."""

LogitsT = Callable[[int, int], Tensor]
"""(i, j) → [j − i, N] next-token logits of vocabulary rows i:j for the N predictions of a pass (transposed)."""


class Unembed(NamedTuple):
    """A model's unembedding as logits = softcap(h Wᵀ + b): weight [V, d], bias [V] or None, softcap or None."""

    weight: Tensor
    bias: Tensor | None
    softcap: float | None

    @classmethod
    def of(cls, model: nn.Module) -> Unembed | None:
        """The head of a `transformers` causal LM, or None where it is not a linear layer on the base's output."""
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear) or getattr(model, "base_model", model) is model:
            return None
        return cls(head.weight, head.bias, getattr(model.config, "final_logit_softcapping", None) or None)

    def logits_t(self, h: Tensor) -> LogitsT:
        """h [N, d] (any dtype) → the chunk function of its logits, computed in float32."""
        w_dtype = self.weight.dtype
        hT = h.to(w_dtype).T.contiguous()  # [d, N]

        def chunk(i: int, j: int) -> Tensor:
            z = self.weight[i:j] @ hT  # [j − i, N]
            if self.bias is not None:
                z += self.bias[i:j, None]
            z = z.float()
            if self.softcap:
                z = torch.tanh(z / self.softcap) * self.softcap
            return z
        return chunk


def run(model: nn.Module, ids: Tensor, head: Unembed | None, last: bool = False) -> LogitsT:
    """One forward pass of ids [b, T] (under whatever hooks are active) → its next-token logits, chunk by chunk,
    for the N = b·(T − 1) predictions with a target (b·T with `last`: the last position's too, row-major)."""
    keep = slice(None) if last else slice(None, -1)
    if head is None:
        z = model(input_ids=ids, use_cache=False).logits[:, keep].flatten(0, 1).float().T  # [V, N]
        return lambda i, j: z[i:j]
    h = model.base_model(input_ids=ids, use_cache=False).last_hidden_state  # [b, T, d]
    return head.logits_t(h[:, keep].flatten(0, 1))


class Clean(NamedTuple):
    """What every variant's losses need from the clean pass of a batch."""

    p: Tensor
    """[V, N] clean next-token probabilities (transposed: a chunk of rows is contiguous)."""
    p_logits: Tensor
    """[N] Σ_v p_v · z_v of the clean logits."""
    lse: Tensor
    """[N] logsumexp of the clean logits."""
    nll: Tensor
    """[N] clean NLL of the targets."""
    top1: Tensor
    """[N] the clean pass's most likely next token."""


def _targets(z: Tensor, tgt: Tensor, i: int, out: Tensor) -> None:
    """out[n] = z[tgt[n] − i, n] for the targets inside this chunk (z [c, N] holds vocabulary rows i:i + c)."""
    inside = ((tgt >= i) & (tgt < i + z.shape[0])).nonzero()[:, 0]
    out[inside] = z[tgt[inside] - i, inside]


def clean_stats(logits: LogitsT, V: int, tgt: Tensor) -> Clean:
    """The clean pass's statistics; tgt [N] the next tokens. Holds one [V, N] float32 tensor."""
    N, dev = tgt.shape[0], tgt.device
    p = torch.empty(V, N, device=dev)
    zt = torch.empty(N, device=dev)
    m, top = torch.full((N,), -torch.inf, device=dev), torch.zeros(N, dtype=torch.long, device=dev)
    for i in range(0, V, CHUNK):
        z = p[i:i + CHUNK]
        z.copy_(logits(i, min(i + CHUNK, V)))
        _targets(z, tgt, i, zt)
        m, top = _running_max(z, i, m, top)
    s, pz = torch.zeros(N, device=dev), torch.zeros(N, device=dev)
    for i in range(0, V, CHUNK):  # p = exp(z − m)/s; Σ p z accumulated before z is overwritten
        z = p[i:i + CHUNK]
        e = (z - m).exp_()  # [c, N]
        s += e.sum(0)
        pz += torch.linalg.vecdot(e, z, dim=0)
        z.copy_(e)
    p /= s
    lse = m + s.log()
    return Clean(p, pz / s, lse, lse - zt, top)


def _running_max(z: Tensor, i: int, m: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
    """(max, argmax) [N] over the chunks so far, z [c, N] holding vocabulary rows i:i + c."""
    mx, arg = z.max(0)
    better = mx > m
    return torch.where(better, mx, m), torch.where(better, arg + i, top)


class Losses(NamedTuple):
    """A variant's pass against the clean one, per prediction [N]."""

    nll: Tensor
    kl: Tensor
    """KL(clean ‖ variant)."""
    top1: Tensor
    """The variant's most likely next token."""


def variant_losses(logits: LogitsT, V: int, tgt: Tensor, c: Clean) -> Losses:
    """A variant's pass, one running logsumexp over the chunks (both KL brackets are exactly 0 when the logits
    equal the clean ones)."""
    N, dev = tgt.shape[0], tgt.device
    zt, pz = torch.empty(N, device=dev), torch.zeros(N, device=dev)
    m, s = torch.full((N,), -torch.inf, device=dev), torch.zeros(N, device=dev)
    top = torch.zeros(N, dtype=torch.long, device=dev)
    for i in range(0, V, CHUNK):
        z = logits(i, min(i + CHUNK, V))  # [c, N]
        _targets(z, tgt, i, zt)
        pz += torch.linalg.vecdot(c.p[i:i + CHUNK], z, dim=0)
        new, top = _running_max(z, i, m, top)
        s = s * (m - new).exp() + z.sub_(new).exp_().sum(0)
        m = new
    lse = m + s.log()
    return Losses(lse - zt, (c.p_logits - pz) + (lse - c.lse), top)


def vocab_size(model: Any) -> int:
    return model.get_output_embeddings().weight.shape[0]
