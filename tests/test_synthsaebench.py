"""The SynthSAEBench bench scores with SAELens' own evaluation: a planted perfect SAE gets MCC = F1 = 1, a random
one gets low scores. Runs where sae_lens is installed (the bench venv, bench/synthsaebench_setup.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens", reason="sae_lens is a bench-only dependency (bench/synthsaebench_setup.sh)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from benchlib import synthworld as sw  # noqa: E402

from saescope.sae import JumpReLUSAE, SAEConfig  # noqa: E402

F, D = 256, 384  # F <= D: the true directions are linearly independent, so a linear encoder can invert them


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = sw.world_config(tiny=True, features=F, hidden_dim=D)
    model, world_dir = sw.load_or_build_world(cfg, root)
    stream = sw.Stream(model, world_dir.parent / "samples", "eval", seed=1, shard_size=2048, n_samples=4096)
    stream.ensure()
    return model, world_dir, stream


def planted(model) -> JumpReLUSAE:
    """decoder = the true feature vectors, encoder = their pseudo-inverse: the latents are the feature acts."""
    fv = model.feature_dict.feature_vectors.detach()  # [F, D]
    sae = JumpReLUSAE(SAEConfig("jumprelu", D, F))
    with torch.no_grad():
        sae.W_dec.copy_(fv)
        sae.W_enc.copy_(torch.linalg.pinv(fv))  # [D, F]: (x - b) W_enc = f W_dec W_dec⁺ = f
        sae.b_enc.zero_()
        sae.b_dec.copy_(model.feature_dict.bias.detach())
        sae.threshold.fill_(1e-3)
    return sae


def test_world_cache_is_reused_and_stream_is_deterministic(world, tmp_path):
    model, world_dir, stream = world
    again, same_dir = sw.load_or_build_world(model.cfg, world_dir.parent.parent)
    assert same_dir == world_dir
    torch.testing.assert_close(again.feature_dict.feature_vectors, model.feature_dict.feature_vectors)
    redraw = sw.Stream(model, tmp_path, "eval", seed=1, shard_size=2048, n_samples=4096)
    redraw.ensure()
    for a, b in zip(stream.shard(1), redraw.shard(1)):
        assert torch.equal(a, b)
    dense = next(stream.rows(512, 512, dense=True))  # [512, F]
    sparse = next(stream.rows(512, 512, dense=False))
    assert torch.equal(sparse.to_dense(), dense) and (dense > 0).sum(1).float().mean() > 1


def test_planted_sae_scores_perfectly(world, tmp_path):
    model, _, stream = world
    sae = sw.to_saelens(planted(model), tmp_path / "planted")
    s = sw.score(sae, model, stream, 4096, batch_size=1024)
    assert s["mcc"] == pytest.approx(1.0, abs=1e-4)
    assert s["f1"] == pytest.approx(1.0, abs=1e-3)
    assert s["ve"] == pytest.approx(1.0, abs=1e-4)
    assert s["uniqueness"] == pytest.approx(1.0)
    assert s["l0"] == pytest.approx(s["true_l0"], rel=1e-3)


def test_random_sae_scores_low(world, tmp_path):
    model, _, stream = world
    torch.manual_seed(0)
    sae = JumpReLUSAE(SAEConfig("jumprelu", D, F))  # random unit decoder rows, tied encoder, threshold 0.01
    s = sw.score(sw.to_saelens(sae, tmp_path / "random"), model, stream, 4096, batch_size=1024)
    assert s["mcc"] < 0.3 and s["f1"] < 0.3 and s["ve"] < 0.5


def test_diagnosis_names_each_planted_fault(world):
    """benchlib/synthdiag.py on planted SAEs: the perfect one is all fine (or dead where its feature never fired);
    a copied row is a duplicate; a latent made to fire for its sibling too is merged with siblings; a parent latent
    switched off whenever a child is on misses exactly on the child samples (absorption)."""
    from benchlib import synthdiag as sd

    model, _, stream = world
    parent = sd.parents(model)
    fired = torch.zeros(F)
    for f in stream.rows(4096, 1024, dense=True):
        fired += (f > 0).sum(0)
    d = sd.diagnose(planted(model), model, stream, 4096)
    assert d["dead"] == int((fired == 0).sum()) and d["fine"] == F - d["dead"]
    assert d["duplicate"] == d["absorbed"] == d["merged_siblings"] == d["merged_other"] == 0

    kids = {}
    for j, p in enumerate(parent.tolist()):
        if p >= 0 and fired[j] > 0:
            kids.setdefault(p, []).append(j)
    p, (c1, c2, *_) = max(((p, ks) for p, ks in kids.items() if len(ks) >= 2), key=lambda t: fired[t[1]].sum())
    sae = planted(model)
    enc = sae.W_enc.detach().clone()
    with torch.no_grad():
        sae.W_enc[:, c1] = enc[:, c1] + enc[:, c2]  # latent c1 = f_c1 + f_c2: also fires for its sibling c2
        sae.W_enc[:, p] = enc[:, p] - 100 * sum(enc[:, c] for c in kids[p])  # off whenever a child of p is on
        i, j = [k for k in range(F) if fired[k] > 0 and k not in (p, c1, c2)][:2]
        sae.W_dec[i] = sae.W_dec[j]  # latent i now matches feature j and fires like latent j: a duplicate
        sae.W_enc[:, i] = enc[:, j]
    d = sd.diagnose(sae, model, stream, 4096)
    lat = d["per_latent"]
    assert lat["fp"][c1] == fired[c2] and lat["fp_parent"][c1] == lat["fp"][c1]  # every false alarm: parent on
    assert lat["fn"][p] > 0 and lat["fn_child"][p] == lat["fn"][p] and lat["fp"][p] == 0
    assert int(lat["match"][i]) == j and d["duplicate"] == 1  # one of latents i, j (equal F1) is the duplicate
    assert {sd.LABELS[int(lat["label"][k])] for k in (i, j)} == {"duplicate", "fine"}
    assert sd.LABELS[int(lat["label"][c1])] in ("merged_siblings", "fine")  # which, depends on how often c2 fires


def test_v1_world_is_v2_without_scale_children_by_parent():
    v1, v2 = sw.world_config(version="v1"), sw.world_config(version="v2")
    assert v1.hierarchy.scale_children_by_parent is False and v2.hierarchy.scale_children_by_parent is True
    d1, d2 = v1.to_dict(), v2.to_dict()
    d1["hierarchy"].pop("scale_children_by_parent")
    d2["hierarchy"].pop("scale_children_by_parent")
    assert d1 == d2  # nothing else differs
    assert sw.config_hash(v1) != sw.config_hash(v2)  # cached apart
    with pytest.raises(ValueError, match="v1 or v2"):
        sw.world_config(version="v3")


def test_lista_matryoshka_rows_train_on_the_world(world, tmp_path):
    """The reference recipe and an ablation train through the bench's own path and are scored by SAELens."""
    from benchlib.synthtrainers import train

    model, world_dir, stream = world
    for name in ("saescope-lista-matryoshka", "saescope-lista-matryoshka-no-lista"):
        sae, info = train(name, 64, 4, model, world_dir, stream, 2048, 256, "cpu", tmp_path / name)
        s = sw.score(sae, model, stream, 1024, 256)
        assert info["samples"] == 2048 and 0 < s["l0"] < 64 and s["ve"] > 0


