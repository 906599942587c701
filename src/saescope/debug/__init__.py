"""The debugger: why did the model say this? Rank the nodes behind a behaviour, intervene on them, trace upstream.

    from saescope.debug import debug
    res = debug(hm, "The capital of France is", " Paris", " London", saes={"resid_post.9": sae})
    res.nodes.top(20)                       # by |activation × gradient|; .top(20, by="direct_effect")
    debug(hm, ..., ablate={"mlp.9.1234@6": "zero"}).ablated_behaviour
    debug(hm, ..., trace="mlp.9.1234@6")    # the same ranking with the behaviour := that node's activation
    debug(hm, ..., trace="head.9.2@6:k")    # a head traced through its key side only (:q, :k or :v)

Node names: `mlp.L.i@t` (neuron i of layer L at position t), `head.L.h@t` (head h's output at query t),
`latent.<hookpoint>.i@t` (a spliced SAE's latent), `error.<hookpoint>@t` (its reconstruction error x − x̂),
`b_dec.<hookpoint>@t` (its decoder bias), `embed@t`, `bias` (output biases), `bias.<hookpoint>` (the output bias of a
layer whose output the SAE at <hookpoint> stands for). An SAE on attn_out.L / mlp_out.L / mlp_post_act.L stands for
that layer's heads or neurons: those are flagged `replaced` and left out of `top` (its latents, error and decoder bias
are listed instead), and the unflagged rows' direct effects sum to the behaviour.
"""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

# Light on import (no torch): the names below load their module on first use.
_NAMES = {
    **dict.fromkeys(("DebugResult", "DebugRunResult", "debug", "parse_node", "run"), "saescope.debug.run_debug"),
    **dict.fromkeys(("FREEZE_NORMS",), "saescope.debug.trace"),
    **dict.fromkeys(("KINDS", "Node", "NodeTable"), "saescope.debug.attribute"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.debug.attribute import KINDS, Node, NodeTable
    from saescope.debug.run_debug import DebugResult, DebugRunResult, debug, parse_node, run
    from saescope.debug.trace import FREEZE_NORMS
