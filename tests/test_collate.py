"""Collation against brute force on a tiny model: top excerpts, moments, buckets, uniform samples, head pairs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from saescope.collate.collator import GroupState
from saescope.collate.config import CollateConfig, CollateOptions, SlotSizes
from saescope.collate.run_collate import collate, make_groups
from saescope.corpus import CorpusConfig, iter_contexts, iter_texts
from saescope.errors import SaescopeError
from saescope.records import ActivationRecord, NeuronId, NeuronRecord, dumps, loads, read_record, read_unit
from saescope.units import head_group, mlp_group, tril_flatten, tril_unflatten_index

T = 8


def _excerpts(hm, corpus, n):
    return list(itertools.islice(iter_contexts(hm.tokenizer, iter_texts(str(corpus)), T + 1), n))


def _brute_mlp(hm, ctxs, layer):
    ids = torch.tensor(ctxs)
    return hm.run_with_cache(ids, None, [f"mlp_post_act.{layer}"])[f"mlp_post_act.{layer}"][:, 1:]  # [N, T, U]


@pytest.fixture
def collated(tiny_gpt2, text_corpus, tmp_path):
    cfg = CollateConfig(out=str(tmp_path / "col"), data=CorpusConfig(str(text_corpus)), layers="1",
                        collate=CollateOptions(excerpt_len=T, max_tokens=T * 60, batch_size=7,
                                               sizes=SlotSizes(top_k=20, n_random=15, pool=24)))
    manifest = collate(cfg, tiny_gpt2)
    return tiny_gpt2, text_corpus, tmp_path / "col" / tiny_gpt2.name, manifest


def test_top_excerpts_and_moments_match_brute_force(collated):
    hm, corpus, root, manifest = collated
    assert manifest["excerpts"] == 60
    ctxs = _excerpts(hm, corpus, 60)
    acts = _brute_mlp(hm, ctxs, 1)  # [N, T, U]
    for u in (0, 5, hm.d_mlp - 1):
        r = read_unit(root / "mlp_neurons" / "1", u)
        a = acts[:, :, u]
        mx = a.amax(1)
        order = sorted(range(60), key=lambda i: (-float(mx[i]), i))[:20]
        assert [max(x.activations) for x in r.most_positive_activation_records] == pytest.approx(
            [float(mx[i]) for i in order], abs=1e-5)
        for rec, i in zip(r.most_positive_activation_records, order):
            assert rec.activations == pytest.approx(a[i].tolist(), abs=1e-5)
            assert rec.tokens == hm.token_strings(ctxs[i][1:])
        flat = a.flatten().double().numpy()
        from scipy import stats

        assert r.mean == pytest.approx(flat.mean(), rel=1e-6, abs=1e-9)
        assert r.variance == pytest.approx(flat.var(), rel=1e-6)
        assert r.skewness == pytest.approx(stats.skew(flat), rel=1e-4, abs=1e-6)
        assert r.kurtosis == pytest.approx(stats.kurtosis(flat), rel=1e-4, abs=1e-6)
        assert len(r.random_sample) == 15 and len(r.most_positive_activation_records) == 20
        # every quantile-bucket sample lies inside its bucket
        b = [-np.inf, *r.quantile_boundaries, np.inf]
        assert len(r.random_sample_by_quantile) == 5 and len(r.quantile_boundaries) == 4
        for q, bucket in enumerate(r.random_sample_by_quantile):
            for rec in bucket:
                assert b[q] - 1e-6 <= max(rec.activations) <= b[q + 1] + 1e-6
        # the records are real excerpts: random samples equal the brute-force activations of some excerpt
        rand = r.random_sample[0]
        hits = [i for i in range(60) if hm.token_strings(ctxs[i][1:]) == rand.tokens]
        assert any(np.allclose(a[i].numpy(), rand.activations, atol=1e-5) for i in hits)


def test_bos_never_recorded_and_tdb_json_shape(collated):
    """On `saescope export tdb`'s folders: TDB's JSON shape, BOS never recorded, one record per unit."""
    from saescope.cli import main

    hm, _, compact, manifest = collated
    assert main(["export", "tdb", str(compact.parent), str(compact.parent.parent / "tdb")]) == 0
    root = compact.parent.parent / "tdb" / hm.name
    assert len(list((root / "mlp_neurons" / "1").glob("*.json"))) == hm.d_mlp + 1  # + summary.json
    bos = hm.tokenizer.decode([hm.tokenizer.bos_token_id])
    raw = json.loads((root / "attention_heads" / "1" / "0.json").read_text())
    assert raw["dataclass_name"] == "NeuronRecord" and raw["neuron_id"]["dataclass_name"] == "NeuronId"
    assert isinstance(raw["neuron_id"]["layer_index"], int)
    assert raw["most_positive_activation_records"][0]["dataclass_name"] == "ActivationRecord"
    for p in (root / "mlp_neurons" / "1").glob("*.json"):
        if p.name == "summary.json":
            continue
        r = read_record(p)
        assert all(bos not in rec.tokens for rec in r.most_positive_activation_records + r.random_sample)
    summary = json.loads((root / "mlp_neurons" / "1" / "summary.json").read_text())
    assert len(summary["units"]) == hm.d_mlp
    assert {d["path"] for d in manifest["datasets"]} == {"mlp_neurons/1", "attention_heads/1"}


def test_head_pair_values_match_naive(collated):
    hm, corpus, root, _ = collated
    ctxs = _excerpts(hm, corpus, 60)
    r = read_unit(root / "attention_heads" / "1", 2)
    top = r.most_positive_activation_records[0]
    assert len(top.activations) == T * (T + 1) // 2
    i = next(i for i in range(60) if hm.token_strings(ctxs[i][1:]) == top.tokens)
    ids = torch.tensor([ctxs[i]])
    c = hm.run_with_cache(ids, None, ["attn_pattern.1", "attn_value.1"])
    A, v = c["attn_pattern.1"][0, 2], c["attn_value.1"][0]  # [T1, T1], [T1, KV, dh]
    W_O = hm.W_O(1)[2].detach()
    for k, val in enumerate(top.activations):
        q, key = tril_unflatten_index(k)
        naive = float(A[q + 1, key + 1] * (v[key + 1, 2 // (hm.n_heads // hm.n_kv_heads)] @ W_O).norm())
        assert val == pytest.approx(naive, rel=1e-4, abs=1e-6)


def test_tril_flatten_order():
    x = torch.arange(16).reshape(4, 4)
    flat = tril_flatten(x).tolist()
    assert flat == [0, 4, 5, 8, 9, 10, 12, 13, 14, 15]
    assert [tril_unflatten_index(k) for k in range(10)] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0),
                                                           (3, 1), (3, 2), (3, 3)]


@pytest.mark.parametrize("unique", [False, True])
def test_streaming_slots_equal_one_sort_of_everything(unique):
    """In-place slot updates over many small batches (with tied scores) keep exactly the k best of all seen."""
    from saescope.collate.state import TopSlots

    g = torch.Generator().manual_seed(0)
    U, k, L, N = 7, 5, 3, 60
    score = torch.randint(0, 6, (U, N), generator=g).double() if not unique else torch.rand(U, N, generator=g).double()
    acts = torch.randn(U, N, L, generator=g)
    slots = TopSlots.empty(U, k, L, unique_scores=unique)
    for lo in range(0, N, 4):
        hi = min(lo + 4, N)
        slots.update(score[:, lo:hi], torch.arange(lo, hi), acts[:, lo:hi])
    slots.sort()
    ref = TopSlots.empty(U, k, L, unique_scores=unique)
    ref._keep(score, torch.arange(N).expand(U, -1), acts)  # one sort of everything: (score desc, id asc)
    assert torch.equal(slots.ids, ref.ids) and torch.equal(slots.score, ref.score)
    assert torch.equal(slots.acts, ref.acts)


def test_random_samples_are_uniform():
    """With deterministic per-(excerpt, unit) keys, each excerpt is chosen equally often across units (chi²)."""
    from scipy.stats import chisquare

    from saescope.units import UnitGroup

    U, N, L, n = 400, 50, 3, 10
    g = UnitGroup("mlp_neurons", 0, U, [], lambda c: c)
    st = GroupState.create(g, L, SlotSizes(top_k=2, pool=n, max_pool=16), seed=3)
    for s in range(0, N, 7):
        ids = torch.arange(s, min(s + 7, N))
        st.update(torch.randn(U, len(ids), L), ids)
    counts = np.bincount(st.pool.ids.flatten().numpy(), minlength=N)
    assert counts.sum() == U * n
    assert chisquare(counts).pvalue > 0.001


def test_merged_states_equal_single_pass(tiny_gpt2, text_corpus):
    hm = tiny_gpt2
    ctxs = _excerpts(hm, text_corpus, 40)
    groups = [mlp_group(hm, 1), head_group(hm, 1)]
    sizes = SlotSizes(top_k=5, n_random=4, pool=8, max_pool=16)

    def run(chunks):
        states = [GroupState.create(g, T * (T + 1) // 2 if g.by_token_pair else T, sizes, 0) for g in groups]
        for lo, hi in chunks:
            ids = torch.tensor(ctxs[lo:hi])
            cache = hm.run_with_cache(ids, None, ["mlp_post_act.1", "attn_pattern.1", "attn_value.1"])
            with torch.no_grad():
                for g, st in zip(groups, states):
                    st.update(g.extract(cache).float(), torch.arange(lo, hi))
        return states

    single = run([(0, 13), (13, 40)])
    a, b = run([(0, 20)]), run([(20, 40)])
    for sa, sb, ss in zip(a, b, single):
        sa.merge(sb)
        ss.sort()  # a single pass leaves its slots unordered; merging sorts them
        for part in ("top", "pool", "maxima"):
            assert torch.equal(getattr(sa, part).ids, getattr(ss, part).ids)
            torch.testing.assert_close(getattr(sa, part).acts, getattr(ss, part).acts)
        torch.testing.assert_close(sa.moments.sums, ss.moments.sums)


def test_record_round_trip_and_legacy_names():
    r = NeuronRecord(NeuronId(3, 2), random_sample=[ActivationRecord([0.5, 1.0], [" a", "b"])],
                     most_positive_activation_records=[ActivationRecord([2.0, 0.0], ["x", " y"])])
    back = loads(dumps(r))
    assert back.neuron_id == r.neuron_id and back.random_sample == r.random_sample
    assert back.max_activation == 2.0 and np.isnan(back.mean)
    assert '"mean":null' in dumps(r)
    legacy = {"neuron_id": {"idx": 7, "layer": "4"}, "random_sample": [],
              "most_positive_activation_records": [{"tokens": ["t"], "activations": [1.0]}]}
    old = loads(json.dumps(legacy))
    assert old.neuron_id == NeuronId(7, 4)
    assert old.most_positive_activation_records[0].tokens == ["t"]


def test_two_gloo_ranks_write_the_same_records_as_one_process(tiny_dir, tmp_path):
    from conftest import TEXT, one_process_and_two_ranks

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 4)
    args = ["collate", "--model", str(tiny_dir), "--corpus", str(corpus), "--layers", "1", "--excerpt_len", "8",
            "--max_tokens", "400", "--batch_size", "4", "--top_k", "20", "--n_random", "15", "--pool", "24",
            "--device", "cpu"]
    one_process_and_two_ranks(args, tmp_path / "one", tmp_path / "two")
    one, two = tmp_path / "one" / tiny_dir.name, tmp_path / "two" / tiny_dir.name
    datasets = json.loads((one / "manifest.json").read_text())["datasets"]
    units = [(d["path"], u) for d in datasets for u in range(d["units"])]
    assert len(units) == 48 + 4
    for path, u in units:
        f = f"{path}/{u}"
        a, b = read_unit(one / path, u), read_unit(two / path, u)
        for part in ("most_positive_activation_records", "random_sample"):
            ra, rb = getattr(a, part), getattr(b, part)
            assert [x.tokens for x in ra] == [x.tokens for x in rb], f
            for x, y in zip(ra, rb):
                assert x.activations == pytest.approx(y.activations, abs=1e-5)
        assert [[x.tokens for x in q] for q in a.random_sample_by_quantile] == \
               [[x.tokens for x in q] for q in b.random_sample_by_quantile]
        assert a.mean == pytest.approx(b.mean, rel=1e-6, abs=1e-9)
        assert a.variance == pytest.approx(b.variance, rel=1e-6, abs=1e-12)
    assert json.loads((one / "manifest.json").read_text())["excerpts"] == \
           json.loads((two / "manifest.json").read_text())["excerpts"] == 50


def test_openai_state_dict_at_a_tdb_hookpoint(tiny_gpt2, text_corpus, tmp_path):
    """GPT-2 + an OpenAI-format autoencoder file named with a TDB hookpoint: the latents are collated at mlp_out,
    and equal the SAE's encoding of what the MLP writes (brute force over the same excerpts)."""
    hm = tiny_gpt2
    assert hm.select("resid_delta_mlp.1,resid_delta_attn.0") == ["attn_out.0", "mlp_out.1"]
    d, F = hm.d_model, 24
    g = torch.Generator().manual_seed(5)
    W_enc, W_dec = torch.randn(d, F, generator=g), torch.randn(F, d, generator=g)
    pt = tmp_path / "layer_1.pt"
    torch.save({"encoder.weight": W_enc.T.contiguous(), "latent_bias": torch.zeros(F),
                "decoder.weight": W_dec.T.contiguous(), "pre_bias": torch.zeros(d), "activation": "ReLU"}, pt)
    with pytest.raises(SaescopeError, match="does not record its hookpoint"):
        make_groups(CollateConfig(sae=str(pt)), hm)
    cfg = CollateConfig(out=str(tmp_path / "col"), data=CorpusConfig(str(text_corpus)), sae=f"{pt}@resid_delta_mlp.1",
                        collate=CollateOptions(units="mlp", excerpt_len=T, max_tokens=T * 30,
                                               sizes=SlotSizes(top_k=20, n_random=15, pool=24)))
    manifest = collate(cfg, hm)
    ds = next(x for x in manifest["datasets"] if x["unit_type"] == "sae_latents")
    assert ds["hookpoints"] == ["mlp_out.1"] and ds["units"] == F
    ctxs = _excerpts(hm, text_corpus, 30)
    x = hm.run_with_cache(torch.tensor(ctxs), None, ["mlp_out.1"])["mlp_out.1"][:, 1:]  # [N, T, d]
    acts = (x @ W_enc).relu()  # [N, T, F]
    rec = read_unit(tmp_path / "col" / hm.name / ds["path"], 3)
    best = acts[..., 3].amax(1).max()
    assert rec.max_activation == pytest.approx(float(best), rel=1e-4)


