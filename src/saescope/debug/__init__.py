"""The debugger: why did the model say this? Rank the nodes behind a behaviour, intervene on them, trace upstream.

    from saescope.debug import debug
    res = debug(hm, "The capital of France is", " Paris", " London", saes={"resid_post.9": sae})
    res.nodes.top(20)                       # by |activation × gradient|; .top(20, by="direct_effect")
    debug(hm, ..., ablate={"mlp.9.1234@6": "zero"}).ablated_behaviour
    debug(hm, ..., trace="mlp.9.1234@6")    # the same ranking with the behaviour := that node's activation
    debug(hm, ..., trace="head.9.2@6:k")    # a head traced through its key side only (:q, :k or :v)

Node names: `mlp.L.i@t` (neuron i of layer L at position t), `head.L.h@t` (head h's output at query t),
`latent.<hookpoint>.i@t` (a spliced SAE's latent), `error.<hookpoint>@t`, `embed@t`, `bias`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

from saescope.debug.attribute import KINDS, Node, NodeTable, head_pairs, rank_nodes
from saescope.debug.trace import SIDES, Behaviour, Edits, logit_behaviour, prompt_ids, run_trace, single_token
from saescope.errors import SaescopeError
from saescope.models import HookedModel, canonical_hookpoint
from saescope.sae import BaseSAE

__all__ = ["KINDS", "DebugResult", "Node", "NodeTable", "debug", "parse_node"]

_NODE = re.compile(r"^(mlp|head)\.(\d+)\.(\d+)@(\d+)$|^latent\.([a-z_]+\.\d+)\.(\d+)@(\d+)$")


def parse_node(name: str, hm: HookedModel, T: int, saes: dict[str, BaseSAE]) -> tuple[str, tuple[Any, ...]]:
    """'mlp.9.12@5' → ('neuron', (9, 12, 5)); 'head.3.1@7' → ('head', (3, 1, 7)); 'latent.resid_post.9.4@2' →
    ('latent', ('resid_post.9', 4, 2)); a one-line error for anything else or out of range."""
    m = _NODE.match(name.strip())
    if not m:
        raise SaescopeError(f"node '{name}': expected mlp.L.i@t, head.L.h@t or latent.<hookpoint>.i@t")
    if m.group(1):
        L, i, t = int(m.group(2)), int(m.group(3)), int(m.group(4))
        size = hm.d_mlp if m.group(1) == "mlp" else hm.n_heads
        if L >= hm.n_layers or i >= size or t >= T:
            raise SaescopeError(f"node '{name}': out of range (layers {hm.n_layers}, {size} per layer, {T} positions)")
        return ("neuron" if m.group(1) == "mlp" else "head"), (L, i, t)
    hp, i, t = canonical_hookpoint(m.group(5)), int(m.group(6)), int(m.group(7))
    if hp not in saes:
        raise SaescopeError(f"node '{name}': no SAE at {hp} is loaded (have {', '.join(saes) or 'none'}); pass --sae")
    if i >= saes[hp].cfg.d_sae or t >= T:
        raise SaescopeError(f"node '{name}': out of range ({saes[hp].cfg.d_sae} latents, {T} positions)")
    return "latent", (hp, i, t)


def _activation_of(kind: str, key: tuple[Any, ...], saes: dict[str, BaseSAE], hm: HookedModel) -> Behaviour:
    """Upstream tracing: the behaviour becomes a node's activation (a latent's pre-activation, a head's write norm)."""
    if kind == "neuron":
        L, i, t = key
        return lambda tr, _: tr.mlp_act[L][0, t, i]
    if kind == "head":
        L, h, t = key
        return lambda tr, _: (tr.head_in[L][0, t, h] @ hm.W_O(L)[h].to(tr.head_in[L].dtype)).norm()
    hp, i, t = key
    sae = saes[hp]
    return lambda tr, _: sae.pre_acts(tr.sae_inputs[hp][0, t].float())[i]


