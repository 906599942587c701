"""The regime bench's generator (bench/benchlib/regimes.py): its firing laws hit their targets and its hierarchy
obeys its rules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from benchlib.regimes import REGIMES, RegimeGenerator, RegimeSpec, fit_zipf  # noqa: E402


@pytest.mark.parametrize("law,p_max,p_min", [("offset", 0.3, 2e-3), ("mandelbrot", 0.24, 1e-4)])
def test_fit_zipf_hits_both_ends_and_the_sum(law, p_max, p_min):
    p = fit_zipf(4096, p_max, p_min, 20.0, law)
    assert float(p[0]) == pytest.approx(p_max, rel=1e-4) and float(p[-1]) == pytest.approx(p_min, rel=1e-3)
    assert float(p.sum()) == pytest.approx(20.0, rel=1e-3)
    assert bool((p[1:] <= p[:-1]).all())


def test_even_regime_matches_the_held_out_set_description():
    gen = RegimeGenerator(REGIMES["even"], n_features=4096, d=64)
    assert gen.expected_active() == pytest.approx(20.0, rel=0.05)
    assert 0.25 < float(gen.probs.max()) < 0.35 and float(gen.probs.min()) > 1e-3
    x = gen.sample(256)
    assert x.shape == (256, 64) and torch.isfinite(x).all()
    assert torch.equal(gen.sample(8, torch.Generator().manual_seed(3)), gen.sample(8, torch.Generator().manual_seed(3)))


def test_hierarchy_children_fire_only_with_their_parent_and_exclusively():
    spec = RegimeSpec("t", p_max=0.3, p_min=2e-3, active=10.0, roots=64, branching=3)  # 8 roots per 512
    gen = RegimeGenerator(spec, n_features=512, d=32)
    fires = gen.sample_fires(4096, torch.Generator().manual_seed(0))  # [N, F]
    kids = (gen.parent >= 0).nonzero().squeeze(1)
    assert len(kids) == 8 * 3 + 8 * 3 * 3
    assert not bool((fires[:, kids] & ~fires[:, gen.parent[kids]]).any())  # a child implies its parent
    for par, children in gen.levels:
        assert int(fires[:, children].sum(-1).max()) == 1  # siblings are mutually exclusive
    assert bool(fires[:, kids].any())
