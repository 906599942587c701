"""The debugger's entry points: `debug` (rank, ablate, trace on a loaded model) and `run(cfg)` (`saescope debug`)."""

from __future__ import annotations

import contextlib
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

from saescope.debug.attribute import KINDS, Node, NodeTable, head_pairs, rank_nodes
from saescope.debug.config import NODE_NAME
from saescope.debug.trace import (
    SIDES,
    Behaviour,
    Edits,
    logit_behaviour,
    prompt_ids,
    run_trace,
    single_token,
)
from saescope.errors import SaescopeError
from saescope.models import HookedModel, canonical_hookpoint
from saescope.sae import BaseSAE


def parse_node(name: str, hm: HookedModel, T: int, saes: dict[str, BaseSAE]) -> tuple[str, tuple[Any, ...]]:
    """'mlp.9.12@5' → ('neuron', (9, 12, 5)); 'head.3.1@7' → ('head', (3, 1, 7)); 'latent.resid_post.9.4@2' →
    ('latent', ('resid_post.9', 4, 2)); a one-line error for anything else or out of range."""
    m = NODE_NAME.match(name.strip())
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
    return lambda tr, _: sae.refined_pre_acts(tr.sae_inputs[hp][0, t].float()[None])[0, i]  # LISTA: its last step


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
    freeze_norms: str = "final"
    """Whose scale the backward pass held constant (FREEZE_NORMS)."""
    traced: str = ""
    """The traced node (trace mode), or ''."""

    def conventions(self) -> dict[str, str]:
        """What each column means for this result, in words (the JSON output carries it)."""
        out = dict(COLUMNS)
        out["freeze_norms"] = f"{self.freeze_norms}: {FREEZE_WHY[self.freeze_norms]}"
        if self.traced:
            out["direct_effect"] = ("null in trace mode: a direct effect is a write read straight off by the logits; "
                                    f"the behaviour here is {self.traced}'s activation, so rank by act_grad")
        return out

    def to_json(self, nodes: list[Node], notes: Any = None) -> dict[str, Any]:
        """Every field but the node table, plus the given nodes (with `notes.note(node)` merged in) and the
        `conventions` (what the columns mean), JSON-ready. In trace mode the direct effect is null."""
        from dataclasses import asdict

        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "nodes"}
        out["nodes"] = [{**asdict(n), **(notes.note(n) if notes is not None else {})} for n in nodes]
        if self.traced:
            for n in out["nodes"]:
                n["direct_effect"] = None
        out["conventions"] = self.conventions()
        return out


FREEZE_WHY = {
    "none": "the exact gradient; direct effects still freeze the final norm (else they would not add up)",
    "final": "the default, as TDB: one backward with the final norm's scale frozen feeds both columns, so the "
             "direct effects sum to the behaviour and a last-layer node's act × grad equals its direct effect",
    "all": "every norm's scale frozen, as circuit-tracer's local replacement model (what attribution graphs use)",
}

COLUMNS = {
    "activation": "neurons and latents: their value; heads: ‖z_h W_O[h]‖, the norm of the head's write; embed, error "
                  "and b_dec: the norm of the vector they add (‖embedding‖, ‖x − x̂‖, ‖b_dec‖), which have no "
                  "scalar activation of their own",
    "direct_effect": "the node's write at the last position read straight off by the logits (final norm's scale "
                     "frozen); the rows not `replaced` add up to the behaviour",
    "act_grad": "activation × ∂behaviour/∂activation (the estimated total effect), through the backward pass that "
                "freeze_norms describes; for embed/error/b_dec the vector · its gradient",
}


def _row_of(table: NodeTable, kind: str, key: tuple[Any, ...]) -> Tensor:
    """[N] bool: the row of the node parse_node gave as (kind, key)."""
    if kind == "latent":
        hp, i, t = key
        code, layer = KINDS.index("latent"), table.hookpoints.index(hp)
    else:
        (layer, i, t), code = key, KINDS.index("mlp" if kind == "neuron" else "head")
    return (table.kind == code) & (table.layer == layer) & (table.index == i) & (table.position == t)


def _top_tokens(hm: HookedModel, logits: Tensor, n: int = 5) -> list[tuple[str, float]]:
    p = logits.softmax(-1)
    v, i = p.topk(n)
    return [(hm.tokenizer.decode([int(j)]), float(x)) for x, j in zip(v, i)]


def debug(hm: HookedModel, prompt: str, target: str, distractor: str = "", saes: dict[str, BaseSAE] | None = None,
          ablate: dict[str, str | float] | None = None, means: dict[str, float] | None = None,
          trace: str = "", pairs_for: str = "", freeze_norms: str = "final",
          model_lock: AbstractContextManager[Any] | None = None) -> DebugResult:
    """Rank every node by its effect on the behaviour; optionally ablate nodes (re-run) or trace a node upstream.

    ablate: node name → 'zero', 'mean' (from `means`, e.g. the collated records' means) or a value.
    trace: a node name; for a head, `head.L.h@t:q` (or `:k`, `:v`) ranks the upstream nodes by their effect through
    that side of the head's layer only (the three sides' act × grad add up to the undivided trace's).
    freeze_norms: whose scale the backward pass (act × grad) holds at its clean value, see FREEZE_NORMS.
    model_lock: held around each pass through the model only (the ranking, the long part, runs without it), so a
    server's other requests wait for one forward and backward, not for the whole table."""
    lock = model_lock if model_lock is not None else contextlib.nullcontext()
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
    with lock:
        tr = run_trace(hm, ids, behaviour, saes, side=side, freeze_norms=freeze_norms)
    table = rank_nodes(hm, tr, None if upstream else tgt, dis, saes)
    if upstream is not None:  # its own row would rank first (act × grad = activation × 1): only upstream nodes stay
        table = table.select(~_row_of(table, *upstream))
    res = DebugResult([hm.tokenizer.decode([int(i)]) for i in ids[0]], tgt_pieces, dis_pieces, tr.behaviour,
                      float(tr.logits[tgt]), float(tr.logits.softmax(-1)[tgt]), table, _top_tokens(hm, tr.logits),
                      freeze_norms=freeze_norms, traced=trace.strip())
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
        with lock:
            ab = run_trace(hm, ids, behaviour, saes, edits, backward=False)
        res.ablated_behaviour, res.ablated_top_tokens = ab.behaviour, _top_tokens(hm, ab.logits)
    return res


@dataclass
class DebugRunResult:
    """What `saescope debug` reports: the debugger's result, its top nodes by the chosen column, and their notes."""

    result: DebugResult
    top: list[Node]
    """The `cfg.top` nodes by `cfg.by`."""
    notes: Any
    """NodeNotes: the collated explanations and means of the nodes (empty without --collated)."""

    def to_json(self) -> dict[str, Any]:
        return self.result.to_json(self.top, self.notes)


def run(cfg: Any, hm: HookedModel | None = None) -> DebugRunResult:
    """`saescope debug`: load the model and SAEs of a DebugConfig, rank (ablate, trace) and keep the top nodes."""
    from saescope.debug.config import parse_ablate
    from saescope.debug.explain import NodeNotes, load_saes

    hm = hm or cfg.model.load()
    saes, names = load_saes(cfg.sae, hm)
    notes = NodeNotes(cfg.collated, names)
    ablate = parse_ablate(cfg.ablate)
    res = debug(hm, cfg.prompt, cfg.target, cfg.distractor, saes, ablate=ablate or None, means=notes.means(ablate),
                trace=cfg.trace, freeze_norms=cfg.freeze_norms)
    return DebugRunResult(res, res.nodes.top(cfg.top, by=cfg.by), notes)
