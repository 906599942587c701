"""`saescope view DIR`: serve the neuron viewer for a collated data root."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ViewConfig:
    """Serve the neuron viewer (a static page + JSON API) for a collated folder, on localhost by default."""

    root: str = "runs/default/collated"
    """Collated data root (holds <model>/manifest.json)."""
    host: str = "127.0.0.1"
    """Interface to bind; keep 127.0.0.1 unless you mean to expose the data."""
    port: int = 8000
    """Port."""
    model: str = ""
    """Model spec for the live probe and logit lens (default: the one recorded at collation)."""


def cli_view(cfg: ViewConfig) -> int:
    from saescope.viewer.data import DataRoot
    from saescope.viewer.server import serve

    n = len(DataRoot(cfg.root).datasets())
    print(f"saescope viewer: {n} datasets from {cfg.root} on http://{cfg.host}:{cfg.port}/  (Ctrl-C to stop)")
    serve(cfg.root, cfg.host, cfg.port, cfg.model or None)
    return 0
