"""`saescope run`: the pipeline report and, from a terminal, the viewer."""

from __future__ import annotations

import sys

from saescope.run import RunConfig, run_pipeline

__all__ = ["RunConfig", "cli_run"]


def cli_run(cfg: RunConfig) -> int:
    done, col_root = run_pipeline(cfg)
    print("\nsaescope run finished:")
    for what, where in done:
        print(f"  {what:<55} {where}")
    if not cfg.no_serve and sys.stdin.isatty() and sys.stdout.isatty():
        from saescope.viewer.server import serve

        print(f"\nserving the viewer on http://127.0.0.1:{cfg.port}/  (Ctrl-C to stop)")
        serve(col_root, "127.0.0.1", cfg.port)
    else:
        print(f"\nbrowse the results with:  saescope view {col_root} --port {cfg.port}")
    return 0
