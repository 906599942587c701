"""Transcoders: sparse replacements of an MLP, reading its input (mlp_in.L) and predicting its output (mlp_out.L).

Per-layer transcoder (PLT), any SAE architecture (TopK, BatchTopK, JumpReLU, Matryoshka, ReLU):

    f = act(x W_enc + b_enc)                    x [.., d_in] = mlp_in.L, W_enc [d_in, F], b_enc [F]
    ŷ = f W_dec + b_dec (+ x W_skip)            W_dec [F, d_out], b_dec [d_out], W_skip [d_in, d_out] (skip only)

Cross-layer transcoder (CLT; Anthropic's "Circuit Tracing", EleutherAI clt-training): the latents of layer l read
mlp_in.l and write to the MLP outputs of l, l+1, …, L−1, each with its own decoder:

    f_l = act_l(x_l W_enc[l] + b_enc[l])                      W_enc [L, d_in, F], b_enc [L, F]
    ŷ_m = Σ_{l ≤ m} f_l W_dec[l][:, m − l] + b_dec[m] (+ x_m W_skip[m])     W_dec[l] [F, L − l, d_out], b_dec [L, d_out]

A `TranscoderSet` holds one PLT per layer or one CLT behind one interface (`encode_layer`, `reconstruct`,
`replacement`), which the replacement model and attribution graphs use. Files: sae/transcoder_io.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.sae.base import BaseSAE, SAEConfig, TrainContext, TrainOutput
from saescope.sae.jumprelu import JumpReLUFn, StepFn

KINDS = ("transcoder", "skip_transcoder", "clt")
"""`saescope train --kind`: besides `sae`, what a dictionary over (mlp_in, mlp_out) pairs can be."""


class Transcoder(BaseSAE):
    """Mixin over an SAE architecture: no b_dec on the input, d_out may differ, optional W_skip [d_in, d_out]."""

    is_transcoder = True
    skip_connection: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig) -> None:
        if cfg.apply_b_dec_to_input:
            cfg.apply_b_dec_to_input = False  # b_dec lives in the output space
        super().__init__(cfg)
        if self.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, self.d_out))

    def bias_out(self, x: Tensor) -> Tensor:
        return self.b_dec + x @ self.W_skip if self.skip_connection else self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """[.., d_in] → ŷ [.., d_out], skip term included."""
        return self.encode(x) @ self.W_dec + self.bias_out(x)

    @torch.no_grad()
    def fold_input_scale(self, s: float | Tensor, s_out: float | Tensor | None = None) -> None:
        s_out = s if s_out is None else s_out
        super().fold_input_scale(s, s_out)
        if self.skip_connection:
            self.W_skip *= s / s_out

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        arch, tensors, extra = super().inference_state()
        base = arch.removesuffix("_skip_transcoder").removesuffix("_transcoder")
        return f"{base}_{'skip_' if self.skip_connection else ''}transcoder", tensors, extra


_CLASSES: dict[str, type[BaseSAE]] = {}


def transcoder_class(base: type[BaseSAE], skip: bool) -> type[BaseSAE]:
    """The transcoder (skip: skip transcoder) version of an SAE architecture, registered as
    `<architecture>_transcoder` / `<architecture>_skip_transcoder`."""
    name = f"{base.architecture}_{'skip_' if skip else ''}transcoder"
    if name not in _CLASSES:
        cls_name = base.__name__.removesuffix("SAE") + ("SkipTranscoder" if skip else "Transcoder")
        _CLASSES[name] = type(cls_name, (Transcoder, base), {"architecture": name, "skip_connection": skip})
    return _CLASSES[name]


# ---- cross-layer transcoder -----------------------------------------------------------------------------------

@dataclass
class CLTConfig:
    """What defines a cross-layer transcoder (saved as cfg.json)."""

    activation: str
    """topk, batchtopk (trained; saved as jumprelu) or jumprelu."""
    n_layers: int
    d_in: int
    d_sae: int
    """Latents per layer F."""
    d_out: int = 0
    """0 = d_in."""
    k: int = 32
    """TopK / BatchTopK: latents per token per layer."""
    skip: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return f"clt_{self.activation}"


class CrossLayerTranscoder(nn.Module):
    """f_l = act(x_l W_enc[l] + b_enc[l]);  ŷ_m = Σ_{l≤m} f_l W_dec[l][:, m−l] + b_dec[m] (+ x_m W_skip[m])."""

    is_transcoder = True
    unit_norm_decoder = False  # one latent has L − l decoders: their norms are free (as in Anthropic's CLTs)
    bandwidth = 0.05
    init_threshold = 0.01
    threshold_lr = 0.01

    def __init__(self, cfg: CLTConfig) -> None:
        super().__init__()
        if cfg.activation not in ("topk", "batchtopk", "jumprelu"):
            raise SaescopeError(f"cross-layer transcoder activation '{cfg.activation}': choose topk, batchtopk or "
                                "jumprelu")
        self.cfg = cfg
        L, d, n = cfg.n_layers, cfg.d_in, cfg.d_sae
        self.d_out = cfg.d_out or d
        enc = torch.randn(L, n, d)
        self.W_enc = nn.Parameter((enc / enc.norm(dim=-1, keepdim=True) / 3**0.5).transpose(1, 2).contiguous())  # [L,d,F]
        self.b_enc = nn.Parameter(torch.zeros(L, n))
        # Decoders start small and spread over the L − l layers each latent writes to (norm 1 in total).
        self.W_dec = nn.ParameterList()
        for l in range(L):
            w = torch.randn(n, L - l, self.d_out)
            self.W_dec.append(nn.Parameter(w / w.flatten(1).norm(dim=1)[:, None, None]))
        self.b_dec = nn.Parameter(torch.zeros(L, self.d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(L, d, self.d_out))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((L, n), self.init_threshold))
        elif cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(L))

    @property
    def n_latents(self) -> int:
        return self.cfg.n_layers * self.cfg.d_sae

    # ---- inference -----------------------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """x [.., L, d_in] → [.., L, F]."""
        return torch.einsum("...ld,ldf->...lf", x, self.W_enc) + self.b_enc

    def _act(self, z: Tensor, layer: int | None) -> Tensor:
        """Inference activation of pre-activations z [.., F] of `layer` (or [.., L, F] of every layer if None)."""
        a = self.cfg.activation
        if a == "topk":
            vals, idx = z.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(z).scatter_(-1, idx, vals.relu())
        theta = self.threshold if layer is None else self.threshold[layer]
        if a == "batchtopk":
            theta = theta[..., None] if layer is None else theta
            z = z.relu()
        return z * (z > theta.clamp_min(0.0))

    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """Layer `layer`'s latents from its MLP input: [.., d_in] → [.., F]."""
        return self._act(x @ self.W_enc[layer] + self.b_enc[layer], layer)

    def encode(self, x: Tensor) -> Tensor:
        """[.., L, d_in] → [.., L, F]."""
        return self._act(self.pre_acts(x), None)

    def decode_layer(self, layer: int, acts: list[Tensor], x: Tensor | None = None) -> Tensor:
        """ŷ of layer m = `layer` from the latents of layers 0..m (acts[l] [.., F]) and x = mlp_in.m (skip)."""
        out = self.b_dec[layer]
        for l in range(layer + 1):
            out = out + acts[l] @ self.W_dec[l][:, layer - l]
        if self.cfg.skip:
            if x is None:
                raise ValueError("a skip CLT needs the layer's input to decode")
            out = out + x @ self.W_skip[layer]
        return out

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """f [.., L, F] (x [.., L, d_in] for the skip term) → ŷ [.., L, d_out]."""
        L = self.cfg.n_layers
        out = f.new_zeros(*f.shape[:-1], self.d_out) + self.b_dec
        for l in range(L):
            out[..., l:, :] += torch.einsum("...f,fmd->...md", f[..., l, :], self.W_dec[l])
        if self.cfg.skip:
            if x is None:
                raise ValueError("a skip CLT needs its inputs to decode")
            out = out + torch.einsum("...ld,lde->...le", x, self.W_skip)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    # ---- training ------------------------------------------------------------------------------------------
    def training_forward(self, x: Tensor, ctx: TrainContext | None = None, y: Tensor | None = None) -> TrainOutput:
        """x [N, L, d_in], y [N, L, d_out]: dense (the CLT is trained at small widths on CPU)."""
        ctx = ctx or TrainContext()
        N = x.shape[0]
        z = self.pre_acts(x)  # [N, L, F]
        a, losses = self.cfg.activation, {}
        if a == "topk":
            k = ctx.k or self.cfg.k
            idx = z.topk(k, dim=-1).indices
            f = torch.zeros_like(z).scatter(-1, idx, z.gather(-1, idx).relu())
        elif a == "batchtopk":
            zr = z.relu()  # the k·N largest of each layer over the batch
            k = ctx.k or self.cfg.k
            flat = zr.transpose(0, 1).flatten(1)  # [L, N·F]
            kth = flat.topk(min(k * N, flat.shape[1]), dim=1).values[:, -1]  # [L]
            f = zr * (zr >= kth[None, :, None]) * (zr > 0)
            with torch.no_grad():
                t = self.threshold
                self.threshold.copy_(torch.where(t == 0, kth, (1 - self.threshold_lr) * t + self.threshold_lr * kth))
        else:
            theta = self.threshold.clamp_min(0.0)  # [L, F]
            f = JumpReLUFn.apply(z.flatten(1), theta.flatten(), self.bandwidth).view_as(z)
            lam = ctx.l0_coefficient * ctx.sparsity_scale
            losses["l0_loss"] = lam * StepFn.apply(z.flatten(1), theta.flatten(), self.bandwidth).sum(1).mean()
        y_hat = self.decode(f, x)
        active = f.detach() != 0
        return TrainOutput(y_hat, active.sum((1, 2)).float().mean(), active.any(0).flatten(), losses)

    @torch.no_grad()
    def load_threshold(self, threshold: Tensor) -> None:
        self.threshold.copy_(threshold.expand_as(self.threshold))

    @torch.no_grad()
    def fold_input_scale(self, s: Tensor, s_out: Tensor | None = None) -> None:
        """Trained on s[l]·x_l to predict s_out[m]·y_m (s, s_out [L, 1] or scalars); rewrite for raw inputs."""
        L = self.cfg.n_layers
        s_in = torch.as_tensor(s, dtype=torch.float32).reshape(-1).expand(L)
        s_o = torch.as_tensor(s if s_out is None else s_out, dtype=torch.float32).reshape(-1).expand(L)
        self.W_enc *= s_in[:, None, None]
        for l in range(L):
            self.W_dec[l] /= s_o[l:, None]
        self.b_dec /= s_o[:, None]
        if self.cfg.skip:
            self.W_skip *= (s_in / s_o)[:, None, None]

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        t = {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(), "b_dec": self.b_dec.detach()}
        t.update({f"W_dec_{l}": w.detach() for l, w in enumerate(self.W_dec)})
        if self.cfg.skip:
            t["W_skip"] = self.W_skip.detach()
        act = self.cfg.activation
        if act == "jumprelu":
            t["threshold"] = self.threshold.detach()
        elif act == "batchtopk":  # saved as JumpReLU with each layer's learned global threshold
            t["threshold"] = self.threshold.detach()[:, None].expand(-1, self.cfg.d_sae).clone()
            act = "jumprelu"
        return f"clt_{act}", t, {}

    def save(self, path: Any, sparsity: Tensor | None = None) -> Any:
        """saescope's layout (sae/transcoder_io.py): cfg.json + sae_weights.safetensors (+ sparsity [L, F])."""
        from saescope.sae.transcoder_io import save_transcoders

        return save_transcoders(TranscoderSet(clt=self), path, sparsity=sparsity)


