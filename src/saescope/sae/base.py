"""Shared SAE base: parameters, encode/decode, the one loss path, folding, and SAELens-layout save/load.

    f  = act((x − b_dec·[apply_b_dec_to_input]) W_enc + b_enc)        W_enc [d, F], b_enc [F]
    x̂  = f W_dec + b_dec                                             W_dec [F, d_out], b_dec [d_out]

A transcoder (sae/transcoder.py) is the same with a target y ≠ x (d_out may differ from d, no b_dec on the input)
and an optional skip term x W_skip added to x̂; `training_forward(x, ctx, y)` takes that target.

Each architecture (one file each) defines `act` for inference (`encode`) and its training forward
(`training_forward`) that returns the reconstruction plus its extra loss terms; the reconstruction loss itself
(FVU: squared error over the batch's variance about its mean) is computed here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"


@dataclass
class SAEConfig:
    """What defines an SAE's shape and inference behaviour (saved as cfg.json, SAELens keys)."""

    architecture: str
    d_in: int
    d_sae: int
    k: int = 32
    """TopK / BatchTopK: latents per token (BatchTopK: on average)."""
    apply_b_dec_to_input: bool = True
    d_out: int = 0
    """Transcoders: output width (0 = d_in, as for every SAE)."""
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)
    """model_name, hook_name, context_size, ... (SAELens metadata block)."""
    matryoshka_widths: list[int] = field(default_factory=list)
    """Matryoshka: nested prefix widths ending at d_sae (empty = F/16, F/8, F/4, F/2, F). Training only: the saved
    inference SAE is a JumpReLU, so cfg.json does not carry it."""
    lista_iters: int = 0
    """LISTA encoder (Gregor & LeCun 2010): refinement steps after the linear encoder, each re-encoding the input
    plus a learned multiple `lista_step` of the residual the current code leaves (0 = the plain linear encoder;
    saved in cfg.json only when > 0, and such an SAE loads in saescope only)."""


@dataclass
class TrainContext:
    """Per-step information the trainer passes to `training_forward` (each architecture reads what it uses)."""

    dead: Tensor | None = None
    """bool [F]: latents that have not fired for the dead window (AuxK / pre-act loss target them)."""
    auxk_alpha: float = 1 / 32
    l1_coefficient: float = 0.0
    l0_coefficient: float = 0.0
    pre_act_coefficient: float = 0.0
    sparsity_scale: float = 1.0
    """Warm-up multiplier in [0, 1] for the sparsity coefficient."""
    encoder_dtype: torch.dtype = torch.float32
    """TopK family: dtype of the dense encoder matmul (bfloat16 where it is fast); selected values and every
    gradient stay float32."""
    k: int = 0
    """TopK family: latents kept per token in this step (0 = cfg.k); the trainer anneals it down to cfg.k."""


class TrainOutput(NamedTuple):
    x_hat: Tensor
    """Reconstruction [N, d]."""
    l0: Tensor
    """Mean number of active latents per token (scalar, no grad)."""
    fired: Tensor
    """Latents that fired in this batch, bool [F] (for dead-latent tracking)."""
    losses: dict[str, Tensor]
    """Extra loss terms, already weighted by their coefficients (summed with the reconstruction loss)."""


def fvu_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Σ(x − x̂)² / Σ(x − mean_batch x)²: 0 is perfect, 1 is as good as predicting the batch mean."""
    denom = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (x - x_hat).pow(2).sum() / denom


def tilted_fvu(x: Tensor, x_hat: Tensor, tilt: float) -> Tensor:
    """FVU whose gradient is tilted ERM's (Li et al. 2021, "Tilted Empirical Risk Minimization"): with per-sample
    losses ℓ_n = ‖x_n − x̂_n‖² [N], TERM minimises (1/t)·log mean_n exp(t·ℓ_n), whose gradient is
    Σ_n softmax(t·ℓ)_n ∇ℓ_n: badly reconstructed samples weigh more. Here each ℓ_n is weighted by
    N·softmax(t·ℓ)_n (detached), so the gradient is TERM's times N/Σ(x − x̄)², and t = 0 is exactly `fvu_loss`."""
    if tilt == 0:
        return fvu_loss(x, x_hat)
    denom = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    per = (x - x_hat).pow(2).sum(-1).flatten()  # [N] (a CLT's [N, L] rows flattened: one weight per row)
    w = torch.softmax(tilt * per.detach(), 0) * per.numel()  # [N], mean 1
    return (w * per).sum() / denom


