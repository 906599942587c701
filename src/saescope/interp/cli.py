"""`saescope explain` and `saescope score`."""

from __future__ import annotations

from saescope.interp.pipeline import InterpConfig, run_interp

ExplainConfig = InterpConfig
ScoreConfig = InterpConfig


def _table(s: dict) -> str:
    lines = [f"  {k:<22} {v:.3f}" if isinstance(v, float) else f"  {k:<22} {v}" for k, v in s.items() if k != "usage"]
    for name, u in (s.get("usage") or {}).items():
        lines.append(f"  {'usage ' + name:<22} {u['requests']} requests, {u['prompt_tokens']:,} prompt + "
                     f"{u['completion_tokens']:,} completion tokens")
    return "\n".join(lines)


def cli_explain(cfg: InterpConfig) -> int:
    s = run_interp(cfg, do_score=False)
    print(f"explained {s['explained']} units → {s['out']}/explanations.json")
    return 0


def cli_score(cfg: InterpConfig) -> int:
    s = run_interp(cfg, do_explain=False)
    print(_table(s))
    return 0
