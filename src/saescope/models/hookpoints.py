"""Hookpoint names, the same across architectures (no torch: configs and `run` import this).

Hookpoint names (L = layer index):

| name              | per-token shape       | what                                                        |
|-------------------|-----------------------|-------------------------------------------------------------|
| resid_pre.L       | [d_model]             | residual stream entering block L                            |
| resid_post.L      | [d_model]             | residual stream leaving block L (= hidden_states[L+1])      |
| attn_out.L        | [d_model]             | what attention writes to the residual (after Gemma's norm)  |
| mlp_in.L          | [d_model]             | the MLP's input: after the pre-MLP norm (GPT-2 ln_2, Gemma  |
|                   |                       | pre_feedforward_layernorm, Llama post_attention_layernorm)  |
| mlp_out.L         | [d_model]             | what the MLP writes to the residual (after Gemma's norm)    |
| mlp_post_act.L    | [d_mlp]               | MLP hidden activation, the input of the down projection     |
| attn_pattern.L    | [n_heads, T] (query)  | post-softmax attention, [heads, q, k] per sequence          |
| attn_value.L      | [n_kv_heads, d_head]  | value vectors, before grouped-query expansion               |

A store keeps every hookpoint as per-token rows (`token_rows`): a query's attention pattern over the context's keys
as [n_heads × context_len], values as [n_kv_heads × d_head].

Transformer-Debugger names are accepted everywhere a hookpoint is named: `resid_delta_mlp.L` (= mlp_out.L) and
`resid_delta_attn.L` (= attn_out.L); `mlp_post_act.L` is the same in both.

`mlp_in.L` → `mlp_out.L` is the pair a transcoder maps.
"""

from __future__ import annotations

import re
from typing import Any

from saescope.errors import SaescopeError

HOOK_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out", "mlp_post_act", "attn_pattern", "attn_value")
ATTENTION_KINDS = ("attn_pattern", "attn_value")
"""Hookpoints that are not residual-stream-like vectors: kept for collation, never an SAE's input."""



def natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


TDB_ALIASES = {"resid_delta_mlp": "mlp_out", "resid_delta_attn": "attn_out"}
"""Transformer-Debugger hookpoint kinds → saescope's."""


def canonical_hookpoint(name: str) -> str:
    """`resid_delta_mlp.5` → `mlp_out.5` (TDB aliases); any other name unchanged."""
    kind, dot, layer = name.strip().partition(".")
    return f"{TDB_ALIASES.get(kind, kind)}{dot}{layer}"


def parse_hookpoint(name: str) -> tuple[str, int]:
    kind, _, layer = canonical_hookpoint(name).partition(".")
    if kind not in HOOK_KINDS or not layer.isdigit():
        raise SaescopeError(
            f"hookpoint '{name}': expected <kind>.<layer> with kind one of {', '.join(HOOK_KINDS)} (e.g. resid_post.5)"
        )
    return kind, int(layer)