class BaseSAE(nn.Module):
    """Parameters and the parts every architecture shares."""

    architecture: ClassVar[str] = ""
    extra_params: ClassVar[tuple[str, ...]] = ()
    unit_norm_decoder: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        self.d_out = cfg.d_out or d
        # W_enc is [d, F] as SAELens has it, but stored latent-major ([F, d] memory, a transposed view) so the
        # sparse backward writes whole contiguous rows per latent and needs no transposed copies.
        self.W_enc = nn.Parameter(torch.empty(n, d).T)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, self.d_out))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        if cfg.lista_iters > 0:
            if self.d_out != d or self.is_transcoder:
                raise SaescopeError("--encoder lista: only for SAEs (a transcoder's residual is not in its input space)")
            # η starts at 0: the SAE starts as the linear encoder and learns how much of the residual to re-encode
            self.lista_step = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Tied init: W_dec rows random unit directions, W_enc = W_decᵀ (sparsify, openai, dictionary_learning),
        # the encoder at nn.Linear's default row norm (1/√3) rather than 1: at equal budgets this reaches a lower
        # FVU (bench/train_bench.py: 0.711 vs 0.731 at 64 steps). A transcoder's encoder reads another space than
        # its decoder writes: its encoder rows are independent random directions at the same norm.
        with torch.no_grad():
            w = torch.randn(self.cfg.d_sae, self.d_out)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            if self.d_out == self.cfg.d_in and not self.is_transcoder:
                self.W_enc.copy_(w.T / 3**0.5)
            else:
                e = torch.randn(self.cfg.d_sae, self.cfg.d_in)
                self.W_enc.copy_((e / e.norm(dim=1, keepdim=True)).T / 3**0.5)

    is_transcoder: ClassVar[bool] = False

    @property
    def n_latents(self) -> int:
        """Latents in all (F; a cross-layer transcoder has n_layers · F)."""
        return self.cfg.d_sae

    def bias_out(self, x: Tensor) -> Tensor:
        """What x̂ adds to the decoded latents: b_dec [d_out] (a skip transcoder adds x W_skip, [N, d_out])."""
        return self.b_dec

    # ---- inference -----------------------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """[N, d] → [N, F] encoder pre-activations."""
        x_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        return x_in @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """[N, F] pre-activations → the code (the architecture's inference nonlinearity)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """[N, d] → dense latent activations [N, F]."""
        return self.lista_refine(x, self.pre_acts(x))

    def refined_pre_acts(self, x: Tensor) -> Tensor:
        """[N, d] → [N, F] the pre-activations the code is taken from: `pre_acts` for a linear encoder, those of
        the last LISTA step otherwise (what a latent's activation is a function of, e.g. for upstream tracing)."""
        return self.lista_refine(x, self.pre_acts(x), return_pre=True)

    def lista_refine(self, x: Tensor, pre: Tensor, return_pre: bool = False) -> Tensor:
        """The code of pre-activations `pre` [N, F], refined by the LISTA steps: each re-encodes x_in + η·r,
        r = x_in − f W_dec the residual of the current code f (x_in = x − b_dec), i.e. pre_t = pre + η·r W_enc;
        without LISTA (or η = 0) it is activation(pre). `return_pre`: the last pre_t instead of the code. The
        training forward computes the same with sparse kernels (topk.py)."""
        if self.cfg.lista_iters == 0:
            return pre if return_pre else self.activation(pre)
        f, pre_t = self.activation(pre), pre  # [N, F] each
        x_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        for _ in range(self.cfg.lista_iters):
            pre_t = pre + self.lista_step * ((x_in - f @ self.W_dec) @ self.W_enc)
            f = self.activation(pre_t)
        return pre_t if return_pre else f

    def decode(self, f: Tensor) -> Tensor:
        """[N, F] → [N, d]."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def training_forward(self, x: Tensor, ctx: TrainContext | None = None, y: Tensor | None = None) -> TrainOutput:
        """Training forward on a batch [N, d]: reconstruction of y [N, d_out] (default x) and this architecture's
        extra loss terms."""
        raise NotImplementedError

    def inference_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        """(architecture, tensors, extra cfg) as saved for inference (BatchTopK saves as JumpReLU)."""
        return self.architecture, {k: v.detach() for k, v in self.state_dict().items()}, {}

    # ---- decoder norms and folding ------------------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_unit_norm(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row, so the step keeps norms ≈ 1."""
        g, w = self.W_dec.grad, self.W_dec  # [F, d] each
        if g is not None:
            g.addcmul_(torch.linalg.vecdot(g, w).unsqueeze(1), w, value=-1.0)  # g -= (g·w) w, in one pass

    @torch.no_grad()
    def fold_input_scale(self, s: float | Tensor, s_out: float | Tensor | None = None) -> None:
        """The SAE was trained on s·x (a transcoder: to predict s_out·y); rewrite it to take raw x with identical
        latents and x̂ = x̂'/s_out (s_out defaults to s). s may be a scalar or a per-dimension [d_in] vector."""
        s_out = s if s_out is None else s_out
        # a per-dimension scale [d_in] (inputs weighted by dimension, `models/reads.py`) scales W_enc's rows
        self.W_enc *= s[:, None] if isinstance(s, Tensor) and s.dim() == 1 else s
        self.W_dec /= s_out
        self.b_dec /= s_out

    # ---- save / load (SAELens layout) ----------------------------------------------------------------------
    def save(self, path: str | Path, sparsity: Tensor | None = None) -> Path:
        from safetensors.torch import save_file

        from saescope.io import atomic_path, write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arch, tensors, extra = self.inference_state()
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        if sparsity is not None:
            with atomic_path(path / SPARSITY_FILE) as tmp:
                save_file({"sparsity": sparsity.contiguous().cpu()}, str(tmp))
        cfg = asdict(self.cfg)
        cfg.update(architecture=arch, normalize_activations="none", reshape_activations="none", device="cpu",
                   **extra)
        cfg.pop("matryoshka_widths", None)
        if not cfg.get("lista_iters"):
            cfg.pop("lista_iters", None)  # a plain SAE's cfg.json stays what SAELens writes
        if not cfg.get("d_out"):
            cfg.pop("d_out", None)
        if arch.split("_")[0] != "topk":  # topk, topk_transcoder, topk_skip_transcoder
            cfg.pop("k", None)
        write_json(path / CFG_FILE, cfg)
        return path


def check_weights(path: Path, tensors: dict[str, Tensor], cfg: SAEConfig, required: tuple[str, ...]) -> None:
    """One-line errors for missing keys or shapes that disagree with cfg.json."""
    d_out = cfg.d_out or cfg.d_in
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, d_out), "b_enc": (cfg.d_sae,),
              "b_dec": (d_out,), "threshold": (cfg.d_sae,), "W_skip": (cfg.d_in, d_out)}
    for key in required:
        if key not in tensors:
            raise SaescopeError(f"{path}: weights lack '{key}' (have {', '.join(sorted(tensors))})")
        if key in shapes and tuple(tensors[key].shape) != shapes[key]:
            raise SaescopeError(
                f"{path}: '{key}' has shape {tuple(tensors[key].shape)}, cfg.json (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}) implies {shapes[key]}"
            )


def read_cfg(path: Path) -> dict[str, Any]:
    from saescope.io import read_json

    cfg = read_json(path, "SAE config")
    if not isinstance(cfg, dict):
        raise SaescopeError(f"{path}: expected a JSON object")
    return cfg


def cfg_from_dict(d: dict[str, Any], path: Path) -> SAEConfig:
    known = {f for f in SAEConfig.__dataclass_fields__}
    for key in ("architecture", "d_in", "d_sae"):
        if key not in d:
            raise SaescopeError(f"{path}: cfg.json lacks field '{key}'")
    return SAEConfig(**{k: v for k, v in d.items() if k in known})  # unknown keys tolerated


