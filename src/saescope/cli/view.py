"""`saescope view DIR | URL | registry name`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.sources import open_root
    from saescope.viewer.config import ViewConfig
    from saescope.viewer.data import DataRoot
    from saescope.viewer.server import serve

    cfg = parse(ViewConfig, argv, "saescope view")
    root = open_root(cfg.root, cfg.unit_type)
    n = len(DataRoot(root).check())
    where = cfg.root if str(root) == cfg.root else f"{cfg.root} (records cached under {root})"
    print(f"saescope viewer: {n} datasets from {where} on http://{cfg.view.host}:{cfg.view.port}/  (Ctrl-C to stop)")
    serve(root, cfg.view.host, cfg.view.port, cfg.model or None)
    return 0
