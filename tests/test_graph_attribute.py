"""The attribution engine on tiny GPT-2, Gemma 3 and Llama: the frozen replacement model reproduces the model, every
edge equals a naive autograd derivative through it, and each target's incoming edges plus its constant term sum to
its value."""

from __future__ import annotations

import pytest
import torch

from saescope.graph import attribute as attr
from saescope.graph.replacement import FrozenModel, Transcoders, jumprelu_activation, topk_activation

PROMPT = "The quick brown fox sat on the mat"


def make_transcoders(hm, kind: str, F: int = 40) -> Transcoders:
    """Random transcoders: 'plt' TopK per-layer, 'skip' JumpReLU per-layer with a skip, 'clt' cross-layer TopK."""
    g = torch.Generator().manual_seed(1)
    L, d = hm.n_layers, hm.d_model
    W_enc = [torch.randn(d, F, generator=g) / d**0.5 for _ in range(L)]
    b_enc = [torch.randn(F, generator=g) * 0.1 for _ in range(L)]
    n_out = [L - l if kind == "clt" else 1 for l in range(L)]
    W_dec = [torch.randn(F, n_out[l], d, generator=g) * 0.05 for l in range(L)]
    b_dec = [torch.randn(d, generator=g) * 0.05 for _ in range(L)]
    skip = [torch.randn(d, d, generator=g) * 0.005 for _ in range(L)] if kind == "skip" else None
    act = jumprelu_activation([torch.rand(F, generator=g) * 0.3 for _ in range(L)]) if kind == "skip" \
        else topk_activation(5)
    return Transcoders(W_enc, b_enc, W_dec, b_dec, act, skip, scan=f"tiny-{kind}")


@pytest.fixture(params=["plt", "skip", "clt"])
def kind(request):
    return request.param


def test_replacement_reproduces_model(tiny, kind):
    tc = make_transcoders(tiny, kind)
    fm = FrozenModel(tiny, tc, attr.prompt_ids(tiny, PROMPT)[0])
    pres, logits = fm.forward(fm.clean.embed, fm.acts, fm.errors)
    torch.testing.assert_close(logits, fm.clean.logits, atol=2e-4, rtol=1e-4)
    for p, q in zip(pres, fm.pre):
        torch.testing.assert_close(p, q, atol=2e-4, rtol=1e-4)
    assert all(int((a[1:] != 0).sum()) > 0 for a in fm.acts) and all(int((a[0] != 0).sum()) == 0 for a in fm.acts)


def naive_row(fm: FrozenModel, graph, target: int) -> tuple[torch.Tensor, float, float]:
    """(the target's row over the graph's nodes by autograd, its value, its constant term)."""
    embed = fm.clean.embed.clone().requires_grad_(True)
    acts = [a.clone().requires_grad_(True) for a in fm.acts]
    errors = fm.errors.clone().requires_grad_(True)

    def value(pres, logits):
        if graph.node_kind(target) == "logit":
            tok = int(graph.logit_tokens[target - graph.logit_start])
            return logits[-1, tok] - logits[-1].mean()
        layer, pos, idx, _ = graph.feature(target)
        return pres[layer][pos, idx]

    y = value(*fm.forward(embed, acts, errors))
    grads = torch.autograd.grad(y, [embed, errors, *acts], allow_unused=True, materialize_grads=True)
    embed.grad, errors.grad = grads[0], grads[1]
    for a, ga in zip(acts, grads[2:]):
        a.grad = ga
    row = torch.zeros(graph.n_nodes)
    for i in range(graph.n_features):
        layer, pos, idx, a = graph.feature(i)
        row[i] = a * acts[layer].grad[pos, idx]
    row[graph.error_start:graph.embed_start] = (errors.grad * errors).sum(-1).flatten().detach()
    row[graph.embed_start:graph.logit_start] = (embed.grad * embed).sum(-1).detach()
    with torch.no_grad():
        const = value(*fm.forward(torch.zeros_like(embed), [torch.zeros_like(a) for a in acts],
                                  torch.zeros_like(errors)))
    return row, float(y.detach()), float(const)


