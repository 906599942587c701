"""Attribution graphs (circuit tracing): the local replacement model of a prompt with transcoders on every layer,
its nodes (features, errors, embeddings, logits) and direct-effect edges, pruning and scores, graph JSON.

`graph.py` (data) and `prune.py` (pure maths) know nothing of models; the expensive part lives in `attribute.py`.
"""

from saescope.graph.graph import Adjacency, Graph
from saescope.graph.prune import GraphScores, PruneResult, find_threshold, graph_scores, influence, prune

__all__ = ["Adjacency", "Graph", "GraphScores", "PruneResult", "find_threshold", "graph_scores", "influence", "prune"]
