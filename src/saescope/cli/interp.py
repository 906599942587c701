"""`saescope explain` and `saescope score`."""

from __future__ import annotations

from typing import Any


def table(s: dict[str, Any]) -> str:
    lines = [f"  {k:<22} {v:.3f}" if isinstance(v, float) else f"  {k:<22} {v}" for k, v in s.items() if k != "usage"]
    for name, u in (s.get("usage") or {}).items():
        lines.append(f"  {'usage ' + name:<22} {u['requests']} requests, {u['prompt_tokens']:,} prompt + "
                     f"{u['completion_tokens']:,} completion tokens")
    return "\n".join(lines)


def explain(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.interp.config import InterpConfig
    from saescope.interp.pipeline import run_interp

    s = run_interp(parse(InterpConfig, argv, "saescope explain"), do_score=False)
    kept = f", kept {s['kept']} explained earlier ({s['kept_by']}; --overwrite true redoes them)" if s["kept"] else ""
    failed = f", {s['failed']} failed (recorded; a re-run retries them)" if s["failed"] else ""
    print(f"explained {s['explained']} units{failed}{kept} → {s['out']}/explanations.json")
    return 0


def score(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.interp.config import InterpConfig
    from saescope.interp.pipeline import run_interp

    print(table(run_interp(parse(InterpConfig, argv, "saescope score"), do_explain=False)))
    return 0