def test_edges_equal_autograd_and_sum_to_targets(tiny, kind):
    tc = make_transcoders(tiny, kind)
    graph = attr.attribute(tiny, tc, PROMPT, chunk=7)
    fm = FrozenModel(tiny, tc, graph.tokens)
    A = graph.adjacency.to_dense()
    assert graph.n_features == graph.active_features.shape[0] > 0 and graph.n_logits >= 1
    key = graph.adjacency.rows * graph.n_nodes + graph.adjacency.cols
    assert bool((key[1:] > key[:-1]).all())  # stored sorted by (target, source), each edge once
    targets = list(range(graph.logit_start, graph.n_nodes)) + list(range(0, graph.n_features, 11))
    for t in targets:
        row, y, const = naive_row(fm, graph, t)
        torch.testing.assert_close(A[t], row, atol=3e-5, rtol=1e-4)
        assert float(A[t].double().sum()) + const == pytest.approx(y, abs=2e-4, rel=1e-4)
    # structure: nothing feeds an embedding or an error; a feature only hears earlier layers and positions
    assert not A[graph.error_start:graph.logit_start].any()
    lp = graph.active_features[graph.selected_features][:, :2]  # [n_features, (layer, pos)]
    t, s = A[: graph.n_features, : graph.n_features].nonzero(as_tuple=True)
    assert t.numel() > 0 and (lp[s, 0] < lp[t, 0]).all() and (lp[s, 1] <= lp[t, 1]).all()


def naive_selection(full, n_select: int, per_round: int) -> list[int]:
    """The capped feature choice, densely: rank the features by w M (I − M)⁻¹, M = the row-normalised |rows| computed
    so far (the logits', then each round's), and take the best `per_round` not yet chosen. `full`: an uncapped graph
    of the same prompt (its feature nodes are every active feature)."""
    A, n, w = full.adjacency.to_dense().double(), full.n_nodes, full.logit_weights()
    have = torch.zeros(n, dtype=torch.bool)
    have[full.logit_start:] = True
    chosen: list[int] = []
    while len(chosen) < n_select:
        M = A.abs() * have[:, None]
        M = M / M.sum(1, keepdim=True).clamp(min=1e-10)
        infl = w @ M @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - M)
        rank = torch.argsort(infl[:full.n_features], descending=True, stable=True).tolist()
        batch = [i for i in rank if not have[i]][: min(per_round, n_select - len(chosen))]
        chosen += batch
        have[batch] = True
    return sorted(chosen)


