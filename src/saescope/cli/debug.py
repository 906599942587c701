"""`saescope debug`: why did the model say this? Rank the nodes behind a prompt's next token, ablate, trace upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from saescope.config import ModelConfig


@dataclass
class DebugConfig:
    """Rank MLP neurons, attention heads and SAE latents by their effect on target − distractor at the prompt's end."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: str = ""
    """The prompt (BOS is prepended)."""
    target: str = ""
    """The next token to explain, leading space included (' Paris'); a text that splits is explained by its first token."""
    distractor: str = ""
    """Optional alternative token: the behaviour becomes logit(target) − logit(distractor)."""
    sae: str = ""
    """SAE directories, comma-separated, spliced in with their error term (PATH@HOOKPOINT where not recorded)."""
    top: int = 20
    """Nodes to list."""
    by: Literal["act_grad", "direct_effect"] = "act_grad"
    """Rank by act_grad (estimated total effect) or direct_effect."""
    ablate: str = ""
    """Interventions, comma-separated NODE=zero|mean|VALUE (mlp.9.1234@6=zero, latent.resid_post.9.301@6=2.5)."""
    trace: str = ""
    """A node to trace upstream: the behaviour becomes its activation (mlp.9.1234@6); a head through one side of its
    attention only with :q, :k or :v (head.9.2@6:k)."""
    freeze_norms: Literal["none", "final", "all"] = "final"
    """Whose scale the backward pass for act × grad holds constant: none (the exact gradient), final (the final norm,
    as TDB; the default, because then one backward feeds both columns: direct effects sum to the behaviour and a
    last-layer node's act × grad equals its direct effect) or all (every norm, circuit-tracer's linearisation)."""
    collated: str = ""
    """A collated model folder (runs/default/collated/gemma-3-270m): explanations and means of the nodes."""
    json: bool = False
    """Print the result as JSON."""


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.debug import debug
    from saescope.debug.explain import NodeNotes, load_saes

    cfg = parse(DebugConfig, argv, "saescope debug")
    hm = cfg.model.load()
    saes, names = load_saes(cfg.sae, hm)
    notes = NodeNotes(cfg.collated, names)
    ablate = dict(item.split("=", 1) for item in cfg.ablate.split(",") if "=" in item)
    res = debug(hm, cfg.prompt, cfg.target, cfg.distractor, saes, ablate=ablate, means=notes.means(ablate),
                trace=cfg.trace, freeze_norms=cfg.freeze_norms)
    nodes = res.nodes.top(cfg.top, by=cfg.by)
    if cfg.json:
        print(json.dumps(res.to_json(nodes, notes), ensure_ascii=False))
        return 0
    side = {"q": " through its query side", "k": " through its key side", "v": " through its value side"}
    name, _, how = cfg.trace.partition(":")
    what = f"activation of {name}{side.get(how, '')}" if cfg.trace else (
        f"logit({res.target_tokens[0]!r})" + (f" − logit({res.distractor_tokens[0]!r})" if cfg.distractor else ""))
    if len(res.target_tokens) > 1:
        print(f"note: {cfg.target!r} is {len(res.target_tokens)} tokens {res.target_tokens}; explaining the first")
    print(f"behaviour {what} = {res.behaviour:+.4f}   p(target) = {res.target_prob:.3f}")
    print(f"act × grad with freeze_norms={res.conventions()['freeze_norms']}")
    if cfg.trace:
        print(f"direct effect: {res.conventions()['direct_effect']}")
    print("top next tokens: " + ", ".join(f"{t!r} {p:.3f}" for t, p in res.top_tokens))
    if res.ablated_behaviour is not None:
        print(f"after ablating {cfg.ablate}: behaviour = {res.ablated_behaviour:+.4f} "
              f"(Δ {res.ablated_behaviour - res.behaviour:+.4f}); top: "
              + ", ".join(f"{t!r} {p:.3f}" for t, p in res.ablated_top_tokens or []))
    print("activation of embed / error / b_dec rows: the norm of the vector they add")
    print(f"\n{'node':<28} {'token':<14} {'activation':>10} {'direct':>9} {'act×grad':>9}  explanation")
    for n in nodes:
        tok = res.prompt_tokens[n.position] if 0 <= n.position < len(res.prompt_tokens) else ""
        key = f" ←{res.prompt_tokens[n.top_key]!r}" if n.kind == "head" and n.top_key >= 0 else ""
        note = notes.note(n)
        de = f"{'—':>9}" if cfg.trace else f"{n.direct_effect:>+9.4f}"
        print(f"{n.name:<28} {tok!r:<14} {n.activation:>10.3f} {de} {n.act_grad:>+9.4f}  "
              f"{(note.get('explanation') or '')[:60]}{key}")
    return 0
