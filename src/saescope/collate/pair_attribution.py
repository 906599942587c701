"""Exact attention attributions by token pair: how much each (query t, key s) pair of a layer's attention moves a
function of what attention writes at t — an attention-SAE latent (the seed's "attention latents by token pair").

What attention writes at query t is, for every architecture saescope hooks,

    z_t = Σ_h Σ_{s≤t} A[h, t, s] · w[h, s] + b_O,      w[h, s] = v_{kv(h)}[s] · W_O[h]      (grouped-query: kv(h))
    x_t = z_t                                          (GPT-2, Llama: attn_out = z)
    x_t = g ⊙ z_t / r_t,  r_t = √(mean(z_t²) + ε)      (Gemma 3: the post-attention RMSNorm, g = 1 + weight)

and a latent's pre-activation is pre_i(t) = (x_t − b_dec) · e_i + b_enc,i with e_i = W_enc[:, i]. Its derivative
with respect to A[h, t, s] is w[h, s] · u_i(t), where u_i(t) = ∂pre_i/∂z_t is the encoder direction pulled back
through the norm:

    u = e                                              (no norm)
    u = (g ⊙ e) / r − z · ((g ⊙ e) · z) / (d · r³)     (RMSNorm Jacobian, symmetric, applied to e)

so the attribution A[h, t, s] · ∂pre_i/∂A[h, t, s], summed over heads, needs no backward pass: it is linear in the
write vectors w and is evaluated only for latents that fire at t (a latent that does not fire has zero attribution:
the TopK/JumpReLU gate passes no gradient, as TDB's ReLU latents).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saescope.models import HookedModel, parse_hookpoint
from saescope.sae import BaseSAE
from saescope.units import UnitGroup


class AttnWrites(NamedTuple):
    """One layer's attention, decomposed per head and key (all float32)."""

    pattern: Tensor
    """A [B, H, T, T] post-softmax pattern (query, key)."""
    writes: Tensor
    """w [B, H, T, d]: what head h moves from key s into the residual stream per unit of attention."""
    z: Tensor
    """[B, T, d] attention output before any post-norm (Σ_h Σ_s A w + b_O)."""
    out: Tensor
    """[B, T, d] what attention writes to the residual stream (`attn_out.L`: z, or Gemma's norm of z)."""
    norm_scale: Tensor | None
    """Gemma: g = 1 + weight of the post-attention norm [d]; None where attn_out = z."""
    norm_eps: float


def attention_writes(hm: HookedModel, layer: int, pattern: Tensor, values: Tensor) -> AttnWrites:
    """From the cached `attn_pattern.L` [B, H, T, T] and `attn_value.L` [B, T, n_kv, d_head]."""
    A = pattern.float()
    group = hm.n_heads // hm.n_kv_heads
    v = values.float().repeat_interleave(group, dim=2)  # [B, T, H, dh]
    W_O = hm.W_O(layer).float()  # [H, dh, d]
    w = torch.einsum("bshk,hkd->bhsd", v, W_O)  # [B, H, T, d]
    z = torch.einsum("bhts,bhsd->btd", A, w)  # [B, T, d]
    bias = hm.attn_out_bias(layer)
    if bias is not None:
        z = z + bias.float()
    norm = hm.post_attention_norm(layer)
    if norm is None:
        return AttnWrites(A, w, z, z, None, 0.0)
    g = 1.0 + norm.weight.float()  # [d]
    eps = float(norm.eps)
    out = g * z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + eps)
    return AttnWrites(A, w, z, out, g, eps)


class PairAttribution(NamedTuple):
    """Attributions of the latents that fire, per (excerpt b, query t, latent i) entry."""

    b: Tensor
    """[nnz] excerpt index in the batch."""
    t: Tensor
    """[nnz] query position."""
    latent: Tensor
    """[nnz] latent index."""
    values: Tensor
    """[nnz, T] attribution summed over heads, by key position s (0 for s > t)."""