def test_ingredient_rows_switch_on_exactly_the_named_ingredients(world, tmp_path, monkeypatch):
    """saescope-ARCH+ING rows: saescope's recipe for ARCH plus the named ingredients' TrainerConfig fields, nothing
    else; unknown names are refused by `known`."""
    from benchlib import synthtrainers as st
    from benchlib.recipes import INGREDIENTS

    assert st.known("saescope-topk+lista") and st.known("saescope-matryoshka+lista+detach+term+freqsort")
    for bad in ("saescope-topk+nope", "sparsify-topk+lista", "saescope-topk+", "saescope-nope+lista"):
        assert not st.known(bad), bad
    seen = {}

    def fake(arch, *args, recipe=None, **kw):
        seen.update(arch=arch, recipe=recipe)
        return None, {}
    monkeypatch.setattr(st, "train_saescope", fake)
    model, world_dir, stream = world
    st.train("saescope-matryoshka+lista+term", 64, 4, model, world_dir, stream, 2048, 256, "cpu", tmp_path)
    assert seen == {"arch": "matryoshka", "recipe": {**INGREDIENTS["lista"], **INGREDIENTS["term"]}}
    st.train("saescope-matryoshka+nodetach", 64, 4, model, world_dir, stream, 2048, 256, "cpu", tmp_path)
    assert seen == {"arch": "matryoshka", "recipe": {"matryoshka_detach": False}} and st.known("saescope-topk+nolista")