def test_token_pair_excerpts_collapse_to_query_tokens(tmp_path):
    from saescope.records import read_record_dict, token_activations, write_record

    # T = 3: pairs (0,0) (1,0) (1,1) (2,0) (2,1) (2,2)
    assert token_activations(["a", "b", "c"], [0.5, 0.0, 2.0, 1.0, 3.0, -1.0]) == [0.5, 2.0, 3.0]
    assert token_activations(["a", "b"], [1.0, 2.0]) == [1.0, 2.0]  # per-token records unchanged
    rec = NeuronRecord(NeuronId(0, 1), random_sample=[ActivationRecord([0.0, 1.0, 0.0], ["x", "y"])],
                       most_positive_activation_records=[ActivationRecord([0.5, 0.0, 2.0], ["x", "y"])])
    write_record(tmp_path, rec)
    d = read_record_dict(tmp_path / "1" / "0.json")
    assert d["most_positive_activation_records"][0]["activations"] == [0.5, 2.0]
    assert d["random_sample"][0]["activations"] == [0.0, 1.0]


def test_collating_from_a_store_equals_running_the_model(tiny, text_corpus, tmp_path):
    """A store captured with context_len = excerpt_len + 1 holds exactly the collation's excerpts: MLP neurons, SAE
    latents, and (from its attention pattern and value rows, BOS restored) heads and an attention SAE's latents by
    token pair read from it give the records a model pass gives; attention units take the first --max_tokens; a store
    of another context length is refused. GPT-2, Gemma 3 (post-attention norm) and grouped-query Llama."""
    from saescope.capture import capture_corpus
    from saescope.capture.config import CaptureConfig, CaptureOptions
    from saescope.sae import SAEConfig, sae_class

    hm = tiny
    for hp in ("resid_post.1", "attn_out.1"):
        sae = sae_class("topk")(SAEConfig("topk", hm.d_model, 16, k=3, metadata={"hook_name": hp}))
        torch.nn.init.normal_(sae.W_enc, generator=torch.Generator().manual_seed(0))
        sae.save(tmp_path / hp.split(".")[0])
    saes = f"{tmp_path / 'resid_post'},{tmp_path / 'attn_out'}"
    data = CorpusConfig(str(text_corpus))
    capture_corpus(CaptureConfig(data=data, out=str(tmp_path / "store"), capture=CaptureOptions(context_len=T + 1,
                                 shard_contexts=9), hookpoints="mlp_post_act.1,resid_post.1,attn_out.1,"
                                                               "attn_pattern.1,attn_value.1"), hm)
    sizes = SlotSizes(top_k=20, n_random=15, pool=24)

    def run(out, store, max_tokens, store_tokens=0):
        return collate(CollateConfig(out=str(tmp_path / out), data=data, layers="1", sae=saes, store=store,
                                     collate=CollateOptions(excerpt_len=T, max_tokens=max_tokens, batch_size=5,
                                                            sizes=sizes, store_tokens=store_tokens)), hm)
    n = len(_excerpts(hm, text_corpus, 10_000))
    from_model = run("model", "", 0)
    from_store = run("store", str(tmp_path / "store"), 0)
    assert len(from_model["datasets"]) == len(from_store["datasets"]) == 5  # mlp, heads, 2 SAEs, 1 by pair
    for d in from_model["datasets"]:
        for u in (0, 3):
            a = read_unit(tmp_path / "model" / hm.name / d["path"], u)
            b = read_unit(tmp_path / "store" / hm.name / d["path"], u)
            assert [r.tokens for r in a.most_positive_activation_records] == \
                   [r.tokens for r in b.most_positive_activation_records], d["path"]
            for ra, rb in zip(a.most_positive_activation_records + a.random_sample,
                              b.most_positive_activation_records + b.random_sample):
                np.testing.assert_allclose(ra.activations, rb.activations, rtol=1e-4, atol=1e-5, err_msg=d["path"])
            assert a.mean == pytest.approx(b.mean, rel=1e-4, abs=1e-6)
    budget = run("budget", str(tmp_path / "store"), T * 20)
    for d in budget["datasets"]:
        attention = d["unit_type"] == "attention_heads" or d["by_token_pair"]
        assert d["tokens"] == (20 if attention else n) * T, d["path"]
    # --store_tokens: the store-fed units read its first 12 contexts (9 a shard: across a shard boundary), and their
    # records are a model pass's over those 12 excerpts
    first = run("first", str(tmp_path / "store"), T * 12, store_tokens=T * 12)
    model12 = run("model12", "", T * 12)
    for d in first["datasets"]:
        assert d["tokens"] == 12 * T, d["path"]
        a = read_unit(tmp_path / "model12" / hm.name / d["path"], 2)
        b = read_unit(tmp_path / "first" / hm.name / d["path"], 2)
        assert [r.tokens for r in a.most_positive_activation_records] == \
               [r.tokens for r in b.most_positive_activation_records], d["path"]
        assert a.mean == pytest.approx(b.mean, rel=1e-4, abs=1e-6)
    capture_corpus(CaptureConfig(data=data, out=str(tmp_path / "store2"), hookpoints="resid_post.1",
                                 capture=CaptureOptions(context_len=T + 2)), hm)
    with pytest.raises(SaescopeError, match="context_len is 10.*--context_len 9"):
        run("bad", str(tmp_path / "store2"), 0)