@torch.no_grad()
def latent_pair_attribution(sae: BaseSAE, aw: AttnWrites) -> PairAttribution:
    """A(t, s) · ∂pre_i(t)/∂A(t, s), summed over heads, for every latent i firing at every query t."""
    B, H, T, d = aw.writes.shape
    f = sae.encode(aw.out.reshape(B * T, d))  # [B·T, F]
    rows, lat = (f != 0).nonzero(as_tuple=True)  # firing entries, sorted by excerpt then query
    b, t = rows // T, rows % T
    W_enc = sae.W_enc.float()  # [d, F]
    out = torch.empty(rows.numel(), T, device=f.device)
    bounds = torch.searchsorted(b, torch.arange(B + 1, device=b.device))
    for j in range(B):  # per excerpt, nothing of size [entries, d] but the encoder columns of its entries
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        if lo == hi:
            continue
        tj, E = t[lo:hi], W_enc[:, lat[lo:hi]]  # [n], [d, n] encoder directions e
        w = aw.writes[j]  # [H, T, d]
        if aw.norm_scale is None:  # w[h, s] · e
            dot = (w.reshape(H * T, d) @ E).reshape(H, T, -1)  # [H, s, n]
        else:  # w · u with u = (g ⊙ e)/r − z ((g ⊙ e) · z)/(d r³), z and r at each entry's query
            g, z = aw.norm_scale, aw.z[j]  # [d], [T, d]
            r = torch.sqrt(z.pow(2).mean(-1) + aw.norm_eps)[tj]  # [n]
            ge_z = ((z * g) @ E)[tj, torch.arange(hi - lo, device=E.device)]  # [n] (g ⊙ e) · z
            wz = torch.einsum("hsd,td->hst", w, z)[:, :, tj]  # [H, s, n] w[h, s] · z
            dot = ((w * g).reshape(H * T, d) @ E).reshape(H, T, -1) / r - wz * (ge_z / (d * r**3))
        A = aw.pattern[j][:, tj, :]  # [H, n, s]
        out[lo:hi] = (A * dot.permute(0, 2, 1)).sum(0)  # [n, s]
    return PairAttribution(b, t, lat, out)


def sae_pair_group(hm: HookedModel, sae: BaseSAE, hookpoint: str, name: str, source: str = "") -> UnitGroup:
    """An attention-output SAE's latents by token pair: A(t, s) · ∂pre(t)/∂A(t, s) summed over heads
    (above), non-zero only where the latent fires at t; BOS row and column dropped."""
    from saescope.collate.sparse import SparseActs

    layer = parse_hookpoint(hookpoint)[1]
    pat, val = f"attn_pattern.{layer}", f"attn_value.{layer}"

    def extract(c: dict[str, Tensor]) -> SparseActs:
        aw = attention_writes(hm, layer, c[pat], c[val])
        pa = latent_pair_attribution(sae, aw)  # entries (b, t, latent), values [nnz, T+1] by key
        T1 = aw.pattern.shape[-1]
        keep = pa.t >= 1  # queries after BOS
        t, vals = pa.t[keep] - 1, pa.values[keep][:, 1:]  # BOS-dropped coordinates, keys 1..T
        e, s = (torch.arange(T1 - 1, device=t.device)[None, :] <= t[:, None]).nonzero(as_tuple=True)  # causal pairs
        v = vals[e, s]
        nz = v != 0
        e, s, v = e[nz], s[nz], v[nz]
        pos = t[e] * (t[e] + 1) // 2 + s
        # the collation state lives on the CPU, as the dense groups' activations do
        return SparseActs(pa.latent[keep][e].cpu(), pa.b[keep][e].cpu(), pos.cpu(), v.float().cpu(), aw.pattern.shape[0])
    return UnitGroup("sae_latents", layer, sae.cfg.d_sae, [pat, val], extract, by_token_pair=True, name=name,
                     source=source, sparse=True)
