"""The trainers SynthSAEBench compares, each on the same cached samples; each returns an SAE SAELens can score.

- saescope-{topk,batchtopk,matryoshka,jumprelu}: `saescope.train.trainer.Trainer` with saescope's default recipe
  (`TrainerConfig()` defaults: LR 2e-4·√(2^14/F), warm-up, final decay, AuxK, geometric-median b_dec, input
  normalisation folded at save); k = the target L0. JumpReLU has no k: its L0 coefficient is calibrated to the target
  L0 by a few short runs (`calibrate_jumprelu`), then the full run uses it.
- saelens-{batchtopk,matryoshka}: SAELens' own `SyntheticSAERunner` with the benchmark's settings (LR 3e-4, constant
  schedule; Matryoshka inner widths 128, 512, 2048 as in synth-sae-bench-experiments), its data generator replaced by
  a replay of the cached stream. `saelens-batchtopk-eqlr`: the same runner at saescope's learning rate for the width
  (equalised settings: the benchmark's LR 3e-4 is set for 200M samples).
- saescope-lista-matryoshka: the LISTA-Matryoshka recipe with its published hyper-parameters, re-implemented with
  saescope's trainer options (benchlib/recipes.py); `-no-<ingredient>`: the same with one ingredient removed.
- saescope-ARCH+ING[+ING...]: saescope's default recipe for ARCH with the named LISTA-Matryoshka ingredients
  switched on (lista, kdecay, detach, term, freqsort; benchlib/recipes.py), or off (nodetach, ...), at saescope's
  own LR and schedule: e.g. saescope-topk+lista, saescope-matryoshka+nodetach (the default before 2026-12-08).
- sparsify-topk: sparsify's `SparseCoder` under sparsify's default optimiser (schedule-free SignSGD, momentum 0.95,
  LR 5e-3·√(2^14/F), b_dec = first-batch mean, unit-norm decoder, FVU loss, no AuxK), the loop of
  `sparsify.Trainer.fit` without the model hooks; scored at the schedule-free averaged weights.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from pathlib import Path
from typing import Any

import torch

TRAINERS = ["saescope-topk", "saescope-batchtopk", "saescope-matryoshka", "saescope-jumprelu",
            "saelens-batchtopk", "saelens-matryoshka", "sparsify-topk"]
EXTRA = ["saelens-batchtopk-eqlr",  # equalised settings, run when named in --trainers
         "saescope-lista-matryoshka",  # the re-implemented LISTA-Matryoshka recipe (benchlib/recipes.py) ...
         *[f"saescope-lista-matryoshka-no-{n}" for n in ("lista", "kdecay", "detach", "term", "freqsort")]]  # ablations


def ingredient_row(name: str) -> tuple[str, dict[str, Any]] | None:
    """saescope-ARCH+ING[+noING...] → (ARCH, the TrainerConfig fields those ingredients set), else None."""
    from benchlib.recipes import INGREDIENTS, OFF

    base, *extra = name.split("+")
    if not (base in TRAINERS and base.startswith("saescope-") and extra
            and all(e.removeprefix("no") in INGREDIENTS for e in extra)):
        return None
    return base.removeprefix("saescope-"), {k: v for e in extra for k, v in
                                            (OFF[e[2:]] if e.startswith("no") else INGREDIENTS[e]).items()}


def known(name: str) -> bool:
    """Whether `name` is a trainer this bench runs: one of TRAINERS/EXTRA, or saescope-ARCH+ingredient[+...]."""
    return name in TRAINERS + EXTRA or ingredient_row(name) is not None


def _quiet() -> contextlib.AbstractContextManager:
    """Peers print progress bars and notices to stderr; keep the bench's output readable."""
    return contextlib.redirect_stderr(io.StringIO())