def test_ablations_switch_the_ingredient_off_whatever_the_default():
    """`without(n)` sets the ingredient's fields to their off values (the detach default is on), and keeps the rest
    of the published recipe."""
    from benchlib.recipes import INGREDIENTS, OFF, PUBLISHED, without

    from saescope.train.config import TrainerConfig

    for n in INGREDIENTS:
        cfg = TrainerConfig(**{"k": 25, "width": 4096, **without(n)})
        base = TrainerConfig(**{"k": 25, "width": 4096, **PUBLISHED})
        on = INGREDIENTS[n]
        assert all(getattr(base, f) == v for f, v in on.items())
        assert any(getattr(cfg, f) != v for f, v in on.items()), n  # lista_iters=1 is also the default
        assert all(getattr(cfg, f) == v for f, v in OFF[n].items())
        assert cfg.lr == 3e-4 and cfg.matryoshka_widths == "128,512,2048"


def test_v2_built_on_v1s_dictionary_equals_v2_built_from_scratch(tmp_path):
    """load_or_build_world reuses a cached world's feature dictionary when the dictionary's config fields agree:
    v2 built after v1 is, tensor for tensor and sample for sample, the v2 built alone."""
    from safetensors.torch import load_file

    kw = dict(tiny=True, features=256, hidden_dim=64)
    v1, v2 = sw.world_config(version="v1", **kw), sw.world_config(version="v2", **kw)
    alone, alone_dir = sw.load_or_build_world(v2, tmp_path / "alone")
    assert sw.dictionary_donor(v2, tmp_path / "alone") == alone_dir  # itself: the fields agree
    _, v1_dir = sw.load_or_build_world(v1, tmp_path / "shared")
    reused, reused_dir = sw.load_or_build_world(v2, tmp_path / "shared")
    assert json.loads((reused_dir / "build.json").read_text())["dictionary_from"] == str(v1_dir)
    files = sorted(p.name for p in alone_dir.glob("*.safetensors"))
    assert files == ["synthetic_model.safetensors"], files
    for f in files:
        a, b = load_file(str(alone_dir / f)), load_file(str(reused_dir / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert (alone_dir / "hierarchy.json").read_text() == (reused_dir / "hierarchy.json").read_text()
    torch.manual_seed(3)
    x = alone.activation_generator.sample(512)
    torch.manual_seed(3)
    assert torch.equal(x, reused.activation_generator.sample(512))
    other = sw.world_config(version="v2", tiny=True, features=256, hidden_dim=32)
    assert sw.dictionary_donor(other, tmp_path / "shared") is None  # another d: built afresh


def test_report_prints_the_cached_rows_without_training(tmp_path, capsys):
    """--report reads the rows' JSON: equal samples first, then the other budgets of the same trainers."""
    import synthsaebench as sb

    base = dict(width=64, l0_target=4, eval_samples=1024, wall_s=1.0, samples_per_s=2048.0, f1=0.5, mcc=0.5,
                uniqueness=1.0, ve=0.5, l0=4.0, dead=0, shrinkage=0.9, saescope_rev="abc",
                diagnosis={"fine": 1, "dead": 0, "duplicate": 0, "absorbed": 0, "merged_siblings": 0,
                           "merged_other": 0, "found_by_band": {"a": "1/2", "b": "0/1", "c": "0/0"}})
    for t, n, f1 in (("saescope-topk", 4096, 0.5), ("saescope-topk", 8192, 0.75), ("sparsify-topk", 4096, 0.25)):
        (tmp_path / f"{t}-{n}.json").write_text(json.dumps({**base, "trainer": t, "samples": n, "f1": f1}))
    a = sb.parse_args(["--tiny", "--widths", "64", "--l0s", "4", "--samples", "4096", "--eval-samples", "1024",
                       "--trainers", "saescope-topk,sparsify-topk", "--wallclock-s", "2", "--report"])
    sb.report(a, tmp_path)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "0." in ln]
    assert [(ln.split(" | ")[0], ln.split(" | ")[3]) for ln in lines[:3]] == [
        ("| samples", "saescope-topk"), ("| samples", "sparsify-topk"), ("| wall-clock 2 s", "saescope-topk")]
    assert "0.750" in lines[2] and "0.250" in lines[1]
