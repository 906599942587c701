"""`saescope run`: the pipeline report and, from a terminal, the viewer."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.run import RunConfig, run_pipeline

    cfg = parse(RunConfig, argv, "saescope run")
    res = run_pipeline(cfg)
    print("\nsaescope run finished:")
    for (what, where), decision in zip(res.done, res.decisions.values()):
        print(f"  {what:<62} {'reused' if decision == 'reuse' else 'computed':<8}  {where}")
    host, port = cfg.view.host, cfg.view.port
    if not cfg.no_serve and sys.stdin.isatty() and sys.stdout.isatty():
        from saescope.viewer.server import serve

        print(f"\nserving the viewer on http://{host}:{port}/  (Ctrl-C to stop)")
        serve(res.col_root, host, port)
    else:
        print(f"\nbrowse the results with:  saescope view {res.col_root} --port {port}")
    return 0
