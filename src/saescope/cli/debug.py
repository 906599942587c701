"""`saescope debug`: why did the model say this? Rank the nodes behind a prompt's next token, ablate, trace upstream."""

from __future__ import annotations

import json


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.debug import run
    from saescope.debug.config import DebugConfig

    cfg = parse(DebugConfig, argv, "saescope debug")
    out = run(cfg)
    res, nodes, notes = out.result, out.top, out.notes
    if cfg.json:
        print(json.dumps(out.to_json(), ensure_ascii=False))
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
