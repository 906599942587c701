"""SAE training: trainer, metrics, evaluation (incl. spliced CE/KL), synthetic ground truth, torchrun DP."""