def test_record_json_equals_the_standard_encoder():
    """`dumps` writes activations itself (zeros as 0, no Python float per zero); the text equals json.dumps of the
    same record with zeros as 0, for arrays and lists, NaN statistics, missing quantile buckets, odd tokens."""
    from saescope.io import clean_nans
    from saescope.records import json_numbers, to_dict

    def reference(rec):
        d = to_dict(rec)
        for k in ("mean", "variance", "skewness", "kurtosis", "quantile_boundaries"):
            d[k] = clean_nans(d[k])
        for r in d["most_positive_activation_records"] + d["random_sample"] + \
                [x for b in d["random_sample_by_quantile"] or [] for x in b]:
            acts = r["activations"].tolist() if isinstance(r["activations"], np.ndarray) else r["activations"]
            r["activations"] = [v if v else 0 for v in acts]
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    g = np.random.default_rng(0)
    for case in range(6):
        a = g.normal(size=(7, 36)).round(6) * (g.random((7, 36)) < 0.2)
        a[0, :3] = [-0.0, 1e-7, 123456.789]
        acts = [x if case % 2 else x.tolist() for x in a]  # arrays (collation) and lists (read back)
        toks = ['"q"', "é\\n", "\u202e", " x", "\x00"] * 8
        recs = [ActivationRecord(activations=x, tokens=toks[:36]) for x in acts]
        rec = NeuronRecord(NeuronId(case, 2), random_sample=recs[:2], most_positive_activation_records=recs[2:5],
                           random_sample_by_quantile=None if case < 3 else [recs[5:6], [], recs[6:]],
                           quantile_boundaries=None if case < 3 else [0.1, float("nan"), 2.0, 3.0],
                           mean=float("nan") if case == 1 else 0.25, variance=1.5, skewness=None, kurtosis=-1.0)
        assert dumps(rec) == reference(rec)
        assert loads(dumps(rec)).most_positive_activation_records[0].activations == pytest.approx(a[2].tolist())
    assert json_numbers(np.zeros(3)) == "[0,0,0]" and json_numbers([0.5, 0, -2.0]) == "[0.5,0,-2.0]"
    with pytest.raises(ValueError, match="not a JSON number"):
        json_numbers([1.0, float("nan")])


