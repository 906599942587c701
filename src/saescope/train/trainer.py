"""SAE training loop: any iterator of activation batches in, an SAE directory (SAELens layout) out.

Recipe (each part switchable in TrainConfig): tied init; b_dec from the geometric median (or mean); inputs scaled
so E‖x‖ = √d (folded into the weights at save); Adam with LR 1e-3·√(2^14/F), linear warm-up and final linear
decay (or schedule-free sign-SGD, `--optimizer signum`); gradient clipping; sparsity-coefficient warm-up; for the
TopK family: k annealed from 2k to k over the first quarter, dead latents restarted on the worst-reconstructed
residuals, AuxK, unit-norm decoder with the parallel gradient removed. Dead latents are tracked in tokens since
last fire. How a dictionary is built and initialised: `initialise.py`. Why this recipe: bench/train_bench.py and
README ("SAE training").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope import distributed as dist_utils
from saescope.sae import BaseSAE, TrainContext, fvu_loss
from saescope.sae.base import tilted_fvu
from saescope.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from saescope.train.config import TrainerConfig
from saescope.train.initialise import (
    INIT_ROWS,
    broadcast_scale,
    build_dictionary,
    fit_skip,
    geometric_median,
    norm_scale,
    peek,
    split_rows,
)
from saescope.train.memory import retain_freed_memory
from saescope.train.optim import ScheduleFreeSignSGD, clip_grad_norm, contiguous_alias, make_optimizer
from saescope.train.precision import resolve_encoder_dtype
from saescope.train.resample import resample_dead

log = logging.getLogger(__name__)


def k_schedule(cfg: TrainerConfig, frac: float) -> int:
    """The training k at fraction `frac` of the run (0 = the SAE's k): with --k_anneal_frac > 0 it decreases
    linearly from k_anneal_start·k (at most F) to k over that fraction of the steps, then stays at k. The
    LISTA-Matryoshka recipe's "k from 60 down to 25" is k_anneal_start 2.4 with k_anneal_frac 1."""
    if cfg.k_anneal_frac <= 0:
        return 0
    k0 = min(cfg.width, round(cfg.k * cfg.k_anneal_start))
    return max(cfg.k, round(k0 - (k0 - cfg.k) * min(1.0, frac / cfg.k_anneal_frac)))


def lr_lambda(total: int, warmup: int, decay: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay and step >= total - decay:
            return max(0.0, (total - step) / decay)
        return 1.0
    return f


@dataclass
class FitResult:
    steps: int
    """Optimizer steps taken in total (resumed runs included)."""
    tokens: int
    """Training tokens seen in total, across ranks."""
    history: list[dict[str, float]]
    """Logged step statistics (every 10 steps): loss, fvu, l0, dead, tokens_per_s, ..."""


class Trainer:
    """Owns the SAE, optimizer, schedule and dead-latent counters; `fit` consumes batches."""

    def __init__(self, cfg: TrainerConfig, d_in: int, total_steps: int, metadata: dict[str, Any] | None = None,
                 device: str = "cpu", out: Path | None = None, d_out: int = 0, n_layers: int = 1,
                 dim_weights: Tensor | None = None) -> None:
        """A transcoder maps d_in → d_out (0 = d_in); a CLT spans `n_layers` layers (batches [N, L·(d_in + d_out)]).
        dim_weights [d_in] (an SAE only): train on x ⊙ w, so the reconstruction error of dimension i counts w_i²
        times (`models/reads.py`); folded into the saved weights like the norm scale."""
        self.dim_weights = None if dim_weights is None else dim_weights.float().to(device)
        self.cfg, self.total_steps, self.out, self.device = cfg, total_steps, out, device
        if str(device) == "cpu":
            retain_freed_memory()
        torch.manual_seed(cfg.seed)
        self.d_in, self.d_out, self.n_layers = d_in, d_out or d_in, n_layers if cfg.kind == "clt" else 1
        self.sae = build_dictionary(cfg, d_in, d_out, n_layers, metadata or {}).to(device)
        self.encoder_dtype = resolve_encoder_dtype(cfg.encoder_dtype, device)
        # The optimizer updates contiguous aliases of the parameters: fused Adam on the latent-major (transposed)
        # W_enc would otherwise copy it to and from a contiguous buffer every step (5x slower on CPU).
        self.params = list(self.sae.parameters())
        self.opt_params = [contiguous_alias(p) for p in self.params]
        self.opt = make_optimizer(cfg, self.opt_params)
        self.aliases = {n: a for (n, _), a in zip(self.sae.named_parameters(), self.opt_params)}
        self.resampled = 0
        tokens = total_steps * cfg.batch_size
        # auto: a sixteenth of the run, but at least ~100 mean firing intervals (F/k tokens) of a latent. 400 left a
        # fifth of the gemma attn_out SAE's latents firing in < 20 of 3,076 excerpts (100: 4 %, same FVU) and found
        # no more true features on the synthetic bench (bench/train_bench.py: 9.9 vs 9.7 % at F=4096, 4.8 vs 4.7 %
        # at F=16384, 262k tokens)
        auto = min(cfg.dead_tokens, max(tokens // 16, 100 * cfg.width // cfg.k))
        self.resample_window = auto if cfg.resample_tokens < 0 else cfg.resample_tokens
        self.dead_window = max(cfg.batch_size, min(cfg.dead_tokens, tokens // 4))  # for the reported dead fraction
        warm = int(cfg.warmup_frac * total_steps)
        decay = int(cfg.decay_frac * total_steps) if cfg.optimizer == "adam" else 0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(total_steps, max(warm, 1), decay))
        self.step, self.tokens, self.scale, self.initialised = 0, 0, 1.0, False
        self.scale_out: float | Tensor = 1.0
        self.since_fired = torch.zeros(self.sae.n_latents, dtype=torch.long, device=device)
        self.history: list[dict[str, float]] = []

    # ---- init from the first batch -------------------------------------------------------------------------
    @property
    def init_batches(self) -> int:
        """Batches `_initialise` reads (they are then trained on as usual): enough for INIT_ROWS rows where a skip
        transcoder fits its skip by least squares (640 inputs on gemma-3-270m), one otherwise."""
        if hasattr(self.sae, "W_skip") and self.cfg.skip_init == "lstsq":
            return -(-INIT_ROWS // self.cfg.batch_size)
        return 1

    def split(self, b: Tensor) -> tuple[Tensor, Tensor | None]:
        """A batch's rows → (input, target): an SAE's target is its input (None); a transcoder's rows are
        [mlp_in | mlp_out], a CLT's [mlp_in.0 … mlp_in.L−1 | mlp_out.0 … mlp_out.L−1] → [N, L, d] each."""
        return split_rows(b, self.cfg.kind, self.n_layers, self.d_in, self.d_out)

    @torch.no_grad()
    def _initialise(self, x: Tensor, y: Tensor | None = None) -> None:
        y = x if y is None else y
        if self.dim_weights is not None:  # an SAE: y is x
            w = self.dim_weights
            self.scale = w * (norm_scale(x * w) if self.cfg.normalize else 1.0)  # [d]
            self.scale_out = self.scale.clone()  # a checkpoint cannot save one tensor twice
        elif self.cfg.normalize:
            self.scale, self.scale_out = norm_scale(x), norm_scale(y)
        xs, ys = x * self.scale, y * self.scale_out
        if self.cfg.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(ys) if ys.dim() == 2 else
                                 torch.stack([geometric_median(ys[:, l]) for l in range(ys.shape[1])]))
        elif self.cfg.b_dec_init == "mean":
            self.sae.b_dec.copy_(ys.mean(0))
        if hasattr(self.sae, "W_skip") and self.cfg.skip_init == "lstsq":
            fit_skip(self.sae, xs, ys)
        if self.cfg.arch == "jumprelu":
            # One threshold for all latents at which the first batch's L0 is k. From the fixed 0.01 start, θ moves by
            # about one learning rate per Adam step whatever the L0 coefficient, so short runs never got sparse
            # (SynthSAEBench-16k, 1,024 steps: L0 ≈ 950 for λ from 0.1 to 410); λ then trades L0 against FVU.
            z = self.sae.pre_acts(xs).flatten()  # [N·F]
            theta = z.topk(min(z.numel(), self.cfg.k * xs.shape[0])).values[-1]
            self.sae.load_threshold(torch.full_like(self.sae.threshold, max(float(theta), self.sae.init_threshold)))
        self.scale, self.scale_out = broadcast_scale(self.scale), broadcast_scale(self.scale_out)
        dist_utils.broadcast_params(self.sae)
        self.initialised = True

    # ---- one step ------------------------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor | None = None) -> dict[str, float]:
        """One step on inputs x [N, d] (CLT [N, L, d]) and targets y (None: an SAE, y = x)."""
        cfg, sae = self.cfg, self.sae
        x = x.to(self.device, torch.float32) * self.scale
        y = x if y is None else y.to(self.device, torch.float32) * self.scale_out
        frac = self.step / max(self.total_steps, 1)
        ctx = TrainContext(
            dead=self.since_fired >= cfg.dead_tokens, auxk_alpha=cfg.auxk_alpha, l1_coefficient=cfg.l1_coefficient,
            l0_coefficient=cfg.l0_coefficient, pre_act_coefficient=cfg.pre_act_coefficient,
            sparsity_scale=min(1.0, frac / cfg.sparsity_warmup_frac) if cfg.sparsity_warmup_frac > 0 else 1.0,
            encoder_dtype=self.encoder_dtype,
        )
        ctx.k = k_schedule(cfg, frac)
        out = sae.training_forward(x, ctx, y)
        fvu = fvu_loss(y, out.x_hat)
        rec = tilted_fvu(y, out.x_hat, cfg.term_tilt) if cfg.term_tilt else fvu
        loss = rec + sum(out.losses.values(), torch.zeros(()))
        sae.zero_grad(set_to_none=True)
        loss.backward()
        dist_utils.average_gradients(sae)
        if sae.unit_norm_decoder:
            sae.remove_parallel_grad()
        if cfg.grad_clip > 0:
            clip_grad_norm(self.params, cfg.grad_clip)
        for p, a in zip(self.params, self.opt_params):
            if a is not p:
                a.grad = None if p.grad is None else p.grad.T
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # free the gradients now: their memory is reused by the next step
        self.sched.step()
        if sae.unit_norm_decoder:
            sae.set_decoder_unit_norm()  # signum: this carries into the running average (train/optim.py)
        dist_utils.average_buffers(sae)
        fired = dist_utils.any_across_ranks(out.fired)
        n_global = x.shape[0] * dist_utils.world_size()
        self.since_fired += n_global
        self.since_fired[fired] = 0
        if self.resample_window and sae.unit_norm_decoder and frac < cfg.resample_until:
            stale = self.since_fired >= self.resample_window
            if bool(stale.any()):
                restarted = resample_dead(sae, self.opt, self.aliases, stale, y, out.x_hat.detach(),
                                          enc_scale=cfg.resample_enc_scale, x_in=x if sae.is_transcoder else None)
                self.since_fired[restarted] = 0
                self.resampled += len(restarted)
        self.step += 1
        self.tokens += n_global
        stats = {"loss": float(loss.detach()), "fvu": float(fvu.detach()), "l0": float(out.l0),
                 "dead": self.dead_fraction(), "resampled": self.resampled,
                 **{k: float(v.detach()) for k, v in out.losses.items()}}
        return stats

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        opt_t, groups = optimizer_tensors(self.opt)
        tensors.update(opt_t)
        tensors["since_fired"] = self.since_fired
        tensors["rng"] = torch.get_rng_state()
        tensors["scale_in"], tensors["scale_out"] = _as_tensor(self.scale), _as_tensor(self.scale_out)
        meta = {"step": self.step, "tokens": self.tokens, "initialised": self.initialised,
                "param_groups": groups, "sched": self.sched.state_dict(), "config": asdict(self.cfg),
                "total_steps": self.total_steps, "history": self.history[-200:], "resampled": self.resampled}
        return tensors, meta

    def save_checkpoint(self) -> None:
        if self.out is not None and dist_utils.is_main():
            save_checkpoint(self.out, *self.state())

    def try_resume(self) -> bool:
        if self.out is None:
            return False
        path = find_checkpoint(self.out)
        if path is None:
            return False
        tensors, meta = load_checkpoint(path)
        self.load_state(tensors, meta, str(path))
        return True

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any], where: str) -> None:
        """Restore what `state()` returned (refused, naming `where`, if the recipe or the step count differ)."""
        from saescope.errors import SaescopeError

        path = where
        saved = {k: v for k, v in meta["config"].items() if k != "checkpoint_every"}
        now = {k: v for k, v in asdict(self.cfg).items() if k != "checkpoint_every"}
        if saved != now or meta["total_steps"] != self.total_steps:
            diff = sorted(k for k in now if saved.get(k) != now[k]) or ["tokens/steps"]
            raise SaescopeError(
                f"{path}: checkpoint was made with different {', '.join(diff)}; use another --out or --no_resume"
            )
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        restore_optimizer(self.opt, tensors, meta["param_groups"])
        self.sched.load_state_dict(meta["sched"])
        self.since_fired.copy_(tensors["since_fired"])
        torch.set_rng_state(tensors["rng"])
        self.step, self.tokens = meta["step"], meta["tokens"]
        self.scale, self.scale_out = _scalar(tensors["scale_in"]), _scalar(tensors["scale_out"])
        self.initialised, self.history = meta["initialised"], meta.get("history", [])
        self.resampled = meta.get("resampled", 0)
        log.info("resumed from %s at step %d (%d tokens)", path, self.step, self.tokens)

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self, batches: Iterator[Tensor], progress: bool = True) -> FitResult:
        """Consume batches until `total_steps`; the iterator must already be positioned at `self.step`."""
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, unit="step",
                   disable=not (progress and dist_utils.is_main()), desc=f"train {self.cfg.arch} F={self.cfg.width}")
        t0, tok0 = time.perf_counter(), self.tokens
        if not self.initialised:
            head, batches = peek(iter(batches), self.init_batches)
            if head is not None:
                self._initialise(*self.split(dist_utils.local_slice(head)))
        for b in batches:
            if self.step >= self.total_steps:
                break
            x, y = self.split(dist_utils.local_slice(b))
            if not self.initialised:
                self._initialise(x, y)
            stats = self.train_step(x, y)
            if not math.isfinite(stats["loss"]):
                from saescope.errors import SaescopeError

                raise SaescopeError(f"step {self.step}: loss is {stats['loss']}; lower --lr or check the inputs")
            if self.step % 10 == 0 or self.step == self.total_steps:
                tps = (self.tokens - tok0) / max(time.perf_counter() - t0, 1e-9)
                stats["tokens_per_s"] = tps
                self.history.append({"step": self.step, **stats})
                bar.set_postfix(loss=f"{stats['loss']:.3f}", fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}",
                                dead=f"{stats['dead']:.1%}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        return FitResult(self.step, self.tokens, self.history)

    def dead_fraction(self) -> float:
        """Latents that did not fire in the last `dead_window` tokens (the dead fraction SAELens reports)."""
        return float((self.since_fired >= self.dead_window).float().mean())

    def finalize(self, calibration: Tensor | None = None) -> BaseSAE:
        """Averaged weights (signum), input scale folded into the weights: the returned SAE takes raw activations.
        calibration [N, d]: raw training rows on which a BatchTopK SAE's inference threshold is set to give L0 = k
        (`BatchTopKSAE.calibrate_threshold`)."""
        if isinstance(self.opt, ScheduleFreeSignSGD):
            self.opt.averaged()
            if self.sae.unit_norm_decoder:
                self.sae.set_decoder_unit_norm()
        if getattr(self.sae, "sort_by_frequency", False):
            self.sae.sorted_by_frequency()  # the saved prefixes are the levels trained
        self.sae.fold_input_scale(self.scale, self.scale_out)
        self.scale = self.scale_out = 1.0
        if calibration is not None and hasattr(self.sae, "calibrate_threshold"):
            before = float(self.sae.threshold)
            theta = self.sae.calibrate_threshold(calibration.to(self.device, torch.float32), self.cfg.k)
            log.info("inference threshold set to %.4g for L0 = %d on %d training rows (running estimate %.4g)",
                     theta, self.cfg.k, len(calibration), before)
        return self.sae


def _as_tensor(s: float | Tensor) -> Tensor:
    return s if isinstance(s, Tensor) else torch.tensor(s, dtype=torch.float64)  # a float round-trips exactly


def _scalar(t: Tensor) -> float | Tensor:
    return float(t) if t.dim() == 0 else t