class CLTLayer(nn.Module):
    """One layer's latents of a cross-layer transcoder, seen as a per-layer dictionary (what collation, the
    viewer's probe and steering ask of a unit set): `encode` reads mlp_in.L; `W_dec` [F, d_out] is where each
    latent writes into mlp_out.L itself (its writes to later layers, W_dec[L][:, 1:], are left out of steering)."""

    is_transcoder = True

    def __init__(self, clt: CrossLayerTranscoder, layer: int) -> None:
        super().__init__()
        self.clt, self.layer = clt, layer
        self.cfg = SAEConfig(f"{clt.cfg.architecture}_layer", clt.cfg.d_in, clt.cfg.d_sae, k=clt.cfg.k,
                             apply_b_dec_to_input=False, d_out=clt.d_out,
                             metadata={**clt.cfg.metadata, "hook_name": f"mlp_in.{layer}",
                                       "hook_name_out": f"mlp_out.{layer}"})

    @property
    def W_dec(self) -> Tensor:
        return self.clt.W_dec[self.layer][:, 0]  # [F, d_out]

    def encode(self, x: Tensor) -> Tensor:
        """[.., d_in] → [.., F]."""
        return self.clt.encode_layer(self.layer, x)


# ---- a transcoder on every layer --------------------------------------------------------------------------

