"""`saescope view DIR`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.viewer.data import DataRoot
    from saescope.viewer.server import ViewConfig, serve

    cfg = parse(ViewConfig, argv, "saescope view")
    n = len(DataRoot(cfg.root).datasets())
    print(f"saescope viewer: {n} datasets from {cfg.root} on http://{cfg.view.host}:{cfg.view.port}/  (Ctrl-C to stop)")
    serve(cfg.root, cfg.view.host, cfg.view.port, cfg.model or None)
    return 0
