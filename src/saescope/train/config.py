"""`saescope train` / `eval` options and the training recipe (light: no torch, no model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saescope.config import ModelConfig
from saescope.corpus import CorpusConfig
from saescope.errors import SaescopeError

Arch = Literal["topk", "batchtopk", "matryoshka", "matryoshka_batchtopk", "jumprelu", "standard", "relu"]

LR_BATCH = 256
"""The batch size at which the TopK family's default Adam learning rate is 1e-3·√(2^14 / F)."""


@dataclass
class TrainerConfig:
    """The optimisation recipe (shared by `saescope train` and the Python API)."""

    arch: Arch = "topk"
    """topk, batchtopk, matryoshka (= matryoshka_batchtopk), jumprelu or standard (= relu: ReLU + L1)."""
    kind: Literal["sae", "transcoder", "skip_transcoder", "clt"] = "sae"
    """sae (reconstruct the hookpoint), transcoder (mlp_in.L → mlp_out.L, per layer), skip_transcoder (plus an affine
    skip x W_skip) or clt (cross-layer: layer l's latents write to the MLP outputs of l..L−1; topk, batchtopk or
    jumprelu)."""
    k: int = 32
    """Active latents per token (TopK; BatchTopK on average; JumpReLU: the L0 its thresholds start at)."""
    k_anneal_frac: float = 0.25
    """TopK family: fraction of steps over which the training k decays linearly from k_anneal_start·k to k (0.5
    with start 4 before issue 30: at 131k tokens that found half as many true features, docs/benchmarks.md)."""
    k_anneal_start: float = 2.0
    """Starting multiple of k for --k_anneal_frac (capped at F)."""
    width: int = 4096
    """Number of latents F."""
    tokens: int = 0
    """Training tokens (0 = --epochs passes over the training shards)."""
    epochs: float = 1.0
    """Store training with --tokens 0: passes over the training shards."""
    batch_size: int = 1024
    """Tokens per step (global, across data-parallel ranks)."""
    buffer_rows: int = 65536
    """Shuffle buffer size in rows (store training)."""
    holdout_shards: int = 1
    """Last store shards kept out of training, for the held-out evaluation."""
    optimizer: Literal["adam", "signum"] = "adam"
    """adam (fused Adam, LR warm-up and final decay) or signum (sign-SGD with schedule-free averaging, no decay
    needed; the saved SAE is the averaged iterate)."""
    lr: float = 0.0
    """Learning rate; 0 = adam 1e-3·√(2^14 / F)·√(batch / 256) for TopK-family SAEs (transcoders without the
    batch factor; 2e-4·√(2^14 / F) for jumprelu/standard), signum 5e-3·√(2^14 / F)."""
    momentum: float = 0.95
    """signum: schedule-free interpolation β between the SGD iterate and its running average (0 < β < 1)."""
    warmup_frac: float = 0.02
    """Fraction of steps with linear LR warm-up."""
    decay_frac: float = 0.2
    """Final fraction of steps with linear LR decay to 0 (adam; schedule-free signum ignores it)."""
    grad_clip: float = 1.0
    """Gradient-norm clip (0 = off)."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Initial decoder bias: the geometric median or mean of the first batch, or zeros."""
    normalize: bool = True
    """Scale inputs to E‖x‖ = √d during training (folded into the saved weights)."""
    skip_init: Literal["lstsq", "zeros"] = "lstsq"
    """Skip transcoders: W_skip and b_dec start as the ridge least-squares affine map of input to target on the
    first 4,096 training rows (`Trainer.init_batches`), so the latents learn what a linear map misses;
    zeros = W_skip from 0 (on gemma-3-270m the run's 96 steps then left 12 of 18 layers worse than that linear map
    alone, two at FVU > 1)."""
    input_weights: Literal["auto", "read_gain", "none"] = "auto"
    """read_gain: weight each input dimension by the gain of the norms that read the residual stream after the
    hookpoint (models/reads.py), so the reconstruction error counts where the later blocks look (folded into the
    saved weights); auto = read_gain for SAEs on resid_post/resid_pre where the model is at hand (`saescope run`),
    none elsewhere (an MLP or attention output is not read through those norms alone)."""
    auxk_alpha: float = 1 / 32
    """AuxK coefficient (TopK family)."""
    dead_tokens: int = 1_000_000
    """A latent is dead after this many tokens without firing (AuxK; the reported dead fraction uses the smaller of
    this and a quarter of the run, so that a run shorter than it does not always report 0 %)."""
    resample_tokens: int = -1
    """TopK family: restart latents that have not fired for this many tokens on the worst-reconstructed tokens'
    residuals (train/resample.py) until --resample_until; -1 = min(dead_tokens, max(training
    tokens / 16, 100·F/k)), 0 = off."""
    resample_until: float = 0.8
    """Fraction of the steps after which dead latents are no longer restarted."""
    resample_enc_scale: float = 0.5
    """Encoder norm of a restarted latent, as a multiple of the alive latents' mean (1 lets fresh latents take over
    top-k slots en masse where one direction dominates; train/resample.py)."""
    matryoshka_widths: str = ""
    """Matryoshka: comma-separated nested prefix widths below --width ('' = F/16, F/8, F/4, F/2)."""
    matryoshka_detach: bool = True
    """Matryoshka: an inner level's loss trains only its own group's latents (the levels inside it detached);
    only the full-width loss reaches every latent (the default since 2026-12-08: more true features found on
    SynthSAEBench and the regime generators; docs/benchmarks.md). --matryoshka_detach false: every level's loss
    reaches every latent inside it."""
    matryoshka_sort: Literal["index", "frequency"] = "index"
    """Matryoshka: fill the levels with latents in index order, or in order of firing frequency (re-ranked every
    step; the saved SAE is permuted into that order)."""
    encoder: Literal["linear", "lista"] = "linear"
    """TopK family SAEs: linear, or lista (after the linear code, --lista_iters steps re-encode the input plus a
    learned multiple of the residual: one more [d × F] product per step each; sae/base.py)."""
    lista_iters: int = 1
    """--encoder lista: refinement steps."""
    term_tilt: float = 0.0
    """Tilted ERM on the reconstruction loss (0 = the mean): samples weighted by softmax(t·‖x − x̂‖²) with x
    scaled to E‖x‖ = √d, so badly reconstructed samples weigh more (sae/base.py `tilted_fvu`)."""
    l1_coefficient: float = 0.08
    """ReLU+L1 sparsity coefficient (on the FVU-normalised loss)."""
    l0_coefficient: float = 0.1
    """JumpReLU L0 coefficient (on the FVU-normalised loss)."""
    pre_act_coefficient: float = 0.0
    """JumpReLU pre-act loss for dead latents (0 = off)."""
    sparsity_warmup_frac: float = 0.05
    """Fraction of steps over which the sparsity coefficient ramps from 0."""
    encoder_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """TopK family: dtype of the dense encoder matmul in training (auto = bfloat16 on GPUs, and on CPUs where a
    matmul probe at start-up measures it faster than float32; float32 elsewhere). Gradients stay float32."""
    e2e_contexts: int = 0
    """After training on the store, fine-tune the SAE spliced into the model on this many training contexts (2 per
    step) for KL(clean ‖ spliced) + FVU (train/finetune.py; Karvonen 2025); 0 = off."""
    e2e_lr_mult: float = 0.1
    """--e2e_contexts: the fine-tune's Adam LR as a multiple of the training LR (decayed linearly to 0)."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""
    seed: int = 0

    def __post_init__(self) -> None:
        from saescope.errors import SaescopeError
        from saescope.sae import TopKSAE, sae_class

        topk_family = issubclass(sae_class(self.arch), TopKSAE)
        if self.kind == "clt" and sae_class(self.arch).architecture not in ("topk", "batchtopk", "jumprelu"):
            raise SaescopeError(f"--kind clt: --arch {self.arch} is not supported; use topk, batchtopk or jumprelu")
        if self.width < 1 or self.k < 1 or self.batch_size < 1:
            raise SaescopeError("--width, --k and --batch_size must be positive")
        if self.epochs <= 0:
            raise SaescopeError(f"--epochs {self.epochs}: must be positive (passes over the store's training shards)")
        if topk_family and self.k > self.width:
            raise SaescopeError(f"--k {self.k} is larger than --width {self.width}")
        if self.encoder == "lista" and (not topk_family or self.kind != "sae"):
            raise SaescopeError(f"--encoder lista: only for --kind sae with a TopK-family --arch (topk, batchtopk, "
                                f"matryoshka), not --kind {self.kind} --arch {self.arch}; use --encoder linear")
        self._check_ranges()

    def _check_ranges(self) -> None:
        from saescope import validate
        from saescope.errors import SaescopeError

        for name in ("tokens", "holdout_shards", "lr", "grad_clip", "auxk_alpha", "l1_coefficient", "e2e_contexts",
                     "l0_coefficient", "pre_act_coefficient", "checkpoint_every"):
            validate.at_least(getattr(self, name), 0, f"--{name}")
        for name in ("k_anneal_frac", "warmup_frac", "decay_frac", "resample_until", "sparsity_warmup_frac",
                     "momentum"):
            validate.between(getattr(self, name), 0, 1, f"--{name}")
        if self.optimizer == "signum" and not 0 < self.momentum < 1:
            raise SaescopeError(f"--momentum {self.momentum}: signum needs 0 < momentum < 1 (its running average is "
                                f"recovered from the parameters through it); use e.g. 0.95")
        validate.at_least(self.k_anneal_start, 1, "--k_anneal_start")
        validate.at_least(self.buffer_rows, 1, "--buffer_rows")
        validate.at_least(self.lista_iters, 1, "--lista_iters")
        validate.at_least(self.term_tilt, 0, "--term_tilt")
        validate.at_least(self.dead_tokens, 1, "--dead_tokens")
        validate.at_least(self.resample_tokens, -1, "--resample_tokens", "-1 = automatic, 0 = off")
        validate.positive(self.resample_enc_scale, "--resample_enc_scale")
        validate.positive(self.e2e_lr_mult, "--e2e_lr_mult")
        if self.e2e_contexts and self.kind != "sae":
            raise SaescopeError(f"--e2e_contexts {self.e2e_contexts}: the spliced fine-tune is for SAEs (--kind sae), "
                                f"not --kind {self.kind}; set it to 0")
        if self.warmup_frac + self.decay_frac > 1:
            raise SaescopeError(f"--warmup_frac {self.warmup_frac} + --decay_frac {self.decay_frac}: more than all "
                                f"of the steps; make them sum to 1 or less")
        from saescope.sae.matryoshka import prefix_widths

        prefix_widths(self.matryoshka_widths, self.width)  # its grammar; widths ≥ F are dropped there

    def learning_rate(self) -> float:
        from saescope.sae import TopKSAE, sae_class

        if self.lr:
            return self.lr
        topk_family = issubclass(sae_class(self.arch), TopKSAE)  # the issue-13 recipe was measured on these
        if self.optimizer == "signum":
            return 5e-3 / math.sqrt(self.width / 2**14)  # sparsify's
        if not topk_family:
            return 2e-4 / math.sqrt(self.width / 2**14)
        # SAEs: Adam's square-root batch rule (Malladi et al. 2022), anchored where the run's 256-token batches sit
        # at the edge of stability on gemma-3-270m (2x there adds loss; 4x diverges at 1,024): docs/training.md.
        # Transcoders keep the rate they were measured at.
        batch = math.sqrt(self.batch_size / LR_BATCH) if self.kind == "sae" else 1.0
        return 1e-3 / math.sqrt(self.width / 2**14) * batch



@dataclass
class TrainConfig:
    """Train a sparse autoencoder on an activation store; writes an SAELens-layout SAE directory."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    store: str = "runs/default/store"
    """Activation store directory."""
    hookpoint: str = ""
    """Hookpoint inside the store (default: its first)."""
    layers: str = ""
    """--kind transcoder/skip_transcoder/clt: comma-separated layers ('' = every layer whose mlp_in/mlp_out pair is in
    the store); per-layer transcoders go to <out>/layer_L/, a cross-layer one to <out>/."""
    out: str = "runs/default/saes/resid_post"
    """Output SAE directory (cfg.json + sae_weights.safetensors + sparsity.safetensors + metrics.json)."""
    resume: bool = True
    """Continue from <out>/checkpoint if present."""
    device: str = "auto"
    """cpu, cuda, ... or auto."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.not_a_file(self.out, "--out")  # before training, not when the SAE is saved



@dataclass
class EvalConfig:
    """Evaluate a saved SAE on a store's held-out shards (and, with --spliced, inside the model)."""

    sae: str = "runs/default/saes/resid_post"
    """SAE directory or file (saescope/SAELens, sparsify, OpenAI .pt, Gemma Scope)."""
    store: str = "runs/default/store"
    """Activation store."""
    hookpoint: str = ""
    """Hookpoint (default: the SAE's hook_name, else the store's first)."""
    holdout_shards: int = 1
    """Evaluate on the last N shards (0 = all)."""
    spliced: bool = True
    """Also splice the SAE into the model: ΔCE (spliced − clean loss), KL, CE loss recovered."""
    contexts: int = 256
    """Most held-out contexts for the spliced metrics (fewer where the held-out shards hold fewer)."""
    spliced_from: str = "holdout"
    """Where the spliced contexts come from: holdout (the store's held-out shards) or corpus (the store's corpus,
    the contexts after the last one the store holds: no dictionary trained on the store saw them, and there are as
    many as --contexts asks, where the held-out shards hold a few dozen)."""
    target_se: float = 0.01
    """Stop splicing an SAE once its ΔCE's standard error (over contexts) is below this many nats (0 = use all
    --contexts)."""
    min_contexts: int = 32
    """Contexts every SAE is spliced on before --target_se may stop it (zero-ablation, for CE recovered, stops here)."""
    max_seconds: float = 0.0
    """Stop splicing (every SAE evaluated together) at the first batch past this many seconds once --min_contexts
    are done; the reported standard errors say what it cost (0 = no limit)."""
    model: str = ""
    """Model spec for spliced metrics (default: the store's model)."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.holdout_shards, 0, "--holdout_shards", "0 = all shards")
        validate.at_least(self.contexts, 1, "--contexts")
        validate.at_least(self.max_seconds, 0, "--max_seconds", "0 = no limit")
        validate.one_of(self.spliced_from, ("holdout", "corpus"), "--spliced_from")



@dataclass
class OnlineConfig:
    """Train one SAE per hookpoint straight from the model (no activation store): `saescope train --online`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hookpoints: str = ""
    """Hookpoints or globs (resid_post.*, mlp_out.3); default the middle layer's resid_post. With --kind transcoder,
    skip_transcoder or clt: the layers to cover, named by any of their hookpoints (mlp_in.*; '' = every layer)."""
    out: str = "runs/default/saes_online"
    """Output folder: one SAELens-layout SAE per hookpoint (<out>/<hookpoint>/)."""
    context_len: int = 128
    """Tokens per context, BOS included (BOS is not trained on)."""
    forward_contexts: int = 16
    """Contexts per model forward."""
    resume: bool = True
    """Continue from <out>/online_checkpoint if present."""

    def __post_init__(self) -> None:
        if self.context_len < 2 or self.forward_contexts < 1:
            raise SaescopeError("--context_len must be at least 2 and --forward_contexts positive")
        from saescope import validate

        validate.not_a_file(self.out, "--out")


