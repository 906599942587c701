"""Attribution graphs (circuit tracing): the local replacement model of a prompt with transcoders on every layer,
its nodes (features, errors, embeddings, logits) and direct-effect edges, pruning and scores, graph JSON.

`graph.py` (data) and `prune.py` (pure maths) know nothing of models; the expensive part lives in `attribute.py`.
Light on import (no torch): the names below load their module on first use.
"""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("Adjacency", "Graph"), "saescope.graph.graph"),
    **dict.fromkeys(("GraphResult", "run"), "saescope.graph.run_graph"),
    **dict.fromkeys(("GraphScores", "PruneResult", "find_threshold", "graph_scores", "influence", "prune"),
                    "saescope.graph.prune"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.graph.graph import Adjacency, Graph
    from saescope.graph.prune import GraphScores, PruneResult, find_threshold, graph_scores, influence, prune
    from saescope.graph.run_graph import GraphResult, run
