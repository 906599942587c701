"""Loading the peer trainers the benches compare against, where they are installed."""

from __future__ import annotations

import sys


def sparsify_pieces():
    """sparsify's SparseCoder and SignSGD (its package __init__ also imports the HF trainer; skip that if its
    `datasets` dependency is absent — the trainer is not used here)."""
    try:
        import sparsify  # noqa: F401
    except ImportError:
        import importlib.util
        import types

        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            raise
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg
    from sparsify.config import SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from sparsify.sparse_coder import SparseCoder

    return SparseCoder, SparseCoderConfig, SignSGD
