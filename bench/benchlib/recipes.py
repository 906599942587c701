"""The LISTA-Matryoshka recipe (chanind/claude-auto-research-synthsaebench, 2026; issue 30) as saescope
`TrainerConfig` settings, and its ablations: shared by bench/regime_bench.py and bench/synthsaebench.py.

Re-implemented from its published description (README table): a one-step LISTA encoder, k decreasing linearly from
60 to the target 25, inner Matryoshka levels detached from the gradient except the outermost, tilted ERM (tilt
≈ 2e-3), Matryoshka levels formed by sorting latents by firing frequency; trained at LR 3e-4 (SynthSAEBench's), batch
1,024, constant LR. saescope's trainer keeps its own input normalisation, b_dec init and AuxK; dead-latent restarts
are off (the recipe has none). Inner widths: SAELens' SynthSAEBench Matryoshka setting, 128/512/2048.
"""

from __future__ import annotations

from typing import Any

INGREDIENTS: dict[str, dict[str, Any]] = {
    "lista": dict(encoder="lista", lista_iters=1),
    "kdecay": dict(k_anneal_start=60 / 25, k_anneal_frac=1.0),
    "detach": dict(matryoshka_detach=True),
    "term": dict(term_tilt=2e-3),
    "freqsort": dict(matryoshka_sort="frequency"),
}
"""Each ingredient as the TrainerConfig fields that switch it on (kdecay: the recipe's 60 → 25 over the run)."""

OFF: dict[str, dict[str, Any]] = {
    "lista": dict(encoder="linear"),
    "kdecay": {},  # saescope's own k anneal (2k → k over the first quarter)
    "detach": dict(matryoshka_detach=False),  # saescope's Matryoshka detaches by default: off is explicit
    "term": dict(term_tilt=0.0),
    "freqsort": dict(matryoshka_sort="index"),
}
"""Each ingredient switched off, whatever saescope's default for those fields is."""

ALL_INGREDIENTS = {k: v for d in INGREDIENTS.values() for k, v in d.items()}

PUBLISHED: dict[str, Any] = dict(arch="matryoshka", lr=3e-4, warmup_frac=0.0, decay_frac=0.0,
                                 matryoshka_widths="128,512,2048", resample_tokens=0, **ALL_INGREDIENTS)
"""The reference row: the recipe with its published hyper-parameters."""


def without(name: str) -> dict[str, Any]:
    """The reference recipe with one ingredient removed (switched off: `OFF`)."""
    return {**{k: v for k, v in PUBLISHED.items() if k not in INGREDIENTS[name]}, **OFF[name]}