@dataclass
class DebugResult:
    prompt_tokens: list[str]
    target_tokens: list[str]
    """How the target text tokenises (the first token is the one explained)."""
    distractor_tokens: list[str]
    behaviour: float
    """Target logit minus distractor logit at the last position (or the traced node's activation)."""
    target_logit: float
    target_prob: float
    nodes: NodeTable
    top_tokens: list[tuple[str, float]]
    """The model's five most likely next tokens with probabilities."""
    ablated_behaviour: float | None = None
    ablated_top_tokens: list[tuple[str, float]] | None = None
    pairs: dict[str, Any] | None = None
    """For `pairs_for=head.L.h`: that head's pattern and A·∂B/∂A over the prompt's token pairs ([T, T] each)."""

    def to_json(self, nodes: list[Node], notes: Any = None) -> dict[str, Any]:
        """Every field but the node table, plus the given nodes (with `notes.note(node)` merged in), JSON-ready."""
        from dataclasses import asdict

        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "nodes"}
        out["nodes"] = [{**asdict(n), **(notes.note(n) if notes is not None else {})} for n in nodes]
        return out


def _top_tokens(hm: HookedModel, logits: Tensor, n: int = 5) -> list[tuple[str, float]]:
    p = logits.softmax(-1)
    v, i = p.topk(n)
    return [(hm.tokenizer.decode([int(j)]), float(x)) for x, j in zip(v, i)]


def debug(hm: HookedModel, prompt: str, target: str, distractor: str = "", saes: dict[str, BaseSAE] | None = None,
          ablate: dict[str, str | float] | None = None, means: dict[str, float] | None = None,
          trace: str = "", pairs_for: str = "") -> DebugResult:
    """Rank every node by its effect on the behaviour; optionally ablate nodes (re-run) or trace a node upstream.

    ablate: node name → 'zero', 'mean' (from `means`, e.g. the collated records' means) or a value.
    trace: a node name; for a head, `head.L.h@t:q` (or `:k`, `:v`) ranks the upstream nodes by their effect through
    that side of the head's layer only (the three sides' act × grad add up to the undivided trace's)."""
    saes = {canonical_hookpoint(k): v for k, v in (saes or {}).items()}
    ids = prompt_ids(hm, prompt)
    T = ids.shape[1]
    tgt, tgt_pieces = single_token(hm, target, "target")
    dis, dis_pieces = single_token(hm, distractor, "distractor") if distractor else (None, [])
    behaviour = logit_behaviour(tgt, dis)
    upstream, side = None, None
    if trace:
        name, _, how = trace.strip().partition(":")
        upstream = parse_node(name, hm, T, saes)
        if how:
            if upstream[0] != "head" or how not in SIDES:
                raise SaescopeError(f"trace '{trace}': a side (:q, :k or :v) is for heads only, e.g. head.3.1@7:k")
            side = (upstream[1][0], how)
        behaviour = _activation_of(*upstream, saes, hm)
    tr = run_trace(hm, ids, behaviour, saes, side=side)
    table = rank_nodes(hm, tr, None if upstream else tgt, dis, saes)
    if upstream is not None:  # only nodes upstream of the traced one can move it
        table.direct_effect.zero_()
    res = DebugResult([hm.tokenizer.decode([int(i)]) for i in ids[0]], tgt_pieces, dis_pieces, tr.behaviour,
                      float(tr.logits[tgt]), float(tr.logits.softmax(-1)[tgt]), table, _top_tokens(hm, tr.logits))
    if pairs_for:
        m = re.match(r"^head\.(\d+)\.(\d+)(@\d+)?$", pairs_for.strip())
        if not m or int(m.group(1)) >= hm.n_layers or int(m.group(2)) >= hm.n_heads:
            raise SaescopeError(f"pairs for '{pairs_for}': expected head.L.h of this model")
        res.pairs = {"head": f"head.{m.group(1)}.{m.group(2)}",
                     **head_pairs(hm, tr, int(m.group(1)), int(m.group(2)))}
    if ablate:
        edits: Edits = {}
        for name, how in ablate.items():
            kind, key = parse_node(name, hm, T, saes)
            if how == "zero":
                value: Any = 0.0
            elif how == "mean":
                if means is None or name.split("@")[0] not in means:
                    raise SaescopeError(f"--ablate {name}=mean: no mean known for it; use zero or a value")
                value = float(means[name.split("@")[0]])
            else:
                try:
                    value = float(how)
                except ValueError:
                    raise SaescopeError(f"--ablate {name}={how}: use zero, mean or a number") from None
            if kind == "head" and value != 0.0:
                raise SaescopeError(f"--ablate {name}={how}: heads can only be zero-ablated")
            edits[(kind, key)] = value
        ab = run_trace(hm, ids, behaviour, saes, edits, backward=False)
        res.ablated_behaviour, res.ablated_top_tokens = ab.behaviour, _top_tokens(hm, ab.logits)
    return res