def test_moments_of_sparse_batches_equal_the_dense_sums():
    from saescope.collate.state import Moments

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 400, generator=g) * (torch.rand(6, 400, generator=g) < 0.05)  # ~5 % non-zero: sparse path
    x[2] = torch.randn(400, generator=g)  # and one dense row
    a, b = Moments.empty(6), Moments.empty(6)
    a.update(x)
    xd = x.double()
    b.sums += torch.stack([torch.full((6,), 400.0, dtype=torch.float64), xd.sum(1), (xd**2).sum(1), (xd**3).sum(1),
                           (xd**4).sum(1), (xd > 0).double().sum(1)], 1)
    torch.testing.assert_close(a.sums, b.sums)
    c = Moments.empty(6)
    c.update(torch.randn(6, 50, generator=g))  # dense path
    assert float(c.sums[0, 0]) == 50


def test_histogram_counts_every_value_exactly_in_both_paths_and_merges():
    """Moments.hist = a naive per-unit histogram of |x| (log bins) for x > 0 and x < 0, whichever path (dense batch,
    sparse entries) fed it, and two halves merged = the whole."""
    from saescope.collate.state import HIST_BINS, Moments, hist_edges

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 600, generator=g) * 10.0 ** torch.randint(-5, 5, (5, 600), generator=g).double()
    x = (x * (torch.rand(5, 600, generator=g) < 0.5)).float()  # half zeros; values from 1e-5 to 1e5
    x[4] = 0.0
    edges = hist_edges()
    want = torch.zeros(5, 2, HIST_BINS, dtype=torch.float64)
    for u in range(5):
        for sign, vals in ((0, x[u][x[u] > 0]), (1, -x[u][x[u] < 0])):
            v = vals.double().clamp(edges[0], edges[-1] * 0.999)  # the outer bins hold what lies beyond them
            want[u, sign] = torch.histogram(v, edges).hist
    dense, sparse, halves = Moments.empty(5), Moments.empty(5), Moments.empty(5)
    dense.update(x)
    unit, col = x.nonzero(as_tuple=True)
    sparse.add_entries(unit, x[unit, col], 600.0)
    halves.update(x[:, :300])
    other = Moments.empty(5)
    other.update(x[:, 300:])
    halves.merge(other)
    for m in (dense, sparse, halves):
        torch.testing.assert_close(m.hist, want)
    assert float(dense.hist[:, 0].sum(-1)[0]) == float(dense.sums[0, 5])  # positives = the density's count
    assert float(dense.hist[4].sum()) == 0


def test_a_dead_unit_has_no_top_token():
    """A unit that never fired has top excerpts of zeros: its summary row names no top token (it listed one)."""
    from saescope.records import summary_row

    dead = NeuronRecord(NeuronId(0, 1), most_positive_activation_records=[ActivationRecord([0.0, 0.0], ["x", " y"])])
    live = NeuronRecord(NeuronId(0, 2), most_positive_activation_records=[ActivationRecord([0.0, 0.7], ["x", " y"])])
    assert summary_row(dead, False)["top_token"] is None
    assert summary_row(live, False)["top_token"] == " y"