def train_saescope(arch: str, width: int, l0: int, world: Any, stream: Any, n: int, bs: int, device: str,
                   out: Path, seed: int = 0, l0_coefficient: float | None = None,
                   recipe: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """`recipe`: TrainerConfig fields over the defaults (arch included), e.g. benchlib.recipes.PUBLISHED."""
    from benchlib.synthworld import hidden_batches, median_step_s, timed, to_saelens

    from saescope.train.config import TrainerConfig
    from saescope.train.trainer import Trainer

    extra = {"l0_coefficient": l0_coefficient} if l0_coefficient is not None else {}
    fields = {"arch": arch, **(recipe or {})}
    cfg = TrainerConfig(k=l0, width=width, batch_size=bs, checkpoint_every=0, seed=seed, **fields, **extra)
    steps = max(1, n // bs)
    tr = Trainer(cfg, world.cfg.hidden_dim, steps, metadata={"trained_with": "saescope", "bench": "synthsaebench"},
                 device=device)
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = tr.fit(timed(hidden_batches(world, stream, steps * bs, bs, device), stamps), progress=False)
    wall = time.perf_counter() - t0
    # BatchTopK family: the inference threshold set for L0 = k on training rows, as `saescope train` does
    calibration = next(hidden_batches(world, stream, 4096, 4096, device)) \
        if hasattr(tr.sae, "calibrate_threshold") else None  # [4096, d]
    sae = tr.finalize(calibration)
    last = res.history[-1] if res.history else {}
    return to_saelens(sae, out, device), {"samples": res.tokens, "wall_s": wall, "step_s": median_step_s(stamps),
                                          "train_l0": last.get("l0"), **extra}


def calibrate_jumprelu(width: int, l0: int, world: Any, stream: Any, n: int, bs: int, device: str, out: Path,
                       rounds: int = 3, frac: float = 0.25, seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """Pick saescope JumpReLU's L0 coefficient for a target L0: short runs (`frac` of the budget) from the default
    coefficient, each rescaled multiplicatively by (measured L0 / target)² (L0 falls roughly like λ^-1/2)."""
    from saescope.train.config import TrainerConfig

    lam, trace = TrainerConfig().l0_coefficient, []
    m = max(bs, int(n * frac) // bs * bs)
    for r in range(rounds):
        _, info = train_saescope("jumprelu", width, l0, world, stream, m, bs, device, out / f"calib{r}", seed, lam)
        got = float(info["train_l0"])  # L0 of the last training step: a setting, not a score
        trace.append({"l0_coefficient": lam, "l0": got})
        if abs(got - l0) / l0 < 0.05:
            break
        lam *= min(16.0, max(1 / 16, (max(got, 0.1) / l0) ** 2))
    return lam, trace


def train_saelens(arch: str, width: int, l0: int, world: Any, world_dir: Path, stream: Any, n: int, bs: int,
                  device: str, seed: int = 0, lr: float = 3e-4) -> tuple[Any, dict[str, Any]]:
    from types import SimpleNamespace

    from benchlib.synthworld import Replay, median_step_s
    from sae_lens import BatchTopKTrainingSAEConfig, LoggingConfig, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.synthetic import SyntheticSAERunner, SyntheticSAERunnerConfig

    d = world.cfg.hidden_dim
    if arch == "batchtopk":
        sae_cfg = BatchTopKTrainingSAEConfig(d_in=d, d_sae=width, k=l0)
    else:
        widths = [w for w in (128, 512, 2048) if w < width] or [max(1, width // 2)]
        sae_cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=d, d_sae=width, k=l0, matryoshka_widths=widths,
                                                       use_matryoshka_aux_loss=True)
    steps = max(1, n // bs)
    cuda = str(device).startswith("cuda")
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=str(world_dir), sae=sae_cfg, training_samples=steps * bs, batch_size=bs, lr=lr,
        device=device, autocast_sae=cuda, autocast_data=cuda, checkpoint_path=None, output_path=None,
        eval_frequency=0, run_final_eval=False, logger=LoggingConfig(log_to_wandb=False),
    )
    # The runner draws from `synthetic_model.activation_generator`; give it the cached stream instead (+ slack:
    # SAELens' trainer may read a batch ahead).
    replay = Replay(stream, (steps + 8) * bs, bs, dense=False, device=device)
    view = SimpleNamespace(cfg=world.cfg, feature_dict=world.feature_dict, activation_generator=replay)
    torch.manual_seed(seed)
    with _quiet():
        runner = SyntheticSAERunner(cfg, override_synthetic_model=view)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        result = runner.run()
        wall = time.perf_counter() - t0
    return result.sae, {"samples": steps * bs, "wall_s": wall, "step_s": median_step_s(replay.stamps), "lr": lr,
                        "matryoshka_widths": getattr(sae_cfg, "matryoshka_widths", None)}


def train_sparsify(width: int, l0: int, world: Any, stream: Any, n: int, bs: int, device: str, out: Path,
                   seed: int = 0) -> tuple[Any, dict[str, Any]]:
    from benchlib.synthworld import hidden_batches, median_step_s, timed, to_saelens
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    from saescope.sae.loading import load_sparsify_dir

    torch.manual_seed(seed)
    with _quiet():
        sae = SparseCoder(world.cfg.hidden_dim, SparseCoderConfig(num_latents=width, k=l0), device=device,
                          dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / math.sqrt(width / 2**14)}]),
                              momentum=0.95)
    opt.train()
    steps = max(1, n // bs)
    stamps: list[float] = []
    t0 = time.perf_counter()
    for step, x in enumerate(timed(hidden_batches(world, stream, steps * bs, bs, device), stamps)):  # x [bs, d]
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out_ = sae(x)
        (out_.fvu + out_.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    wall = time.perf_counter() - t0
    opt.eval()  # schedule-free: the averaged weights are the model (sparsify saves these)
    sae.save_to_disk(out / "sparsify")
    ours = load_sparsify_dir(out / "sparsify")
    return to_saelens(ours, out / "saelens", device), {"samples": steps * bs, "wall_s": wall,
                                                       "step_s": median_step_s(stamps)}


def train(name: str, width: int, l0: int, world: Any, world_dir: Path, stream: Any, n: int, bs: int, device: str,
          out: Path, seed: int = 0, calib_rounds: int = 3) -> tuple[Any, dict[str, Any]]:
    """Train `name` for `n` samples of `stream`; (an SAE `eval_sae_on_synthetic_data` accepts, info)."""
    family, arch = name.split("-", 1)
    out.mkdir(parents=True, exist_ok=True)
    row = ingredient_row(name)
    if row is not None:
        return train_saescope(row[0], width, l0, world, stream, n, bs, device, out / "sae", seed, recipe=row[1])
    if family == "saescope" and arch.startswith("lista-matryoshka"):
        from benchlib.recipes import PUBLISHED, without

        recipe = without(arch.rsplit("-no-", 1)[1]) if "-no-" in arch else PUBLISHED
        return train_saescope("matryoshka", width, l0, world, stream, n, bs, device, out / "sae", seed,
                              recipe=recipe)
    if family == "saescope":
        if arch == "jumprelu" and calib_rounds > 0:
            t0 = time.perf_counter()
            lam, trace = calibrate_jumprelu(width, l0, world, stream, n, bs, device, out, calib_rounds, seed=seed)
            sae, info = train_saescope(arch, width, l0, world, stream, n, bs, device, out / "sae", seed, lam)
            return sae, {**info, "calibration": trace, "calibration_s": time.perf_counter() - t0 - info["wall_s"]}
        return train_saescope(arch, width, l0, world, stream, n, bs, device, out / "sae", seed)
    if family == "saelens" and arch.endswith("-eqlr"):
        from saescope.train.config import TrainerConfig

        lr = TrainerConfig(arch="batchtopk", width=width).learning_rate()
        return train_saelens(arch.removesuffix("-eqlr"), width, l0, world, world_dir, stream, n, bs, device, seed, lr)
    if family == "saelens":
        return train_saelens(arch, width, l0, world, world_dir, stream, n, bs, device, seed)
    if family == "sparsify":
        return train_sparsify(width, l0, world, stream, n, bs, device, out, seed)
    raise ValueError(f"unknown trainer {name!r}; choose from {', '.join(TRAINERS + EXTRA)}")
