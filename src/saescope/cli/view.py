"""`saescope view DIR | URL | registry name`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.viewer.config import ViewConfig
    from saescope.viewer.server import open_view, serve

    cfg = parse(ViewConfig, argv, "saescope view")
    res = open_view(cfg)
    where = f"{res.source} (records cached under {res.root})" if res.cached else res.source
    print(f"saescope viewer: {res.datasets} datasets from {where} on {res.url}  (Ctrl-C to stop)")
    serve(res.root, cfg.view.host, cfg.view.port, cfg.model or None)
    return 0