@dataclass
class TrainedDictionary:
    """One dictionary a train run wrote (an SAE per hookpoint, a transcoder per layer, or one CLT)."""

    name: str
    """Its hookpoint (SAEs) or layer_<L> / clt (transcoders)."""
    out: Path
    """Its directory (cfg.json + weights, metrics.json, train_history.json)."""
    steps: int
    tokens: int
    tokens_per_s: float | None
    metrics: dict[str, Any]
    """Held-out metrics (store training: FVU, L0, dead fraction, ...), or online the last logged fvu, l0, dead."""
    heldout_is_training_data: bool = False
    """Store training with --holdout_shards 0: `metrics` are on training data."""


@dataclass
class TrainResult:
    """What `train` wrote; empty on a non-zero torchrun rank (rank 0 writes and reports everything)."""

    kind: str
    """sae, transcoder, skip_transcoder or clt."""
    dictionaries: list[TrainedDictionary]
    main_rank: bool = True


@dataclass
class TranscoderRunOptions:
    """The transcoders `saescope run` trains on every layer, online: one model forward per batch of contexts feeds
    every layer's transcoder (the recipe is TrainerConfig's; these fields are what the run chooses)."""

    transcoder_layers: str = "*"
    """Layers that get a transcoder: '*' (every layer), comma-separated numbers, or '' (none: no transcoder stage,
    and only the studied layer is collated)."""
    transcoder_kind: Literal["transcoder", "skip_transcoder"] = "skip_transcoder"
    """transcoder (mlp_in.L → mlp_out.L) or skip_transcoder (plus an affine skip x W_skip)."""
    transcoder_arch: Arch = "topk"
    """Architecture of every layer's transcoder."""
    transcoder_width: int = 1024
    """Latents per layer."""
    transcoder_k: int = 32
    """Active latents per token (TopK)."""
    transcoder_tokens: int = 16_384
    """Training tokens (each token trains every layer's transcoder). With the least-squares skip start, LR 1e-3 and
    no restarts, 16,384 tokens gave a mean FVU of 0.394 over gemma-3-270m's 18 layers where 24,576 with the SAE
    recipe (skip from 0, LR 4e-3, dead latents restarted) gave 0.548, in two thirds of the time
    (docs/transcoders.md)."""
    transcoder_lr: float = 1e-3
    """Adam LR of the run's transcoders: at 4e-3 (the F = 1,024 default) their loss jumped 10-50x within 20 steps."""
    transcoder_restarts: bool = False
    """Restart dead latents as SAEs do. Off: at the run's ~64 steps each restart set the loss back ~10x (a restarted
    latent writes a full-norm direction into an MLP output its encoder has not learnt); on gemma-3-270m the mean FVU
    is 0.394 without restarts and 0.582 with them, but the offline explanation score of the latents 0.300 against
    0.414 (fewer latents are in use without them: L0 16.7 of 32). docs/transcoders.md."""
    transcoder_batch_size: int = 256
    """Tokens per step."""
    transcoder_buffer_rows: int = 4096
    """Shuffle-buffer rows; a row holds every layer's MLP input and output (18 × 1,280 floats on gemma-3-270m:
    4,096 rows are 0.38 GB)."""
    transcoder_forward_contexts: int = 16
    """Contexts per model forward."""
    transcoder_eval_contexts: int = 32
    """Held-out store contexts for the replacement model's CE/KL/top-1 agreement and each layer's FVU."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.transcoder_lr, 0, "--transcoder_lr", "0 = the trainer's default")
        for name in ("transcoder_width", "transcoder_k", "transcoder_tokens", "transcoder_batch_size",
                     "transcoder_buffer_rows", "transcoder_forward_contexts", "transcoder_eval_contexts"):
            validate.at_least(getattr(self, name), 1, f"--{name}")
        self.layer_list(10_000)  # its grammar, now

    def layer_list(self, n_layers: int) -> list[int]:
        """The layers named by --transcoder_layers, for a model of `n_layers` layers."""
        spec = self.transcoder_layers.strip()
        if spec == "*":
            return list(range(n_layers))
        try:
            layers = sorted({int(s) for s in spec.split(",") if s.strip()})
        except ValueError:
            raise SaescopeError(f"--transcoder_layers {spec!r}: expected '*', comma-separated layer numbers or ''") \
                from None
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise SaescopeError(f"--transcoder_layers: layer(s) {bad} out of range (the model has {n_layers})")
        return layers

    def trainer(self, seed: int = 0) -> TrainerConfig:
        return TrainerConfig(kind=self.transcoder_kind, arch=self.transcoder_arch, width=self.transcoder_width,
                             k=self.transcoder_k, tokens=self.transcoder_tokens, batch_size=self.transcoder_batch_size,
                             buffer_rows=self.transcoder_buffer_rows, checkpoint_every=0, seed=seed,
                             lr=self.transcoder_lr, resample_tokens=-1 if self.transcoder_restarts else 0)
