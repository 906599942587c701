"""Units: every kind of unit saescope collates and explains, declared once.

A kind (`KINDS`) says where its records live (`dataset_path`), what it reads from a hooked forward pass
(`UnitSet.group`: [U, B, L] activations per excerpt), which direction it writes (`UnitSet.write_direction`) and
what the debugger calls its nodes. Collation, the viewer, export and the debugger all ask here; a new kind of unit
(a transcoder latent) is one row of `KINDS` and its branches in `UnitSet`.

Activations, per kind:
- MLP neurons: `mlp_post_act.L`, one value per token (L = T).
- Attention heads: `attn_write_norm` = A_h[i, j]·‖v_h[j] W_O[h]‖ per token pair, flattened as the row-major lower
  triangle (query i, key j ≤ i): index i(i+1)/2 + j, L = T(T+1)/2 (TDB's convention). Grouped-query heads use
  their shared KV head's values.
- SAE latents: the SAE's encoding of its hookpoint, one value per token. (An attention SAE's latents by token pair
  are collation's own group: `collate/pair_attribution.py`.)
- Transcoder latents: a per-layer transcoder's encoding of mlp_in.L, one value per token; they write their
  decoder row to mlp_out.L.
The BOS position (index 0 of every context) is dropped first, so it can never be a top activation.

torch is imported inside the functions that need it: `records` reads the dataset paths from here and stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from saescope.models import HookedModel
    from saescope.sae import BaseSAE


@dataclass(frozen=True)
class UnitKind:
    """One kind of unit."""

    unit_type: str
    """Its dataset folder inside a model folder (records' unit type)."""
    option: str
    """Its name in `saescope collate --units` ("" for dictionary units, which --sae adds)."""
    node: str
    """The debugger's node prefix (mlp.L.i, head.L.h, latent.<hookpoint>.i)."""
    dictionary: bool
    """Units of a trained dictionary: the dataset folder carries its name (`sae_latents/<name>`)."""


KINDS: dict[str, UnitKind] = {k.unit_type: k for k in (
    UnitKind("mlp_neurons", "mlp", "mlp", dictionary=False),
    UnitKind("attention_heads", "heads", "head", dictionary=False),
    UnitKind("sae_latents", "", "latent", dictionary=True),
    UnitKind("transcoder_latents", "", "tlatent", dictionary=True),
)}
UNIT_TYPES: tuple[str, ...] = tuple(KINDS)
"""mlp_neurons: MLP hidden units (by token); attention_heads: heads, activations by token pair (row-major lower
triangle); sae_latents: latents of a named SAE (by token); transcoder_latents: latents of a named per-layer
transcoder, reading mlp_in.L and writing to mlp_out.L (by token)."""


def dataset_dir(unit_type: str, name: str = "") -> str:
    """The dataset folder of a unit type inside a model folder: `sae_latents/<sae name>`, else the unit type."""
    return f"{unit_type}/{name}" if name else unit_type


def dataset_path(unit_type: str, layer: int, name: str = "") -> str:
    """`<dataset dir>/<layer>`: where one layer's records and summary.json live (manifest `path`)."""
    return f"{dataset_dir(unit_type, name)}/{layer}"


def node_dataset(node: str, layer: int, name: str = "") -> str | None:
    """The dataset path of a debugger node kind (mlp, head, latent) at a layer; None for nodes that are no unit."""
    kind = next((k for k in KINDS.values() if k.node == node), None)
    if kind is None:
        return None
    return dataset_path(kind.unit_type, layer, name if kind.dictionary else "")


def kind_of_option(option: str) -> UnitKind:
    """`--units` name (mlp, heads) → its kind (KeyError on anything else)."""
    return next(k for k in KINDS.values() if k.option and k.option == option)


@dataclass
class WriteDirection:
    """Where and what a unit writes: adding `strength · direction` at `hookpoint` steers with it."""

    hookpoint: str
    direction: Tensor  # [width of the hookpoint]


@dataclass
class UnitSet:
    """One layer's units of one kind, as a dataset folder holds them; dictionary kinds carry their dictionary."""

    unit_type: str
    layer: int
    name: str = ""
    """Dictionary name (its dataset folder) for dictionary kinds."""
    sae: BaseSAE | None = None
    hookpoint: str = ""
    """Where the dictionary reads (dictionary kinds)."""
    source: str = ""
    """Where the dictionary was loaded from (recorded in the manifest for the viewer)."""

    @property
    def path(self) -> str:
        return dataset_path(self.unit_type, self.layer, self.name)

    def n_units(self, hm: HookedModel) -> int:
        if self.unit_type == "mlp_neurons":
            return hm.d_mlp
        if self.unit_type == "attention_heads":
            return hm.n_heads
        assert self.sae is not None
        return self.sae.cfg.d_sae

    def group(self, hm: HookedModel) -> UnitGroup:
        """What these units read from a forward pass, as [U, B, L] activations."""
        if self.unit_type == "mlp_neurons":
            return mlp_group(hm, self.layer)
        if self.unit_type == "attention_heads":
            return head_group(hm, self.layer)
        assert self.sae is not None
        return sae_group(self.sae, self.hookpoint, self.name, self.source, unit_type=self.unit_type)

    def write_direction(self, hm: HookedModel, index: int) -> WriteDirection:
        """Unit `index`'s write direction: an SAE latent's decoder row at the SAE's hookpoint, an MLP neuron's unit
        vector at `mlp_post_act` (so the MLP writes its output row). IndexError out of range; ValueError for
        attention heads, which have no single direction."""
        import torch

        if KINDS[self.unit_type].dictionary:
            assert self.sae is not None
            if not 0 <= index < self.sae.cfg.d_sae:
                raise IndexError(f"latent {index}")
            where = self.hookpoint  # a transcoder latent reads mlp_in.L and writes to mlp_out.L
            if self.unit_type == "transcoder_latents":
                where = self.sae.cfg.metadata.get("hook_name_out") or f"mlp_out.{self.layer}"
            return WriteDirection(where, self.sae.W_dec[index].detach().float())
        if self.unit_type == "mlp_neurons":
            if not 0 <= index < hm.d_mlp:
                raise IndexError(f"neuron {index}")
            d = torch.zeros(hm.d_mlp)
            d[index] = 1.0
            return WriteDirection(f"mlp_post_act.{self.layer}", d)
        raise ValueError("attention heads have no single write direction to steer with")


def residual_write(hm: HookedModel, hookpoint: str, direction: Tensor) -> tuple[Tensor, int | None]:
    """Directions [..., width of `hookpoint`] → (their writes to the residual stream [..., d_model], the MLP layer
    whose post-feedforward norm they still pass, or None). A direction over MLP neurons is what the MLP then writes
    (its output rows); any other hookpoint's width is the residual stream's."""
    from saescope.models import parse_hookpoint

    kind, layer = parse_hookpoint(hookpoint)
    if kind == "mlp_post_act":
        return direction.float() @ hm.W_out_mlp(layer).float(), layer
    return direction.float(), None


@dataclass
class UnitGroup:
    unit_type: str
    """mlp_neurons, attention_heads, sae_latents or transcoder_latents."""
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
    import torch

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


def sae_group(sae: BaseSAE, hookpoint: str, name: str, source: str = "", unit_type: str = "sae_latents"
              ) -> UnitGroup:
    import torch

    from saescope.models import parse_hookpoint

    layer = parse_hookpoint(hookpoint)[1]

    def extract(c: dict[str, Tensor]) -> Tensor:
        x = c[hookpoint][:, 1:].float()  # [B, T, d]
        with torch.no_grad():
            f = sae.encode(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)
        return f.permute(2, 0, 1)
    return UnitGroup(unit_type, layer, sae.cfg.d_sae, [hookpoint], extract, name=name, source=source)