def test_logit_targets_and_cap(tiny_gpt2):
    tc = make_transcoders(tiny_gpt2, "plt")
    full = attr.attribute(tiny_gpt2, tc, PROMPT)
    p = torch.softmax(FrozenModel(tiny_gpt2, tc, full.tokens).clean.logits[-1], -1)
    top = p.sort(descending=True)
    k = int((torch.cumsum(top.values, 0) < 0.95).sum()) + 1
    assert full.logit_tokens.tolist() == top.indices[:min(k, 10)].tolist()
    other = tiny_gpt2.tokenizer.decode([268])  # a single token
    named = attr.attribute(tiny_gpt2, tc, PROMPT, targets=[" the", other], max_feature_nodes=7, batch_size=2,
                           update_interval=1)
    assert named.logit_strs == [" the", other] and named.n_features == 7
    # the features were chosen as circuit-tracer chooses them: by influence through the rows computed so far
    again = attr.attribute(tiny_gpt2, tc, PROMPT, max_feature_nodes=7, batch_size=2, update_interval=1)
    assert again.selected_features.tolist() == naive_selection(full, 7, 2)
    # a capped graph's rows are the full graph's rows restricted to its nodes
    A, B = full.adjacency.to_dense(), named.adjacency.to_dense()
    sel = named.selected_features
    keep = torch.cat([sel, torch.arange(full.n_features, full.logit_start)])
    torch.testing.assert_close(B[:7][:, : named.logit_start], A[sel][:, keep], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("which", ["plt_skip_jumprelu", "clt_topk_skip"])
def test_transcoder_set_adapter(tiny_gpt2, which):
    """saescope's TranscoderSet read by the graph: same latents, and the frozen model's MLP outputs are the set's own
    reconstruction plus the error."""
    from saescope.graph.replacement import from_transcoder_set
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import CLTConfig, CrossLayerTranscoder, TranscoderSet, transcoder_class

    hm, d, L = tiny_gpt2, tiny_gpt2.d_model, tiny_gpt2.n_layers
    g = torch.Generator().manual_seed(3)
    if which.startswith("clt"):
        ts = TranscoderSet(clt=CrossLayerTranscoder(CLTConfig("topk", n_layers=L, d_in=d, d_sae=24, k=4, skip=True)))
    else:
        cls = transcoder_class(sae_class("jumprelu"), True)
        ts = TranscoderSet(plts={l: cls(SAEConfig(cls.architecture, d, 24, apply_b_dec_to_input=False))
                                 for l in range(L)})
    with torch.no_grad():
        for name, p in ts.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.2 if "threshold" in name else
                    torch.randn(p.shape, generator=g) * (0.005 if "skip" in name else 0.05))
    tc = from_transcoder_set(ts, L, scan="tiny")
    fm = FrozenModel(hm, tc, attr.prompt_ids(hm, PROMPT)[0])
    recon = ts.reconstruct({l: fm.clean.mlp_in[l] for l in range(L)})
    for l in range(L):
        acts = ts.encode_layer(l, fm.clean.mlp_in[l])
        torch.testing.assert_close(fm.acts[l][1:], acts[1:])
        assert int((acts[1:] != 0).sum()) > 0
        torch.testing.assert_close(fm.errors[l][1:], (fm.clean.mlp_out[l] - recon[l])[1:], atol=1e-5, rtol=1e-4)
    _, logits = fm.forward(fm.clean.embed, fm.acts, fm.errors)
    torch.testing.assert_close(logits, fm.clean.logits, atol=2e-4, rtol=1e-4)
    graph = attr.attribute(hm, tc, PROMPT)
    row, y, const = naive_row(fm, graph, graph.logit_start)
    torch.testing.assert_close(graph.adjacency.to_dense()[graph.logit_start], row, atol=3e-5, rtol=1e-4)


def test_topk_convention_follows_the_files(tiny_gpt2, tmp_path):
    """circuit-tracer's TopK keeps the k largest pre-activations even when ≤ 0 (x · gate); saescope's ReLUs them. A
    TopK set read from circuit-tracer's layout is encoded as circuit-tracer does (so both tools make the same graph),
    the same set in saescope's layout as it was trained."""
    from saescope.graph.replacement import from_transcoder_set
    from saescope.sae.base import SAEConfig
    from saescope.sae.registry import sae_class
    from saescope.sae.transcoder import TranscoderSet, transcoder_class
    from saescope.sae.transcoder_io import export_circuit_tracer, load_transcoders

    hm, d, L, k = tiny_gpt2, tiny_gpt2.d_model, tiny_gpt2.n_layers, 6
    cls = transcoder_class(sae_class("topk"), False)
    ts = TranscoderSet(plts={l: cls(SAEConfig(cls.architecture, d, 24, k=k, apply_b_dec_to_input=False))
                             for l in range(L)})
    with torch.no_grad():
        for name, p in ts.named_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
            if name.endswith("b_enc"):
                p.sub_(1.0)  # most pre-activations negative: some of the top k are ≤ 0
    ct = load_transcoders(export_circuit_tracer(ts, tmp_path / "ct"))
    mine, theirs = from_transcoder_set(ts, L), from_transcoder_set(ct, L)
    x = FrozenModel(hm, mine, attr.prompt_ids(hm, PROMPT)[0]).clean.mlp_in[1]  # [T, d]
    pre = x @ mine.W_enc[1] + mine.b_enc[1]
    top = pre.topk(k, dim=-1)
    signed = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    assert bool((top.values <= 0).any())
    torch.testing.assert_close(theirs.encode(1, x), signed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.encode(1, x), signed.relu(), atol=1e-5, rtol=1e-5)
    graph = attr.attribute(hm, theirs, PROMPT)  # the ≤ 0 ones are nodes, as in circuit-tracer
    assert bool((graph.activation_values < 0).any())