class TranscoderSet(nn.Module):
    """Transcoders for a model's MLPs: one per-layer transcoder per layer (`plts`) or one cross-layer transcoder.

    `layers`: the layers covered (a CLT covers 0..L−1). Inputs are mlp_in.L, outputs mlp_out.L (hookpoints.py)."""

    def __init__(self, plts: dict[int, BaseSAE] | None = None, clt: CrossLayerTranscoder | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        if (plts is None) == (clt is None):
            raise ValueError("a TranscoderSet holds per-layer transcoders or one cross-layer transcoder")
        self.plts = nn.ModuleDict({str(l): t for l, t in sorted((plts or {}).items())})
        self.clt = clt
        self.layers: list[int] = sorted(int(l) for l in self.plts) if clt is None else list(range(clt.cfg.n_layers))
        self.metadata = metadata or {}

    @property
    def is_clt(self) -> bool:
        return self.clt is not None

    @property
    def d_sae(self) -> int:
        return self.clt.cfg.d_sae if self.clt is not None else next(iter(self.plts.values())).cfg.d_sae

    def __getitem__(self, layer: int) -> BaseSAE:
        return self.plts[str(layer)]

    def layer_dictionary(self, layer: int) -> BaseSAE | CLTLayer:
        """Layer `layer`'s latents as one dictionary: its per-layer transcoder, or the CLT's layer (CLTLayer)."""
        return CLTLayer(self.clt, layer) if self.clt is not None else self[layer]

    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """Latents of `layer` from mlp_in.layer: [.., d_in] → [.., F]."""
        if self.clt is not None:
            return self.clt.encode_layer(layer, x)
        return self[layer].encode(x)

    def decoder_rows(self, layer: int) -> Tensor:
        """Where layer `layer`'s latents write: [F, d_out] (PLT) or [F, L − layer, d_out] (CLT; to layers ≥ it)."""
        return self.clt.W_dec[layer] if self.clt is not None else self[layer].W_dec

    def reconstruct(self, inputs: dict[int, Tensor] | Tensor) -> dict[int, Tensor] | Tensor:
        """{layer: mlp_in [.., d_in]} → {layer: predicted mlp_out [.., d_out]} for every covered layer; a stacked
        tensor [len(layers), .., d_in] (in `layers` order) → [len(layers), .., d_out]."""
        if isinstance(inputs, Tensor):
            out = self.reconstruct({l: inputs[i] for i, l in enumerate(self.layers)})
            assert isinstance(out, dict)
            return torch.stack([out[l] for l in self.layers])
        missing = [l for l in self.layers if l not in inputs]
        if missing:
            raise ValueError(f"reconstruct needs the MLP inputs of layers {missing}")
        if self.clt is not None:
            acts = [self.clt.encode_layer(l, inputs[l]) for l in self.layers]
            return {m: self.clt.decode_layer(m, acts, inputs[m]) for m in self.layers}
        return {l: self[l](inputs[l]) for l in self.layers}

    @contextlib.contextmanager
    def replacement(self, hm: Any, errors: dict[int, Tensor] | None = None, keep: Tensor | None = None
                    ) -> Iterator[None]:
        """Inside, every covered MLP of `hm` writes its transcoder's prediction (the replacement model), plus
        `errors[layer]` [B, T, d] where given (the error terms); positions where `keep` [B, T] is True keep the
        MLP's own output (BOS, whose MLP output is a constant the transcoders were not trained on)."""
        acts: list[Tensor] = []

        def fn(layer: int, x_in: Tensor, out: Tensor) -> Tensor:
            x = x_in.float()
            if self.clt is not None:
                if layer == 0:
                    acts.clear()
                acts.append(self.clt.encode_layer(layer, x))
                y = self.clt.decode_layer(layer, acts, x)
            else:
                y = self[layer](x)
            if errors is not None and layer in errors:
                y = y + errors[layer]
            y = y.to(out.dtype)
            return y if keep is None else torch.where(keep[..., None], out, y)

        with hm.replace_mlps(fn, self.layers):
            yield
