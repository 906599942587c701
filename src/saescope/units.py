"""Unit groups: what each kind of unit reads from a hooked forward pass, as [U, B, L] activations per excerpt.

- MLP neurons: `mlp_post_act.L`, one value per token (L = T).
- Attention heads: `attn_write_norm` = A_h[i, j]·‖v_h[j] W_O[h]‖ per token pair, flattened as the row-major lower
  triangle (query i, key j ≤ i): index i(i+1)/2 + j, L = T(T+1)/2 (TDB's convention). Grouped-query heads use
  their shared KV head's values.
- SAE latents: the SAE's encoding of its hookpoint, one value per token.
The BOS position (index 0 of every context) is dropped first, so it can never be a top activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.models import HookedModel
from saescope.records import dataset_dir
from saescope.sae import BaseSAE


@dataclass
class UnitGroup:
    unit_type: str
    """mlp_neurons, attention_heads or sae_latents."""
    layer: int
    n_units: int
    hookpoints: list[str]
    extract: Callable[[dict[str, Tensor]], Tensor]
    """cache → [U, B, L] activations (BOS removed)."""
    by_token_pair: bool = False
    name: str = ""
    """SAE name for sae_latents."""
    source: str = ""
    """Where the SAE was loaded from (for the viewer's live probe and logit lens)."""
    sparse: bool = False
    """`extract` returns SparseActs (COO entries) instead of a dense [U, B, L] tensor."""

    @property
    def rel_dir(self) -> str:
        return dataset_dir(self.unit_type, self.name)


def tril_flatten(x: Tensor) -> Tensor:
    """[..., T, T] → [..., T(T+1)/2]: row-major lower triangle, (0,0), (1,0), (1,1), (2,0), …"""
    T = x.shape[-1]
    i, j = torch.tril_indices(T, T)
    return x[..., i, j]


def tril_unflatten_index(k: int) -> tuple[int, int]:
    """Flattened index → (query i, key j)."""
    i = int(((8 * k + 1) ** 0.5 - 1) // 2)
    while (i + 1) * (i + 2) // 2 <= k:
        i += 1
    while i * (i + 1) // 2 > k:
        i -= 1
    return i, k - i * (i + 1) // 2


def mlp_group(hm: HookedModel, layer: int) -> UnitGroup:
    hp = f"mlp_post_act.{layer}"
    return UnitGroup("mlp_neurons", layer, hm.d_mlp, [hp], lambda c: c[hp][:, 1:].permute(2, 0, 1))


def head_group(hm: HookedModel, layer: int) -> UnitGroup:
    pat, val = f"attn_pattern.{layer}", f"attn_value.{layer}"

    def extract(c: dict[str, Tensor]) -> Tensor:
        A = c[pat].float()  # [B, H, T1, T1]
        norms = hm.head_write_norms(layer, c[val].float())  # [B, H, T1] (per key position)
        write = A * norms[:, :, None, :]  # [B, H, q, k]
        return tril_flatten(write[:, :, 1:, 1:]).permute(1, 0, 2)  # [H, B, T(T+1)/2], BOS row/column dropped
    return UnitGroup("attention_heads", layer, hm.n_heads, [pat, val], extract, by_token_pair=True)


def sae_group(sae: BaseSAE, hookpoint: str, name: str, source: str = "") -> UnitGroup:
    from saescope.models import parse_hookpoint

    layer = parse_hookpoint(hookpoint)[1]

    def extract(c: dict[str, Tensor]) -> Tensor:
        x = c[hookpoint][:, 1:].float()  # [B, T, d]
        with torch.no_grad():
            f = sae.encode(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)
        return f.permute(2, 0, 1)
    return UnitGroup("sae_latents", layer, sae.cfg.d_sae, [hookpoint], extract, name=name, source=source)


def sae_pair_group(hm: HookedModel, sae: BaseSAE, hookpoint: str, name: str, source: str = "") -> UnitGroup:
    """An attention-output SAE's latents by token pair: A(t, s) · ∂pre(t)/∂A(t, s) summed over heads
    (`saescope.attribution`), non-zero only where the latent fires at t; BOS row and column dropped."""
    from saescope.attribution import attention_writes, latent_pair_attribution
    from saescope.collate.sparse import SparseActs
    from saescope.models import parse_hookpoint

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
