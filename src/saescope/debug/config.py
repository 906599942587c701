"""`saescope debug` options (light: no model)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from saescope.config import ModelConfig
from saescope.errors import SaescopeError

NODE_NAME = re.compile(r"^(mlp|head)\.(\d+)\.(\d+)@(\d+)$|^latent\.([a-z_]+\.\d+)\.(\d+)@(\d+)$")
"""A node's name: mlp.L.i@t, head.L.h@t or latent.<hookpoint>.i@t (groups: kind, layer, index, position)."""


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

    def __post_init__(self) -> None:
        from saescope import validate

        validate.at_least(self.top, 1, "--top")
        parse_ablate(self.ablate)
        if self.trace:
            check_node(self.trace.strip().split(":")[0], "--trace")
            if self.trace.count(":") > 1 or self.trace.partition(":")[2] not in ("", "q", "k", "v"):
                raise SaescopeError(f"--trace '{self.trace}': a head's side is :q, :k or :v (head.9.2@6:k)")
        if self.distractor and self.distractor == self.target:
            raise SaescopeError(f"--distractor {self.distractor!r} is the target itself (every attribution would be "
                                f"0); name another token or leave --distractor out")
        if self.collated:
            validate.existing_dir(self.collated, "--collated", "collated model folder")


def check_node(name: str, option: str) -> None:
    """A node name's grammar (the model checks the ranges later): mlp.L.i@t, head.L.h@t, latent.<hookpoint>.i@t."""
    if not NODE_NAME.match(name.strip()):
        raise SaescopeError(f"{option} '{name}': expected mlp.L.i@t, head.L.h@t or latent.<hookpoint>.i@t "
                            f"(e.g. mlp.9.1234@5)")


def parse_ablate(text: str) -> dict[str, str]:
    """'mlp.9.1234@5=zero,latent.resid_post.9.3@2=2.5' → {node: zero|mean|value}; any malformed item is an error,
    never dropped."""
    out = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, eq, how = item.partition("=")
        check_node(name, "--ablate")
        try:
            ok = eq and (how in ("zero", "mean") or float(how) == float(how))
        except ValueError:
            ok = False
        if not ok:
            raise SaescopeError(f"--ablate '{item}': after NODE= use zero, mean or a number "
                                f"(e.g. {name.strip()}=zero)")
        out[name.strip()] = how
    return out
